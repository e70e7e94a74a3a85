"""The training loop for LoRA adapters: causal-LM instruction tuning and sequence classification.

Gradient accumulation, max-grad-norm clipping, warmup + constant/cosine schedule, group-by-length
batching, bf16 autocast on GPU (fp32 on CPU), seeded and (on CPU) deterministic, with resumable
checkpoints: a run killed at any point and restarted with the same arguments continues from its last
checkpoint and, on CPU in deterministic mode, ends with the same adapter as an uninterrupted run.
A finished run asked for more steps (`max_steps` 5 -> 8) continues from its last checkpoint when the
learning rates of the steps it took stay the same (a constant schedule with the same warmup).

# Note: ranks
Under torch.distributed with a model sharded by `qlora.distributed.shard_model` (FSDP2, torchrun), the
same call trains on N ranks and gives the single-process result up to rounding: every rank computes
the same batch order; each micro-batch is split across the ranks (rank r takes its examples r, r + N,
...), and each rank weights its loss by its share of the micro-batch's loss terms (label tokens, or
examples for classification), so the reduced gradient is that of the micro-batch's mean loss, exactly
as in one process. A rank left without examples (a short last micro-batch) runs one with weight 0.
Gradients are reduce-scattered once per optimizer step (no sync on the other micro-batches); clipping
uses the norm over all shards; rank 0 alone shows progress, calls `on_step` and writes checkpoints,
which hold whole tensors (`qlora.distributed.optim_state`), so a run resumes on any number of ranks.
Dropout draws from a generator seeded per (seed, step, rank), so a resumed run on the same number of
ranks repeats the uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from qlora.optim import AdamWConfig, PagedAdamW
from qlora.readers import BadFileError
from qlora.train.batching import collate, epoch_order
from qlora.train.checkpoint import TENSORS_FILE, check_training_state, load_checkpoint, save_checkpoint
from qlora.train.config import Schedule, TrainConfig
from qlora.train.memory import MemoryReport, memory_report
from qlora.train.ranks import Ranks, latest_for_ranks, local, loss_terms, sharded_backward, step_seed
from qlora.train.schedule import lr_multiplier

OptimizerFactory = Callable[[list[torch.nn.Parameter], TrainConfig], torch.optim.Optimizer]


@dataclasses.dataclass(frozen=True)
class StepMetrics:
    step: int  # 1-based optimizer step just completed
    loss: float  # mean loss of the step's micro-batches
    lr: float
    grad_norm: float
    tokens: int  # non-padding tokens in the step
    tokens_per_s: float
    memory: MemoryReport


@dataclasses.dataclass(frozen=True)
class TrainResult:
    steps: int
    history: list[StepMetrics]  # the steps run in this process
    losses: list[float]  # every step's loss since step 1, resumed runs included
    resumed_from: int | None
    seconds: float


def default_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """Paged AdamW (paper §3) on the trainable parameters with the run's lr, weight decay and state bits."""
    return PagedAdamW(
        params, config=AdamWConfig(lr=config.lr, weight_decay=config.weight_decay, bits=config.optimizer_bits, paged=config.paged)
    )


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters: prepare it (adapters) before training")
    return params


