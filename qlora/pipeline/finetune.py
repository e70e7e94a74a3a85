"""One fine-tuning run of the pipeline: base checkpoint -> trained adapter (or full model) + its record.

A killed run resumes when re-run with the same inputs: the resume folder is keyed to the settings and
the sha256 of the base checkpoint and the data (`resume_key`); checkpoints of an earlier, different run
of the same row are removed. The finished run's last checkpoint is kept: with a constant schedule the
key leaves out max_steps (and keeps the warmup steps it sets), so the same row asked for more steps
(`dvc exp run -S train.max_steps=8` after 5) continues from it instead of starting again.

With `train.nproc_per_node` > 1 the run starts its ranks with torchrun (`qlora.pipeline.ranks`); each
rank loads the base, shards it with FSDP2 (`qlora.distributed`) and trains its share of every global
batch; rank 0 writes the adapter, the metrics and the MLflow run, as a single process would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from qlora.config import LoRAConfig, Method, ModelKind, QuantConfig
from qlora.pipeline import paths
from qlora.pipeline.config import CAUSAL, ENCODER, PipelineConfig, main_method, RunSpec
from qlora.pipeline.params import lookup, whole
from qlora.pipeline.tracking import Tracking, quant_params, stage_row
from qlora.pipeline.validation import Validation
from qlora.train.config import Schedule, TrainConfig


RUN_FILE = "mlflow_run.json"  # in the resume folder: the MLflow run a killed run continues


def fingerprint(*items: str | Path) -> str:
    """sha256 over the names and bytes of the files under `items` (files or folders, sorted walk)."""
    digest = hashlib.sha256()
    for root in map(Path, items):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            digest.update(str(f.relative_to(root) if root.is_dir() else f.name).encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    record: "TrainRecord"  # noqa: F821
    result: "TrainResult"  # noqa: F821


def finetune(
    *,
    model_name: str,
    checkpoint: str | Path,
    kind: ModelKind,
    method: Method,
    quant: QuantConfig,
    lora: LoRAConfig,
    train_config: TrainConfig,
    data: str | Path,
    out_dir: str | Path,
    resume_dir: str | Path,
    num_labels: int | None = None,
    pad_token_id: int = 0,
    progress: bool = True,
    on_step=None,
    seed: int | None = None,
    validation: Validation | None = None,
    base_reference: str | None = None,
    variant: str = "",
) -> FinetuneResult:
    """Trains and writes `out_dir` atomically (a PEFT adapter folder, or for FULL a transformers folder).

    Args:
        checkpoint: a `quantize_checkpoint` folder (FULL, or an encoder: a plain base folder).
        method: FULL trains every weight of a BF16 base; LORA/QLORA train adapters (+ a classification head).
        resume_dir: where resumable training checkpoints live (a killed run resumes from here).
        on_step: called with each step's `StepMetrics` (live logging).
        seed: recorded in the TrainRecord of a row trained once per seed (the training seed is `train_config.seed`).
        validation: validate while training (`qlora.pipeline.validation`); the output is then the adapter of
            the best validated step, and the record holds the validation curve.
        base_reference: how the adapter names its base (PEFT's `base_model_name_or_path` and `qlora_base.json`:
            a conf/model option, hub id or the path the user gave); None: `model_name`.
    """
    from qlora.atomic import atomic_dir, write_json
    from qlora.data.tokenization import TokenizedDataset
    from qlora.models.base_record import BASE_FILE, base_record, write_base_record
    from qlora.models.loading import QUANT_FILE, adapter_weights, load_base, load_for_training, quant_config_json
    from qlora.models.peft_format import TaskType, save_peft_adapter
    from qlora.models.surgery import model_report
    from qlora.models.storage import stored_bits as stored_bits_of
    from qlora.report.labels import BF16, DataTypeLabel
    from qlora.report.records import PeakKind, TrainRecord
    from qlora.train.trainer import train

    if method is Method.NONE:
        raise ValueError("method NONE trains nothing; evaluate the base instead")
    import torch

    torch.manual_seed(train_config.seed)  # the adapter's (and a new head's) init: the same in every process and rank
    if method is Method.FULL:
        model = load_base(checkpoint, kind, num_labels=num_labels)
        for p in model.parameters():
            p.requires_grad = True
        stored_bits = 16.0
    else:
        model = load_for_training(checkpoint, kind, quant, lora, num_labels=num_labels)
        stored_bits = 16.0
    report = model_report(model)
    if method is not Method.FULL and quant.dtype.is_quantized:
        # claim (e) is checked against stored bytes, not the formula: the checkpoint file's where the base was
        # stored quantized (`qlora.models.storage`), else the quantized tensors' own storage
        try:
            stored_bits = stored_bits_of(checkpoint).core_bits_per_param
        except ValueError:
            stored_bits = report.quantized_bits_per_param
    world = current_world()
    sharded = world is not None and world.size > 1
    if sharded:  # one rank of a torchrun launch: shard the model over the ranks (FSDP2)
        from qlora.distributed import shard_model

        model.to(world.device)
        shard_model(model, world=world)
    dataset = TokenizedDataset.load(data)
    device = next(model.parameters()).device
    task = TaskType.SEQ_CLS if kind is ModelKind.SEQ_CLS else TaskType.CAUSAL_LM
    validator = None
    if validation is not None:
        from qlora.checks import ConfigError
        from qlora.pipeline.validation import Validator

        if sharded or method is Method.FULL or kind is not ModelKind.CAUSAL_LM:
            raise ConfigError("eval.val_every", validation.every, "0 for a FULL, encoder or multi-rank run (validation runs "
                              "in one process on a causal adapter)")  # fmt: skip

        def save_snapshot(path: Path) -> None:
            with atomic_dir(path) as tmp:
                shutil.rmtree(tmp)
                save_peft_adapter(tmp, adapter_weights(model, lora, task, base_model=base_reference or model_name))

        validator = Validator(validation, model, pad_token_id, train_config.max_steps, Path(resume_dir) / "validation",
                              save_snapshot, quant.compute_dtype.resolve(device))  # fmt: skip
        if not (Path(resume_dir) / "validation" / "step00000.json").exists():  # step 0: the adapters as initialised
            validator.evaluate(0)  # (B = 0: the untuned model), so that "no training" can be the chosen step
        user_on_step = on_step

        def on_step(metrics) -> None:  # noqa: F811
            if user_on_step is not None:
                user_on_step(metrics)
            validator(metrics)

    result = train(model, dataset, train_config, pad_token_id=pad_token_id, checkpoint_dir=resume_dir, progress=progress,
                   on_step=on_step, compute_dtype=quant.compute_dtype.resolve(device))  # fmt: skip

    with _whole(model, sharded):  # saving gathers the sharded model once; rank 0 writes
        if world is None or world.is_main:
            with atomic_dir(out_dir) as tmp:
                if method is Method.FULL:
                    shutil.rmtree(tmp)
                    model.save_pretrained(tmp)
                else:
                    shutil.rmtree(tmp)
                    base = base_reference or model_name
                    save_peft_adapter(tmp, adapter_weights(model, lora, task, base_model=base))
                    write_json(tmp / QUANT_FILE, quant_config_json(quant))
                    write_base_record(tmp, base_record(model, base))  # checked when the adapter loads onto a base
        trainable = [p for p in model.parameters() if p.requires_grad]
        adapter_mb = sum(p.numel() * p.element_size() for p in trainable) / 2**20
    curve = None
    if validator is not None:  # the output is the adapter of the best validated step
        from qlora.pipeline.validation import install_best, read_curve

        folder = Path(resume_dir) / "validation"
        if not (folder / f"step{result.steps:05d}.json").exists():  # a finished run resumed: nothing was evaluated here
            validator.evaluate(result.steps)
        curve = read_curve(folder, result.steps)
        install_best(folder, curve, Path(out_dir), keep=(QUANT_FILE, BASE_FILE))
    last = result.history[-1].memory if result.history else None
    seconds = sum(m.tokens / m.tokens_per_s for m in result.history)
    tokens_per_s = sum(m.tokens for m in result.history) / seconds if result.history and seconds > 0 else 0.0
    record = TrainRecord(
        model=model_name,
        quant=BF16 if method is Method.FULL else DataTypeLabel.of(quant),
        method=method,
        bits_per_param=stored_bits,
        weight_mb=report.weight_bytes_after / 2**20,  # stored weights without the adapters (FULL: the whole model)
        adapter_mb=adapter_mb,
        peak_mb=(last.peak / 2**20) if last else 0.0,
        peak_kind=PeakKind.CUDA_MAX_ALLOCATED if last and last.device == "cuda" else PeakKind.CPU_PEAK_RSS,
        steps=result.steps,
        tokens_per_s=tokens_per_s,
        losses=tuple(result.losses),
        seed=seed,
        compute_dtype=str(quant.compute_dtype.resolve(device)).removeprefix("torch."),
        val_steps=curve.steps if curve else (),
        val_nll=curve.nll if curve else (),
        chosen_step=curve.best_step if curve else None,
        variant=variant,
    )
    return FinetuneResult(record, result)


def current_world():
    """This process' rank in a torchrun launch (joined on first call), or None for a single process."""
    from qlora.distributed.world import init_world, launched_by_torchrun

    return init_world() if launched_by_torchrun() else None


