"""What each way of shipping a QLoRA fine-tune costs: the results of benchmarks/shipping_costs.py (the adapter on
its NF4+DQ base against merged bf16, merged and re-quantized to NF4+DQ, GGUF q8_0 and q4_0 of the merge, on the
same held-out examples and MMLU questions), rendered as a verdict section for reports/findings.md.

The claim judged per way of shipping: it keeps the fine-tuning gain, i.e. its share of the adapter's held-out NLL
gain over the untuned base is at least `KEEPS` (the same 90% bar as claim (c)). It holds when the share's
interval lies wholly at or above the bar, does not hold when it lies wholly below, otherwise it is inconclusive.
"""

from __future__ import annotations

import json
from pathlib import Path

KEEPS = 0.9  # share of the fine-tuning gain a way of shipping must keep (claim (c)'s bar)


def keeps_gain_verdict(low: float, high: float, bar: float = KEEPS) -> str:
    """'holds' / 'does not hold' / 'inconclusive' for "keeps >= bar of the gain", from the share's interval."""
    if low >= bar:
        return "holds"
    if high < bar:
        return "does not hold"
    return "inconclusive"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def shipping_section(path: str | Path) -> str:
    """The markdown section of the findings (empty when the results file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    rows = {r["key"]: r for r in data.get("rows", [])}
    adapter, untuned = rows.get("adapter"), rows.get("untuned")
    if adapter is None or untuned is None:
        raise ValueError(f"{path}: expected rows 'adapter' and 'untuned' (a benchmarks/shipping_costs.py result), got {sorted(rows)}")
    train = data.get("train") or {}
    lines = ["", "## (m) What shipping the fine-tune costs: each way keeps the fine-tuning gain", "",
             f"From `benchmarks/shipping_costs.py` (its report `reports/shipping_costs.md`, command there): an adapter on "
             f"SmolLM2-135M-Instruct stored NF4+DQ, trained {train.get('steps', '?')} steps (r={train.get('lora_rank', '?')}, "
             f"lr {train.get('lr', '?')}), against each way of shipping it, on the same {adapter.get('nll_n', '?')} held-out "
             f"examples (NLL) and {adapter.get('mmlu_n', '?')} MMLU questions (0-shot). Fine-tuning gain: "
             f"{untuned['nll']:.4f} -> {adapter['nll']:.4f} nats/token. A way of shipping keeps the gain when its share of "
             f"that gain is at least {_pct(KEEPS)} (the interval decides, as for claim (c)).", "",
             "| way of shipping | held-out NLL | Δ NLL vs adapter [95% CI] (n) | gain kept [95% CI] | Δ MMLU [95% CI] (n) | keeps the gain |",
             "|---|---:|---|---|---|---|"]  # fmt: skip
    for key, r in rows.items():
        if key in ("adapter", "untuned"):
            continue
        low, high = r["gain_kept_ci"]
        d_low, d_high = r["d_nll_ci"]
        m_low, m_high = r["d_mmlu_ci"]
        lines.append(f"| {r['label']} | {r['nll']:.4f} | {r['d_nll']:+.4f} [{d_low:+.4f}, {d_high:+.4f}] ({r['nll_n']}) | "
                     f"{_pct(r['gain_kept'])} [{_pct(low)}, {_pct(high)}] | {100 * r['d_mmlu']:+.1f} pp "
                     f"[{100 * m_low:+.1f}, {100 * m_high:+.1f}] ({r['mmlu_n']}) | **{keeps_gain_verdict(low, high)}** |")  # fmt: skip
    return "\n".join(lines) + "\n"
