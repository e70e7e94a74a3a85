"""Rewrites the code dependencies of every stage in dvc.yaml from the imports of its command.

    .venv/bin/python scripts/sync_dvc_deps.py          # rewrite dvc.yaml (comments and order kept)
    .venv/bin/python scripts/sync_dvc_deps.py --check  # exit 1 and name the stages whose deps differ

A stage's code deps are the project files its `python stages/<x>.py` command can import
(`scripts/stage_deps.py`); its other deps (artifacts, metrics) are kept as written. The test suite
runs the check, so a new import can never leave a stage's results silently stale.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from ruamel.yaml import YAML

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_deps import ROOT, import_closure, minimal_deps  # noqa: E402

CODE_PREFIXES = ("qlora/", "stages/", "qlora")


def _is_code(dep: str) -> bool:
    return dep.startswith(("qlora/", "stages/")) or dep == "qlora"


def stage_script(cmd: str) -> str:
    parts = cmd.split()
    if len(parts) < 2 or parts[0] != "python" or not parts[1].startswith("stages/"):
        raise ValueError(f"stage command {cmd!r} is not `python stages/<x>.py ...`")
    return parts[1]


def synced_text(path: Path = ROOT / "dvc.yaml") -> tuple[str, list[str]]:
    """(the rewritten dvc.yaml, names of the stages whose code deps changed)."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    doc = yaml.load(path.read_text())
    changed = []
    for name, stage in doc["stages"].items():
        body = stage.get("do", stage)
        code = minimal_deps(import_closure(ROOT / stage_script(body["cmd"])))
        old = list(body.get("deps") or [])
        others = [d for d in old if not _is_code(str(d))]
        if [str(d) for d in old if _is_code(str(d))] != code:
            changed.append(name)
        body["deps"] = code + others
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue(), changed


if __name__ == "__main__":
    text, changed = synced_text()
    if "--check" in sys.argv[1:]:
        if changed:
            print(f"dvc.yaml: code deps out of date for {', '.join(changed)}: run scripts/sync_dvc_deps.py", file=sys.stderr)
            raise SystemExit(1)
    else:
        (ROOT / "dvc.yaml").write_text(text)
        print(f"updated: {', '.join(changed) or 'nothing'}")