def _whole(model, sharded: bool):
    import contextlib

    if not sharded:
        return contextlib.nullcontext(model)
    from qlora.distributed import gathered

    return gathered(model)


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """One training row (or the main QLoRA run) of the pipeline."""

    role: str  # CAUSAL or ENCODER
    row: str  # a key of ablation.<role> (with -s<seed> for encoder rows), or "main"
    model_name: str
    kind: ModelKind
    method: Method
    quant: QuantConfig
    lora: LoRAConfig
    train: TrainConfig  # with the row's lr and seed applied
    checkpoint: Path
    data: Path
    out_dir: Path  # the adapter (or, FULL, the model)
    resume_root: Path  # resumable checkpoints, one sub-folder per resume key
    metrics_path: Path | None  # the TrainRecord (None: the caller writes it)
    loss_path: Path | None  # the loss curve (CSV, a DVC plot)
    labels_path: Path | None = None  # classification labels (encoder rows)
    seed: int | None = None  # recorded for rows trained once per seed
    log_row: bool = True  # copy the headline numbers onto the row's parent run (False: the caller aggregates seeds)
    validation: Validation | None = None  # validate while training; output = the best step's adapter
    base_reference: str | None = None  # how the adapter names its base (None: model_name)
    variant: str = ""  # a row trained otherwise than the tables' (RunSpec.variant), recorded with its records
    run_name: str = ""  # the MLflow run's name ("": `train <role> <row>`)
    run_params: dict[str, str] = dataclasses.field(default_factory=dict)  # more MLflow params (e.g. the user's data and --out)

    def resume_key(self) -> str:
        """Settings + the bytes of the base checkpoint and the data: a killed run resumes only into itself.

        Left out: what does not change the result (checkpoint cadence, the number of ranks) and, for a
        constant schedule, max_steps (its warmup steps are kept): a finished run asked for more steps
        continues from its last checkpoint (the trainer checks the learning rates agree).
        """
        train = dataclasses.asdict(self.train)
        for free in ("save_every", "keep_checkpoints", "nproc_per_node"):
            train.pop(free)
        if self.train.schedule is Schedule.CONSTANT:
            train["max_steps"], train["warmup_steps"] = None, self.train.warmup_steps
        settings = json.dumps([train, dataclasses.asdict(self.lora), dataclasses.asdict(self.quant), self.method.value],
                              default=lambda v: getattr(v, "value", str(v)), sort_keys=True)  # fmt: skip
        return hashlib.sha256((settings + fingerprint(self.checkpoint, self.data)).encode()).hexdigest()[:12]

    def run(self, tracking: Tracking, *, progress: bool = True, worker: Path | None = None):
        """Trains and writes the outputs; with train.nproc_per_node > 1, starts `worker --job FILE` as
        that many ranks under torchrun (`qlora.pipeline.ranks`) and returns rank 0's record.

        Args:
            worker: the entry point that runs one rank of a job file (stages/train.py).

        Raises:
            ConfigError: train.nproc_per_node > 1 without a worker to launch.
            RanksFailed: a rank failed or was killed (a re-run resumes from the last checkpoint).
        """
        from qlora.atomic import write_json, write_text
        from qlora.distributed.world import launched_by_torchrun
        from qlora.models.loading import QUANT_FILE
        from qlora.report.records import dump_records

        if self.train.nproc_per_node > 1 and not launched_by_torchrun():
            from qlora.pipeline.ranks import launch_job

            self._remove_stale()
            return launch_job(self, tracking, worker, self.resume_root / self.resume_key())
        num_labels = None
        if self.labels_path is not None:
            num_labels = len(json.loads(self.labels_path.read_text())["labels"])
        resume = self.resume_root / self.resume_key()
        world = current_world()
        if world is None or world.is_main:
            self._remove_stale()
        if world is not None and not world.is_main:  # rank 0 writes and logs
            return finetune(model_name=self.model_name, checkpoint=self.checkpoint, kind=self.kind, method=self.method,
                            quant=self.quant, lora=self.lora, train_config=self.train, data=self.data, out_dir=self.out_dir,
                            resume_dir=resume, num_labels=num_labels, progress=progress, seed=self.seed,
                            validation=self.validation, base_reference=self.base_reference, variant=self.variant)  # fmt: skip
        row = stage_row(self.role, self.row, self.method, self.quant, self.model_name, self.variant) if self.log_row else None
        with tracking.start(self.run_name or f"train {self.role} {self.row}", row=row, config=self,
                            params={"model": self.model_name, "method": self.method.value, **quant_params(self.quant),
                                    "lora": self.lora, "train": self.train, **self.run_params},
                            tags={"stage": "train", "role": self.role, "run": self.row},
                            run_file=resume / RUN_FILE) as live:  # a re-run after a kill continues the same MLflow run
            # the finished run's checkpoint is kept: asked for more steps, the row continues from it
            out = finetune(model_name=self.model_name, checkpoint=self.checkpoint, kind=self.kind, method=self.method, quant=self.quant,
                           lora=self.lora, train_config=self.train, data=self.data, out_dir=self.out_dir,
                           resume_dir=resume, num_labels=num_labels, progress=progress, seed=self.seed, on_step=live.on_step,
                           validation=self.validation, base_reference=self.base_reference, variant=self.variant)  # fmt: skip
            record = out.record
            if self.metrics_path is not None:
                write_json(self.metrics_path, dump_records([record]))
            if self.loss_path is not None:
                write_text(self.loss_path, loss_csv([record.losses]))
            summary = train_summary(record, out.result)
            resumed = out.result.resumed_from
            live.log_params({"resumed_from_step": "none" if resumed is None else str(resumed)})
            live.finish(metrics=summary, series={"loss": record.losses},
                        artifacts=[p for p in (self.out_dir / "adapter_config.json", self.out_dir / QUANT_FILE) if p.exists()],
                        row_metrics=_row_train_metrics(self.role, summary), row_series={_row_name(self.role, "loss"): record.losses})  # fmt: skip
        return out

    def _remove_stale(self) -> None:
        """Removes the checkpoints of this row's earlier, different runs (another resume key)."""
        resume = self.resume_root / self.resume_key()
        if resume.parent.exists():
            for stale in resume.parent.iterdir():
                if stale != resume:
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def loss_csv(curves: list[tuple[float, ...]]) -> str:
    """`step,loss` (the mean over the curves, e.g. an encoder row's seeds), for `dvc plots`."""
    steps = min(len(c) for c in curves)
    return "step,loss\n" + "".join(f"{i + 1},{sum(c[i] for c in curves) / len(curves)}\n" for i in range(steps))


