"""How the verdicts of claims (a) and (b) fare when the reference weights are re-dequantized: the results of
benchmarks/source_noise_robustness.py (every model here was 4-5-bit at the source; each draw adds noise of one
source-quantization step, uniform within the source's rounding cell), rendered for reports/findings.md.
"""

from __future__ import annotations

import json
from pathlib import Path


def robustness_section(path: str | Path) -> str:
    """The markdown section of the findings (empty when the results file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    lines = ["", f"## Robustness of (a) and (b): {data.get('label', 're-quantization of GGUF-sourced models')}", "",
             "Each model's reference weights were dequantized from a 4-5-bit GGUF file, so they sit on the source format's "
             "grid. Each draw adds, to every linear weight, noise uniform over one source-quantization step of its block "
             f"(x{data.get('width', 1.0):g}; another dequantization equally consistent with the file), then quantizes and "
             "scores again on the same windows. A verdict survives when it is the same for the reference and every draw "
             "(from `benchmarks/source_noise_robustness.py`, its report `reports/source_noise_robustness.md`).", "",
             "| model | claim | comparison | reference | draws | mean over draws [t interval] | survives |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in data.get("models", []):
        for claim, s in sorted(m.get("survival", {}).items()):
            for part in s.get("parts", []):
                low, high = part.get("t_interval_over_draws", (None, None))
                mean = part.get("mean_over_draws")
                interval = f"{mean:.4f} [{low:.4f}, {high:.4f}]" if None not in (mean, low, high) else "–"
                lines.append(f"| {m['model']} | ({claim}) | {part['label']} | {part['reference']} | {', '.join(part['draws'])} | "
                             f"{interval} | **{'yes' if part['survives'] else 'no'}** |")  # fmt: skip
    if data.get("not_done"):
        lines += ["", f"Not measured: {data['not_done']}"]
    return "\n".join(lines) + "\n"
