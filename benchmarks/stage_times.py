"""Per-stage wall times of a `dvc repro`, from its log with a timestamp on every line.

    dvc repro 2>&1 | python -c "import sys,time;t=time.time();[print(f'[{time.time()-t:8.1f}] {l}',end='',flush=True) for l in sys.stdin]" > repro.log
    python benchmarks/stage_times.py repro.log --title "default profile"   # markdown table to stdout

A stage's time runs from its "Running stage" line to the next one (or the log's last line): the stage's
process, DVC's own bookkeeping and its lock-file update. The CPU model and flags (`lscpu`) head the
table: times on other machines differ.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

_LINE = re.compile(r"^\[\s*([0-9.]+)\]\s?(.*)$")
_STAGE = re.compile(r"Running stage '(?:[^:']*:)?([^']+)'")


def stage_times(log: str) -> tuple[list[tuple[str, float]], float]:
    """([(stage, seconds)] in run order, total seconds) from a timestamped log."""
    marks: list[tuple[str, float]] = []
    last = 0.0
    for line in log.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        t, text = float(m.group(1)), m.group(2)
        last = t
        s = _STAGE.search(text)
        if s:
            marks.append((s.group(1), t))
    times = [(name, (marks[i + 1][1] if i + 1 < len(marks) else last) - t) for i, (name, t) in enumerate(marks)]
    return times, last


def cpu_line() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "CPU: unknown (lscpu failed)"
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return (f"CPU: {info.get('Model name', '?').strip()}, {info.get('CPU(s)', '?').strip()} cores; "
            f"flags: {' '.join(wanted) or 'none of avx2/avx512/amx'}")  # fmt: skip


def table(times: list[tuple[str, float]], total: float, title: str) -> str:
    groups: dict[str, float] = {}
    for name, sec in times:
        groups[name.split("@")[0]] = groups.get(name.split("@")[0], 0.0) + sec
    lines = [f"### {title}: {total / 60:.1f} min wall", "", cpu_line(), "",
             "| stage | seconds | share |", "|---|---:|---:|"]  # fmt: skip
    lines += [f"| {name} | {sec:.0f} | {sec / total:.0%} |" for name, sec in times]
    lines += ["", "| stage group | stages | seconds | share |", "|---|---:|---:|---:|"]
    counts = {g: sum(1 for n, _ in times if n.split("@")[0] == g) for g in groups}
    lines += [f"| {g} | {counts[g]} | {sec:.0f} | {sec / total:.0%} |" for g, sec in sorted(groups.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--title", default="dvc repro")
    args = parser.parse_args()
    times, total = stage_times(args.log.read_text(errors="replace"))
    print(table(times, total, args.title))