@dataclasses.dataclass(frozen=True)
class SeedsJob:
    """A row trained once per seed: adapters in <row>/s<seed>/, one record per seed."""

    jobs: tuple[TrainJob, ...]
    metrics_path: Path
    loss_path: Path

    def run(self, tracking: Tracking, *, progress: bool = True, worker: Path | None = None) -> list:
        from qlora.atomic import write_json, write_text
        from qlora.report.records import dump_records

        results = [job.run(tracking, progress=progress, worker=worker) for job in self.jobs]
        write_json(self.metrics_path, dump_records([r.record for r in results]))
        curves = [r.record.losses for r in results]
        write_text(self.loss_path, loss_csv(curves))
        first = self.jobs[0]
        summaries = [train_summary(r.record, r.result) for r in results]
        mean = {k: sum(s[k] for s in summaries) / len(summaries) for k in summaries[0]}
        steps = min(len(c) for c in curves)
        tracking.log_row(stage_row(first.role, first.row, first.method, first.quant, first.model_name, first.variant),
                         _row_train_metrics(first.role, mean),
                         {_row_name(first.role, "loss"): [sum(c[i] for c in curves) / len(curves) for i in range(steps)]})  # fmt: skip
        return results


def train_summary(record, result) -> dict[str, float]:
    """A training run's numbers for MLflow (memory and speed over the steps this process ran)."""
    return {"peak_mb": record.peak_mb, "weight_mb": record.weight_mb, "adapter_mb": record.adapter_mb,
            "bits_per_param": record.bits_per_param, "tokens_per_s": record.tokens_per_s,
            "final_loss": record.losses[-1] if record.losses else float("nan"), "steps": record.steps,
            "seconds": result.seconds}  # fmt: skip


