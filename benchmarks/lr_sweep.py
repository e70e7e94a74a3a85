"""The learning rate of the findings profile's causal rows, chosen on validation NLL (issue 22).

Trains each listed row (seed 0) at each learning rate for the profile's batch and a few steps, validating
every `--every` steps on the validation examples (whole task families held out apart from the test's, never
the test items), and reports each run's best validation NLL (template tokens left out). The paper used one
lr for every row; this says whether the rows agree on the best one, and which to set in
conf/train/findings_cpu.yaml (`train.lr`).

Run from a pipeline folder whose `prepare_data` and `quantize` stages have run (e.g. findings/):

    cd findings && python ../benchmarks/lr_sweep.py --lrs 1e-4,2e-4,5e-4,1e-3 --steps 24 --every 8 \\
        --out ../reports/lr_sweep.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qlora.pipeline.finetune import finetune, plan_train  # noqa: E402
from qlora.pipeline.params import load_params  # noqa: E402
from qlora.pipeline.validation import Validation  # noqa: E402


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    keep = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs, flags {' '.join(keep) or 'none of avx2/avx512'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="lora_bf16,qlora_nf4_dq", help="keys of ablation.causal")
    ap.add_argument("--lrs", default="1e-4,2e-4,5e-4,1e-3")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--val-examples", type=int, default=100)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--render", type=Path, help="re-render a finished sweep's JSON (its results) instead of training")
    args = ap.parse_args()
    params = load_params(args.params)
    if args.render:
        results = json.loads(args.render.read_text())["results"]
        _write(results, args, params, sum(r["seconds"] for r in results))
        return
    lrs = [float(x) for x in args.lrs.split(",")]
    results, started = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows.split(","):
            job = plan_train(params, "causal", row).jobs[0]  # seed 0
            val = dataclasses.replace(job.validation or Validation(Path(), Path(), 1, 1, 8), every=args.every, examples=args.val_examples)
            if job.validation is None:
                from qlora.data.prepared import INSTRUCT_VAL, INSTRUCT_VAL_TASKS
                from qlora.pipeline import paths

                val = dataclasses.replace(val, data=paths.data_dir() / INSTRUCT_VAL, tasks=paths.data_dir() / INSTRUCT_VAL_TASKS)
            for lr in lrs:
                t0 = time.time()
                train = dataclasses.replace(job.train, lr=lr, max_steps=args.steps)
                out = finetune(model_name=job.model_name, checkpoint=job.checkpoint, kind=job.kind, method=job.method, quant=job.quant,
                               lora=job.lora, train_config=train, data=job.data, out_dir=Path(tmp) / f"{row}-{lr}",
                               resume_dir=Path(tmp) / f"{row}-{lr}.resume", progress=False, validation=val)  # fmt: skip
                r = out.record
                results.append({"row": row, "lr": lr, "steps": list(r.val_steps), "val_nll": list(r.val_nll), "best_step": r.chosen_step,
                                "best_val_nll": min(r.val_nll), "final_loss": r.losses[-1], "seconds": round(time.time() - t0, 1)})  # fmt: skip
                print(json.dumps(results[-1]), flush=True)
    _write(results, args, params, time.time() - started)


def choose(results: list[dict], rows: list[str]) -> dict:
    """Each row's best lr, and the one lr for all rows: the lowest mean over rows of each row's best validation NLL
    (rows whose best lrs differ by less than the validation's resolution should not get different lrs: their
    comparison would then confound the data type with the learning rate). Flags a best at the first validation
    step after step 0 (the minimum may lie before it) and at the last (it may lie after): not resolved by the grid."""
    best = {row: min((r for r in results if r["row"] == row), key=lambda r: r["best_val_nll"]) for row in rows}
    lrs = sorted({r["lr"] for r in results})
    mean = {lr: sum(r["best_val_nll"] for r in results if r["lr"] == lr) / len(rows) for lr in lrs
            if sum(1 for r in results if r["lr"] == lr) == len(rows)}  # fmt: skip
    chosen = min(mean, key=mean.get)
    unresolved = sorted({(r["row"], r["lr"]) for r in results if r["best_step"] == min(s for s in r["steps"] if s > 0)})
    late = sorted({(r["row"], r["lr"]) for r in results if r["best_step"] == max(r["steps"])})
    return {"best": best, "agree": len({b["lr"] for b in best.values()}) == 1, "mean_best": mean, "chosen": chosen,
            "unresolved": unresolved, "unresolved_late": late}  # fmt: skip


def _write(results: list[dict], args, params, seconds: float) -> None:
    rows = args.rows.split(",")
    c = choose(results, rows)
    t = params.train
    out = args.out if args.out.is_absolute() or args.out.parts[:1] == ("..",) else Path("..") / args.out
    lines = [
        "# Learning rate of the findings profile's causal rows, chosen on validation NLL",
        "",
        f"Command: `cd findings && python ../benchmarks/lr_sweep.py --rows {args.rows} --lrs {args.lrs} --steps {args.steps} "
        f"--every {args.every} --val-examples {args.val_examples} --out {out}`  ",
        f"Machine: {_cpu()}; {seconds:.0f} s in all.  ",
        f"Training: seed 0, batch {t.micro_batch_size} x {t.grad_accum}, {t.schedule.value} schedule, warmup {t.warmup_ratio}, "
        f"max grad norm {t.max_grad_norm}, {args.steps} steps; validation NLL per response token without the template's "
        f"tokens, on {args.val_examples} examples of validation task families (never the test's).",
        "",
        "| row | lr | validation NLL at steps | best (step) | final training loss | seconds |",
        "|---|---:|---|---|---:|---:|",
    ]
    for r in results:
        curve = ", ".join(f"{s}: {v:.4f}" for s, v in zip(r["steps"], r["val_nll"]))
        lines.append(f"| {r['row']} | {r['lr']:g} | {curve} | {r['best_val_nll']:.4f} ({r['best_step']}) | {r['final_loss']:.4f} | {r['seconds']:.0f} |")
    lines += ["", "Best lr per row: " + ", ".join(f"{row} {b['lr']:g} ({b['best_val_nll']:.4f})" for row, b in c["best"].items()) + ". "
              + ("The rows agree." if c["agree"] else "The rows' best lrs differ."),
              "", "Mean over rows of each row's best validation NLL, per lr: "
              + ", ".join(f"{lr:g}: {v:.4f}" for lr, v in c["mean_best"].items())
              + f". **One lr for all rows, as the paper did: {c['chosen']:g}** (the lowest mean; giving rows different lrs "
              "would confound the data type with the learning rate).",
              ]  # fmt: skip
    if c["unresolved"]:
        lines += ["", "Best at the first validation step (the minimum may lie earlier; the grid does not resolve it): "
                  + ", ".join(f"{row} at {lr:g}" for row, lr in c["unresolved"]) + "."]  # fmt: skip
    if c["unresolved_late"]:
        lines += ["", "Best at the last validation step (the minimum may lie later; train longer, validation picks the step): "
                  + ", ".join(f"{row} at {lr:g}" for row, lr in c["unresolved_late"]) + "."]  # fmt: skip
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"results": results, **c}, indent=1) + "\n")

if __name__ == "__main__":
    main()
