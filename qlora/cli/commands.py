"""The `qlora` subcommands: each composes its config, calls one function of qlora/pipeline, prints a summary."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from qlora.cli.compose import UsageError, compose, find_config_dir, translate
from qlora.cli.main import TASKS, _env_tracking, cache_dir


def _config(args, extra: list[str] = ()):
    conf = find_config_dir(args.config_dir)
    overrides = translate([*extra, *args.overrides], conf)
    return compose(conf, overrides), overrides


def _mb(x: float) -> str:
    return f"{x:,.1f} MB"


def cmd_quantize(args) -> int:
    from qlora.pipeline.user_checkpoints import QuantizeModelJob

    params, _ = _config(args, [f"model={args.model}"])
    model = params.models["causal"]
    out = QuantizeModelJob(model, params.quant, args.out).run(_env_tracking(args.no_mlflow), cache_dir(), progress=not args.quiet)
    print(f"{args.out}: {model.name} as {params.quant.label} (block {params.quant.block_size}), {out['bits_per_param']:.3f} bits/param, "
          f"{out['layers']} quantized layers, {_mb(out['weight_mb'])}, {out['seconds']:.1f} s")  # fmt: skip
    return 0


def cmd_finetune(args) -> int:
    from qlora.config import DataSource
    from qlora.pipeline.user_finetune import UserFinetuneJob

    params, _ = _config(args)
    if params.data.source is DataSource.EMBEDDED:
        raise UsageError("data.path: expected your data, a JSONL file or a datasets dataset (e.g. data.path=my.jsonl); "
                         "the embedded instruction tasks are the pipeline's: qlora pipeline repro")  # fmt: skip
    job = UserFinetuneJob(params.models["causal"], params.quant, params.lora, params.train, params.data, args.out)
    if job.work_dir.exists():
        print(f"resuming from {job.work_dir}", file=sys.stderr)
    r = job.run(_env_tracking(args.no_mlflow), cache_dir(), progress=not args.quiet)
    resumed = f", resumed at step {r.resumed_from}" if r.resumed_from else ""
    skipped = f" ({r.too_long} longer than data.max_length={params.data.max_length} skipped)" if r.too_long else ""
    print(f"{r.adapter}: LoRA r={params.lora.rank} on {params.models['causal'].name} ({params.quant.label}), {r.examples} of "
          f"{r.records} records{skipped}, {r.steps} steps{resumed}, final loss {r.final_loss:.4f}, {r.seconds:.1f} s")  # fmt: skip
    print(f"load it with: peft.PeftModel.from_pretrained(base, {str(r.adapter)!r}) or qlora.from_pretrained({r.base!r}, adapter={str(r.adapter)!r})")
    return 0


def cmd_eval(args) -> int:
    from qlora.atomic import write_json
    from qlora.config import DataSource
    from qlora.pipeline.user_eval import EvalTask, UserEvalJob

    params, overrides = _config(args, [f"model={args.model}"])
    if args.tasks is None:
        tasks = ["mmlu", "perplexity"] + (["rouge"] if params.data.source is not DataSource.EMBEDDED else [])
    else:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        bad = [t for t in tasks if t not in TASKS]
        if bad or not tasks:
            raise UsageError(f"argument --tasks: invalid choice: {(bad or [''])[0]!r} (choose from {', '.join(TASKS)})")
    quant = params.quant if "quant" in overrides.given else None
    job = UserEvalJob(params.models["causal"], args.adapter, quant, tuple(EvalTask(t) for t in tasks), params.eval, params.data)
    results = job.run(_env_tracking(args.no_mlflow), cache_dir(), progress=not args.quiet)
    for task, r in results.items():
        interval = f"  95% CI [{r.ci_low:.4f}, {r.ci_high:.4f}]" if r.ci_low is not None else ""
        print(f"{task:<11} {r.value:.4f}{interval}  n={r.n}")
    if args.json is not None:
        write_json(args.json, {t: {"value": r.value, "n": r.n, "ci_low": r.ci_low, "ci_high": r.ci_high} for t, r in results.items()})
    return 0


# Printed by every `qlora merge --into nf4` (issue 20): what re-quantizing the merge cost where it was measured.
NF4_MERGE_WARNING = (
    "warning: --into nf4 re-quantizes the merged weights to NF4+DQ, which rounds most of the LoRA update away and adds "
    "new rounding error. Measured (benchmarks/shipping_costs.py, reports/shipping_costs.md): {cost}. The ways that keep "
    "the gain: the adapter on its NF4+DQ base, the bf16 merge (qlora merge), a bf16 or q8_0 GGUF (qlora export)."
)
NF4_MERGE_COST = ("on SmolLM2-135M after 40 QLoRA steps it kept 2.6% [2.2%, 3.0%] of the fine-tuning gain in held-out NLL "
                  "(+1.60 nats/token [+1.30, +1.94] vs the adapter on its NF4+DQ base, n=160), where the bf16 merge kept 100%, "
                  "a GGUF q8_0 98.7% and a GGUF q4_0 80%")


def _base_config(args, overrides, source: Path):
    """The base model of the adapter folder `source`: model=... if given, else the one its config names."""
    from qlora.config import ModelConfig, ModelSource
    from qlora.pipeline.user_checkpoints import adapter_base

    if "model" in overrides.given:
        return None  # the caller takes params.models["causal"]
    recorded = adapter_base(source)
    if recorded is None:
        raise UsageError(f"model: expected the adapter's base (model=<folder or hub id>): {source}/adapter_config.json names none")
    return ModelConfig(recorded.rstrip("/").split("/")[-1], ModelSource.PRETRAINED, path=recorded)


def cmd_merge(args) -> int:
    from qlora.models.export import MergeTarget
    from qlora.pipeline.user_checkpoints import MergeJob

    params, overrides = _config(args)
    base = _base_config(args, overrides, args.adapter) or params.models["causal"]
    into = MergeTarget(args.into)
    if into is MergeTarget.NF4:
        print(NF4_MERGE_WARNING.format(cost=NF4_MERGE_COST), file=sys.stderr)
    out = MergeJob(base, args.adapter, args.out, into).run(_env_tracking(args.no_mlflow), cache_dir(), progress=not args.quiet)
    what = "merged in bf16" if into is MergeTarget.BF16 else "merged and re-quantized to NF4+DQ"
    print(f"{args.out}: {base.name} + {args.adapter} {what}, {_mb(out['weight_mb'])}, {out['seconds']:.1f} s")
    return 0


def cmd_export(args) -> int:
    from qlora.models.gguf_export import GGUFType
    from qlora.pipeline.user_checkpoints import ExportGGUFJob

    params, overrides = _config(args)
    is_adapter = not (args.source / "config.json").is_file() and (args.source / "adapter_config.json").is_file()
    base = (_base_config(args, overrides, args.source) or params.models["causal"]) if is_adapter else None
    if not is_adapter and not (args.source / "config.json").is_file():
        raise UsageError(f"SOURCE: expected an adapter folder (adapter_config.json) or a model folder (config.json): {args.source}")
    r = ExportGGUFJob(args.source, base, GGUFType(args.type), args.gguf, args.overwrite).run(_env_tracking(args.no_mlflow), cache_dir())
    kinds = ", ".join(f"{n} {k}" for k, n in r.tensor_types.items())
    print(f"{args.gguf}: {r.architecture}, {r.parameters / 1e6:,.1f}M parameters as {r.type.value} ({r.tensors} tensors: {kinds}), "
          f"{_mb(r.file_bytes / 2**20)}, {r.seconds:.1f} s")  # fmt: skip
    return 0


def cmd_info(args) -> int:
    from qlora.pipeline.describe import describe, format_info

    info = describe(args.path)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _dvc() -> list[str]:
    found = shutil.which("dvc")
    return [found] if found else [sys.executable, "-m", "dvc"]


def cmd_pipeline(args) -> int:
    if not Path("dvc.yaml").is_file():
        raise UsageError(f"no dvc.yaml in {Path.cwd()}: run `qlora pipeline` in the repository")
    dvc = _dvc()
    if args.action == "repro":
        commands = [[*dvc, "repro", *args.args]]
    elif args.action == "status":
        commands = [[*dvc, "status", *args.args]]
    elif args.action == "sweep":
        if not args.args or not all("=" in a for a in args.args):
            raise UsageError("sweep: expected overrides with comma-separated values, e.g. qlora pipeline sweep quant=nf4,fp4,int8")
        commands = [[*dvc, "exp", "run", "--queue", *[x for a in args.args for x in ("-S", a)]],
                    [*dvc, "exp", "run", "--run-all", "--jobs", str(args.jobs)],
                    [*dvc, "exp", "show", "--only-changed"]]  # fmt: skip
    elif args.action == "show":
        commands = [[*dvc, "exp", "show", "--only-changed", *args.args]]
    elif args.action == "plots":
        commands = [[*dvc, "plots", "show", *args.args]]
    else:
        tracking = _env_tracking(False)
        mlflow = shutil.which("mlflow") or "mlflow"
        commands = [[mlflow, "ui", "--backend-store-uri", tracking.uri, "--port", os.environ.get("MLFLOW_PORT", "5000"), *args.args]]
    for c in commands:
        print("+ " + shlex.join(c), file=sys.stderr)
        if not args.dry_run:
            code = subprocess.call(c)
            if code:
                return code
    return 0