def _row_name(role: str, name: str) -> str:
    """Causal training numbers keep their names on the row; the encoder's get an `encoder.` prefix."""
    return name if role == CAUSAL else f"encoder.{name}"


def _row_train_metrics(role: str, summary: dict[str, float]) -> dict[str, float]:
    return {_row_name(role, k): summary[k] for k in ("peak_mb", "tokens_per_s", "final_loss")}


def plan_train(params: PipelineConfig, role: str, run: str) -> TrainJob | SeedsJob:
    """The training job of row `run` of ablation.<role> (or the main run), validated before any work.

    Raises:
        ConfigError: an unknown role or row, naming the key and the allowed values.
    """
    from qlora.checks import ConfigError
    from qlora.config import EvalConfig
    from qlora.data.prepared import CLS_LABELS, CLS_TRAIN, INSTRUCT_TRAIN, INSTRUCT_VAL, INSTRUCT_VAL_TASKS
    from qlora.pipeline.params import pick


    if role not in (CAUSAL, ENCODER):
        raise ConfigError("role", role, f"{CAUSAL} or {ENCODER}")
    model = lookup(params.models, role, "models")
    if role == CAUSAL and run == paths.MAIN:
        quant = whole(params.quant)
        spec = RunSpec(main_method(quant), paths.MAIN)
        checkpoint = paths.quantized_dir(CAUSAL, paths.MAIN)
    else:
        spec = lookup(params.ablation.causal if role == CAUSAL else params.ablation.encoder, run, f"ablation.{role}")
        quant = lookup(params.quants, spec.quant, f"ablation.{role}.{run}.quant")
        checkpoint = paths.quantized_dir(CAUSAL, spec.quant) if role == CAUSAL else paths.model_dir(ENCODER)
    base = whole(params.train if role == CAUSAL else params.train_encoder)
    if spec.lr is not None:
        base = dataclasses.replace(base, lr=spec.lr)
    lora = spec.lora_for(whole(params.lora))
    if role == CAUSAL and run == paths.MAIN:
        return TrainJob(role, run, model.name, model.kind, spec.method, quant, lora, base, checkpoint, paths.data_dir() / INSTRUCT_TRAIN,
                        out_dir=paths.adapter_dir(role, run), resume_root=paths.resume_root(role, run),
                        metrics_path=paths.train_metrics(role, run), loss_path=paths.loss_curve(role, run),
                        base_reference=model.reference)  # fmt: skip
    # every row of the ablation: once per seed, adapters in <row>/s<seed>/
    seeds = params.ablation.causal_seeds if role == CAUSAL else params.ablation.encoder_seeds
    data = paths.data_dir() / (INSTRUCT_TRAIN if role == CAUSAL else CLS_TRAIN)
    labels = None if role == CAUSAL else paths.data_dir() / CLS_LABELS
    validation = None
    if role == CAUSAL:
        ev = pick(params.eval, EvalConfig, ("val_every", "val_examples", "batch_size"))
        if ev.val_every:
            validation = Validation(paths.data_dir() / INSTRUCT_VAL, paths.data_dir() / INSTRUCT_VAL_TASKS, ev.val_every, ev.val_examples,
                                    ev.batch_size)  # fmt: skip
    jobs = tuple(
        TrainJob(role, f"{run}-s{seed}", model.name, model.kind, spec.method, quant, lora, dataclasses.replace(base, seed=seed),
                 checkpoint, data, out_dir=paths.seed_dir(paths.adapter_dir(role, run), seed),
                 resume_root=paths.seed_dir(paths.resume_root(role, run), seed), metrics_path=None, loss_path=None,
                 labels_path=labels, seed=seed, log_row=False, validation=validation, base_reference=model.reference,
                 variant=spec.variant)
        for seed in seeds
    )  # fmt: skip
    return SeedsJob(jobs, paths.train_metrics(role, run), paths.loss_curve(role, run))