def train(
    model: torch.nn.Module,
    examples: Sequence[dict[str, torch.Tensor]],
    config: TrainConfig,
    *,
    pad_token_id: int = 0,
    checkpoint_dir: str | Path | None = None,
    optimizer_factory: OptimizerFactory = default_optimizer,
    on_step: Callable[[StepMetrics], None] | None = None,
    progress: bool = True,
    compute_dtype: torch.dtype | None = None,
) -> TrainResult:
    """Trains the parameters of `model` that require grad (on every rank of a sharded run: `# Note: ranks`).

    Args:
        model: a transformers model (or any module whose forward(input_ids, attention_mask, labels)
            returns an object with `.loss`, and `.logits` when sharded), on the device to train on.
        examples: causal LM {"input_ids", "labels"} or classification {"input_ids", "label"}.
        config: the run's settings.
        checkpoint_dir: where checkpoints go; an existing checkpoint there is resumed.
        optimizer_factory: builds the optimizer from the trainable parameters.
        on_step: called after every optimizer step (e.g. to log metrics); on rank 0 only.
        compute_dtype: autocast dtype of forward and backward (None: bf16 on CUDA, fp32 elsewhere); bf16
            on a CPU is worth it only where it is native (`qlora.config.native_bf16`).

    Returns:
        TrainResult; the adapter is the model's trainable parameters after the last step.

    Raises:
        ValueError: an empty dataset, no trainable parameters, a checkpoint of other settings (naming
            the differing keys), or an extension the schedule does not allow; a model that is not
            sharded under an initialized multi-rank process group.
    """
    if len(examples) == 0:
        raise ValueError("cannot train on an empty dataset")
    device = next(model.parameters()).device
    named = trainable_parameters(model)
    params = list(named.values())
    ranks = Ranks.of(params)
    torch.manual_seed(config.seed)
    optimizer = optimizer_factory(params, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, config.max_steps, config.warmup_steps, config.schedule)
    )
    losses: list[float] = []
    start = 0
    resumed_from = None
    ckpt = latest_for_ranks(checkpoint_dir, ranks) if checkpoint_dir is not None else None
    if ckpt is not None:
        state = load_checkpoint(ckpt)
        check_training_state(state, ckpt, named)
        _check_resumable(state, config, ckpt)
        with torch.no_grad():
            for name, p in named.items():
                local(p).copy_(ranks.local_shard(state["adapter"][name], p))
        try:
            optimizer.load_state_dict(ranks.shard_optimizer_state(state["optimizer"], params))
            schedule.load_state_dict(state["schedule"])
        except (ValueError, KeyError, TypeError) as e:
            raise BadFileError(ckpt / TENSORS_FILE, "optimizer", str(e)) from None
        if not ranks.sharded:  # sharded runs seed dropout per step instead
            torch.set_rng_state(state["rng_cpu"])
            if device.type == "cuda" and "rng_cuda" in state:
                torch.cuda.set_rng_state(state["rng_cuda"], device)
        start = resumed_from = int(state["step"])
        losses = list(state["losses"])

    lengths = [int(e["input_ids"].numel()) for e in examples]
    terms = [loss_terms(e) for e in examples] if ranks.sharded else []
    if ranks.sharded and config.micro_batch_size % ranks.size:
        warnings.warn(f"micro_batch_size={config.micro_batch_size} is not a multiple of the {ranks.size} ranks: some ranks get "
                      f"fewer examples of each micro-batch (or none, and wait); for the same global batch use a multiple "
                      f"(micro_batch_size x grad_accum unchanged)", stacklevel=2)  # fmt: skip
    micro = start * config.grad_accum  # micro-batches consumed so far
    epoch, position = divmod(micro, len(epoch_order(lengths, config.micro_batch_size, config.seed, 0, config.group_by_length)))
    order = epoch_order(lengths, config.micro_batch_size, config.seed, epoch, config.group_by_length)

    previous_determinism = torch.are_deterministic_algorithms_enabled()
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    if compute_dtype is None:
        compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    autocast = torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32)
    history: list[StepMetrics] = []
    began = time.perf_counter()
    bar = tqdm(total=config.max_steps, initial=start, disable=not progress or ranks.rank != 0, desc="train", dynamic_ncols=True)
    model.train()
    model_config = getattr(model, "config", None)
    use_cache = getattr(model_config, "use_cache", None)
    if use_cache:  # a transformers model: no KV cache in training (it turns it off itself, with a notice under checkpointing)
        model_config.use_cache = False
    try:
        for step in range(start, config.max_steps):
            t0 = time.perf_counter()
            if ranks.sharded:
                torch.manual_seed(step_seed(config.seed, step, ranks.rank))
            step_loss, step_tokens = 0.0, 0
            for k in range(config.grad_accum):
                indices = order[position]
                position += 1
                if position == len(order):
                    epoch, position = epoch + 1, 0
                    order = epoch_order(lengths, config.micro_batch_size, config.seed, epoch, config.group_by_length)
                step_tokens += sum(lengths[i] for i in indices)
                if ranks.sharded:
                    step_loss += sharded_backward(model, examples, indices, terms, ranks, config, pad_token_id, device, autocast,
                                                   last=k == config.grad_accum - 1)  # fmt: skip
                    continue
                batch = {k: v.to(device) for k, v in collate([examples[i] for i in indices], pad_token_id).items()}
                with autocast:
                    loss = model(**batch).loss
                (loss / config.grad_accum).backward()
                step_loss += loss.item() / config.grad_accum
            if ranks.sharded:
                step_loss = ranks.sum(step_loss)
            grad_norm = _clip(params, config.max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            schedule.step()
            mem = memory_report(model, optimizer, device)
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
            seconds = time.perf_counter() - t0
            metrics = StepMetrics(step + 1, step_loss, lr, grad_norm, step_tokens, step_tokens / seconds, mem)
            history.append(metrics)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{metrics.tokens_per_s:.0f}", mem_mb=f"{mem.peak / 2**20:.0f}")
            bar.update(1)
            if on_step is not None and ranks.rank == 0:
                on_step(metrics)
            done = step + 1
            if checkpoint_dir is not None and (done == config.max_steps or (config.save_every and done % config.save_every == 0)):
                # whole tensors (a collective when sharded), written by rank 0 alone
                state = {
                    "step": done,
                    "max_steps": config.max_steps,
                    "config": _config_fingerprint(config),
                    "adapter": {n: ranks.full_tensor(p.detach()) for n, p in named.items()},
                    "optimizer": ranks.gather_optimizer_state(optimizer, params),
                    "schedule": schedule.state_dict(),
                    "rng_cpu": torch.get_rng_state(),
                    "losses": losses,
                }
                if device.type == "cuda":
                    state["rng_cuda"] = torch.cuda.get_rng_state(device)
                if ranks.rank == 0:
                    save_checkpoint(checkpoint_dir, done, state, keep=config.keep_checkpoints)
                ranks.barrier()
    finally:
        bar.close()
        torch.use_deterministic_algorithms(previous_determinism)
        if use_cache:
            model_config.use_cache = use_cache  # generation after training keeps its cache
    return TrainResult(config.max_steps, history, losses, resumed_from, time.perf_counter() - began)


def _clip(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """The gradients' total norm before clipping (over all shards when sharded); clips when max_norm > 0."""
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    elif grads:
        norm = torch.nn.utils.get_total_norm(grads)
    else:
        return 0.0
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _check_resumable(state: dict, config: TrainConfig, ckpt: Path) -> None:
    """Raises ValueError naming the settings that differ, or why more steps cannot continue this run."""
    saved = dict(state.get("config") or {})
    saved_max = int(state.get("max_steps", saved.pop("max_steps", config.max_steps)))
    saved.pop("nproc_per_node", None)
    current = _config_fingerprint(config)
    differ = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if differ:
        listed = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now" for k in differ)
        raise ValueError(f"checkpoint {ckpt} was written by a run with other settings ({listed}); resume with the "
                         f"same settings, or train into another checkpoint folder")  # fmt: skip
    done = int(state["step"])
    if done > config.max_steps:
        raise ValueError(f"checkpoint {ckpt} is at step {done}, past max_steps={config.max_steps}: it cannot be shortened; "
                         f"use max_steps >= {done} or another checkpoint folder")  # fmt: skip
    if saved_max != config.max_steps:
        warmup = int(round(config.warmup_ratio * saved_max))
        before = [lr_multiplier(s, saved_max, warmup, config.schedule) for s in range(done)]
        now = [lr_multiplier(s, config.max_steps, config.warmup_steps, config.schedule) for s in range(done)]
        if config.schedule is not Schedule.CONSTANT or before != now:
            why = (f"the {config.schedule.name} schedule depends on max_steps" if config.schedule is not Schedule.CONSTANT
                   else f"the warmup ({warmup} -> {config.warmup_steps} steps) depends on max_steps")  # fmt: skip
            raise ValueError(f"checkpoint {ckpt} is from a run of max_steps={saved_max}; this run asks for {config.max_steps}, but "
                             f"{why}: the {done} steps taken would have had other learning rates. Start a new run in another "
                             f"checkpoint folder")  # fmt: skip


def _config_fingerprint(config: TrainConfig) -> dict:
    """The settings a resumed run must share with the run that wrote the checkpoint (max_steps is
    checked apart: a run may be extended; the number of ranks does not change the result)."""
    d = dataclasses.asdict(config)
    d["schedule"] = config.schedule.value
    d["optimizer_bits"] = config.optimizer_bits.value
    for free in ("save_every", "keep_checkpoints", "max_steps", "nproc_per_node"):
        d.pop(free)
    return d
