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
    """A size in MiB (what `weight_mb` values hold: bytes / 2**20), labelled as such."""
    return f"{x:,.1f} MiB"


def _inputs(params=None, *, model: bool = True, data: bool = True, adapter: str | None = None):
    """The local paths a command reads (never written over): the model folder, the data file, the adapter."""
    from qlora.config import DataSource
    from qlora.pipeline.outputs import Inputs
    from qlora.pipeline.user_model import model_inputs

    inputs = Inputs()
    if params is not None and model:
        for what, path in model_inputs(params.models["causal"], cache_dir()):
            inputs.add(what, path)
    if params is not None and data and params.data.source is not DataSource.EMBEDDED:
        inputs.add("data (data.path)", params.data.path)
    inputs.add("adapter", adapter)
    return inputs


def cmd_quantize(args) -> int:
    from qlora.pipeline.user_checkpoints import QuantizeModelJob

    from qlora.pipeline.outputs import OutputKind, check_folder_output

    params, _ = _config(args, [f"model={args.model}"])
    model = params.models["causal"]
    target = check_folder_output(args.out, OutputKind.QUANTIZED, _inputs(params, data=False), overwrite=args.overwrite)
    out = QuantizeModelJob(model, params.quant, target).run(_env_tracking(args.no_mlflow), cache_dir(), progress=not args.quiet)
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
    from qlora.pipeline.outputs import OutputKind, check_folder_output

    inputs = _inputs(params)
    target = check_folder_output(args.out, OutputKind.ADAPTER, inputs, overwrite=args.overwrite)
    job = UserFinetuneJob(params.models["causal"], params.quant, params.lora, params.train, params.data, target)
    check_folder_output(job.work_dir, OutputKind.FINETUNE_WORK, inputs, overwrite=args.overwrite, option="--out (its resumable state)")
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
    if args.json is not None:
        from qlora.pipeline.outputs import check_file_output
        from qlora.pipeline.user_eval import is_results_file

        check_file_output(args.json, "results file", is_results_file, _inputs(params, adapter=args.adapter), overwrite=args.overwrite,
                          option="--json")  # fmt: skip
    job = UserEvalJob(params.models["causal"], args.adapter, quant, tuple(EvalTask(t) for t in tasks), params.eval, params.data)
    results = job.run(_env_tracking(args.no_mlflow), cache_dir(), progress=not args.quiet)
    for task, r in results.items():
        interval = f"  95% CI [{r.ci_low:.4f}, {r.ci_high:.4f}]" if r.ci_low is not None else ""
        print(f"{task:<11} {r.value:.4f}{interval}  n={r.n}")
    if args.json is not None:
        from qlora.pipeline.user_eval import results_json

        write_json(args.json, results_json(results))
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


def _with_adapter_base(args, source: Path):
    """(params, base model) for an adapter folder: model=... if given, else the base its folder records (a conf/model
    option such as smollm2, a folder or a hub id)."""
    from qlora.pipeline.user_checkpoints import adapter_base

    params, overrides = _config(args)
    if "model" not in overrides.given:
        recorded = adapter_base(source)
        if recorded is None:
            raise UsageError(f"model: expected the adapter's base (model=<folder or hub id>): {source}/adapter_config.json names none")
        params = _config(args, [f"model={recorded}"])[0]
    return params, params.models["causal"]


def cmd_merge(args) -> int:
    from qlora.models.export import MergeTarget
    from qlora.pipeline.outputs import OutputKind, check_folder_output
    from qlora.pipeline.user_checkpoints import MergeJob

    if not Path(args.adapter).is_dir():
        raise FileNotFoundError(f"{args.adapter}: no such adapter folder")
    params, base = _with_adapter_base(args, args.adapter)
    inputs = _inputs(params, data=False, adapter=args.adapter)  # the base's folder and the adapter are never written over
    target = check_folder_output(args.out, OutputKind.MERGED, inputs, overwrite=args.overwrite)
    into = MergeTarget(args.into)
    if into is MergeTarget.NF4:
        print(NF4_MERGE_WARNING.format(cost=NF4_MERGE_COST), file=sys.stderr)
    out = MergeJob(base, args.adapter, target, into).run(_env_tracking(args.no_mlflow), cache_dir(), progress=not args.quiet)
    what = "merged in bf16" if into is MergeTarget.BF16 else "merged and re-quantized to NF4+DQ"
    print(f"{args.out}: {base.name} + {args.adapter} {what}, {_mb(out['weight_mb'])}, {out['seconds']:.1f} s")
    return 0


def cmd_export(args) -> int:
    from qlora.models.gguf_export import GGUFType
    from qlora.pipeline.user_checkpoints import ExportGGUFJob

    is_adapter = not (args.source / "config.json").is_file() and (args.source / "adapter_config.json").is_file()
    if not is_adapter and not (args.source / "config.json").is_file():
        raise UsageError(f"SOURCE: expected an adapter folder (adapter_config.json) or a model folder (config.json): {args.source}")
    base = _with_adapter_base(args, args.source)[1] if is_adapter else None
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
    if args.action == "mlflow":
        return _mlflow_ui(args)
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
    else:
        commands = [[*dvc, "plots", "show", *args.args]]
    for c in commands:
        print("+ " + shlex.join(c), file=sys.stderr)
        if not args.dry_run:
            code = subprocess.call(c)
            if code:
                return code
    return 0


def _mlflow_ui(args) -> int:
    """Replaces this process with `mlflow ui` on the tracking store (os.execve: the PID printed is the
    server's, so SIGTERM to it stops the server and its workers; no wrapper is left behind)."""
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: expected a port number in [1, 65535]")
    tracking = _env_tracking(False)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking.uri, "--host", args.host, "--port", str(args.port), "--workers", "1",
               *args.args]  # fmt: skip
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}  # no job-runner processes (MLflow's GenAI jobs)
    print("+ " + shlex.join(command), file=sys.stderr)
    if args.dry_run:
        return 0
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI at {base} on {tracking.uri}, pid {os.getpid()} (stop it with Ctrl-C or `kill {os.getpid()}`; ready in ~10 s)")
    links = _experiment_links(tracking.uri, base)
    for name, url in links:
        print(f"  {name}: {url}")
    print(f"  MLflow opens in its GenAI view: {'these links show' if links else base + '/#/experiments?' + ML_VIEW + ' shows'} the runs, "
          "as does 'Model training' at the top left", flush=True)  # fmt: skip
    sys.stderr.flush()
    os.execve(command[0], command, env)
    return 0  # not reached


ML_VIEW = "workflowType=machine_learning"  # MLflow 3's UI: the runs view instead of GenAI traces


def _experiment_links(uri: str, base: str) -> list[tuple[str, str]]:
    """(experiment, its runs page) for the experiments the pipeline and the command line log to, if the
    store already holds them (a sqlite file that exists; nothing is created here)."""
    if not uri.startswith("sqlite:///") or not Path(uri.removeprefix("sqlite:///")).is_file():
        return []
    import mlflow

    client = mlflow.MlflowClient(uri)
    names = dict.fromkeys(filter(None, (os.environ.get("MLFLOW_EXPERIMENT_NAME"), "qlora-pipeline", "qlora-cli")))
    found = [(n, client.get_experiment_by_name(n)) for n in names]
    return [(n, f"{base}/#/experiments/{e.experiment_id}?{ML_VIEW}") for n, e in found if e is not None]
