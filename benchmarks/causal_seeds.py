"""Are the causal rows' held-out NLL verdicts (claims c and d) stable across training seeds?

The findings profile trains each causal row once (train.seed 0). This compares QLoRA NF4+DQ with
LoRA BF16 (claim c) and with QLoRA FP4 (claim d) on the held-out NLL items of several runs of the
same rows that differ only in the training seed, each run paired item by item
(`qlora.report.paired.compare`), then the spread of the per-seed effects (t interval over seeds).

    python benchmarks/causal_seeds.py SEED=ITEMS_DIR [SEED=ITEMS_DIR ...] [--out reports/causal_seeds.md]

ITEMS_DIR is a findings pipeline's `findings/items/eval` folder (seed 0: the committed one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qlora.eval.items import ItemResults
from qlora.report.paired import compare, t_interval

MODEL = "SmolLM2-135M-Instruct"
ROWS = {"lora_bf16": ("lora", "bf16"), "qlora_fp4": ("qlora", "fp4"), "qlora_nf4_dq": ("qlora", "nf4_dq")}
PAIRS = (("c", "qlora_nf4_dq", "lora_bf16"), ("d", "qlora_nf4_dq", "qlora_fp4"))


def _load(items_dir: Path, row: str) -> ItemResults:
    method, quant = ROWS[row]
    return ItemResults.load(items_dir / f"causal_{row}" / f"heldout_nll__{MODEL}__{method}__{quant}.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="SEED=ITEMS_DIR")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runs = []
    for spec in args.runs:
        seed, _, folder = spec.partition("=")
        if not folder or not seed.isdigit():
            ap.error(f"expected SEED=ITEMS_DIR, got {spec!r}")
        runs.append((int(seed), Path(folder)))
    lines = ["| claim | comparison | train seed | NLL difference, nats/token | 95% interval | n |", "|---|---|---:|---:|---|---:|"]
    summary = []
    for claim, row, ref in PAIRS:
        effects = []
        for seed, folder in runs:
            c = compare(_load(folder, row), _load(folder, ref))
            effects.append(c.estimate)
            lines.append(f"| ({claim}) | {row} vs {ref} | {seed} | {c.estimate:+.4f} | [{c.ci_low:+.4f}, {c.ci_high:+.4f}] | {c.n} |")
        mean, low, high = t_interval(effects) if len(effects) > 1 else (effects[0], float("nan"), float("nan"))
        summary.append(f"- ({claim}) {row} vs {ref}: per-seed effects {', '.join(f'{e:+.4f}' for e in effects)}; "
                       f"mean {mean:+.4f}, t interval over {len(effects)} seeds [{low:+.4f}, {high:+.4f}]")  # fmt: skip
    text = "\n".join(lines) + "\n\n" + "\n".join(summary) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
