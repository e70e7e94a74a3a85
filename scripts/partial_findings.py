"""The findings of a findings-profile run that has only part of its stages done: the verdicts that the given
records can decide, by the report stage's own code (`qlora.report.findings`, `qlora.report.analyses`).

    cd findings && ../.venv/bin/python ../scripts/partial_findings.py \
        --records metrics/base/causal_nf4.json metrics/base/causal_fp8_e4m3.json ... \
        --analyses metrics/analysis/memory.json metrics/analysis/outliers.json \
        --label "SmolLM2 Table 2 rows and the analyses" --out ../reports/findings_partial.md

Only the records named are read (never whatever else lies in metrics/: a folder can hold results of older
code). A claim whose rows are missing is left out or says "not measured", as in the full report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    from qlora.atomic import write_text
    from qlora.data.mmlu import load_mmlu
    from qlora.pipeline import paths
    from qlora.report.analyses import analyses_markdown, load_results
    from qlora.report.failures import split_failed
    from qlora.report.findings import findings
    from qlora.report.mmlu_checks import identical_choices, mmlu_checks, render_checks
    from qlora.report.records import attach_items, load_records, pool_seeds

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", nargs="+", type=Path, required=True, help="metrics/<...>.json records to judge")
    p.add_argument("--analyses", nargs="*", type=Path, default=[], help="metrics/analysis/<name>.json results")
    p.add_argument("--label", required=True, help="what part of the run this is (stated at the top)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    missing = [str(f) for f in [*a.records, *a.analyses] if not f.is_file()]
    if missing:
        p.error(f"no such file: {', '.join(missing)}")
    records, trains = load_records(a.records)
    kept, checked = split_failed(attach_items(records, [paths.ITEMS / "base", paths.ITEMS / "eval"]))
    evals = pool_seeds(kept)
    head = (f"> **Partial findings run: {a.label}.** Made by `scripts/partial_findings.py` from the records "
            f"{', '.join(f'`{f}`' for f in a.records + a.analyses)}; the other stages of the findings profile had not run, "
            "so the claims that need them are missing here. The full run writes reports/findings.md.\n\n")  # fmt: skip
    text = (findings(evals, trains, profile="findings (partial)", checked=checked) + render_checks(mmlu_checks(evals, identical_choices(load_mmlu())))
            + analyses_markdown(load_results(a.analyses)))
    write_text(a.out, head + text)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
