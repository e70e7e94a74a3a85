"""The training loop for LoRA adapters: causal-LM instruction tuning and sequence classification.

Gradient accumulation, max-grad-norm clipping, warmup + constant/cosine schedule, group-by-length
batching, bf16 autocast on GPU (fp32 on CPU), seeded and (on CPU) deterministic, with resumable
checkpoints: a run killed at any point and restarted with the same arguments continues from its last
checkpoint and, on CPU in deterministic mode, ends with the same adapter as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from qlora.optim import AdamWConfig, PagedAdamW
from qlora.readers import BadFileError
from qlora.train.batching import collate, epoch_order
from qlora.train.checkpoint import TENSORS_FILE, check_training_state, latest_checkpoint, load_checkpoint, save_checkpoint
from qlora.train.config import TrainConfig
from qlora.train.memory import MemoryReport, memory_report
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
) -> TrainResult:
    """Trains the parameters of `model` that require grad.

    Args:
        model: a transformers model (or any module whose forward(input_ids, attention_mask, labels)
            returns an object with `.loss`), on the device to train on.
        examples: causal LM {"input_ids", "labels"} or classification {"input_ids", "label"}.
        config: the run's settings.
        checkpoint_dir: where checkpoints go; an existing checkpoint there is resumed.
        optimizer_factory: builds the optimizer from the trainable parameters.
        on_step: called after every optimizer step (e.g. to log metrics).

    Returns:
        TrainResult; the adapter is the model's trainable parameters after the last step.
    """
    if len(examples) == 0:
        raise ValueError("cannot train on an empty dataset")
    device = next(model.parameters()).device
    named = trainable_parameters(model)
    params = list(named.values())
    torch.manual_seed(config.seed)
    optimizer = optimizer_factory(params, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, config.max_steps, config.warmup_steps, config.schedule)
    )
    losses: list[float] = []
    start = 0
    resumed_from = None
    ckpt = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:
        state = load_checkpoint(ckpt)
        check_training_state(state, ckpt, named)
        if state["config"] != _config_fingerprint(config):
            ours = _config_fingerprint(config)
            differ = {k: (state["config"].get(k), ours.get(k)) for k in sorted(set(ours) | set(state["config"]))
                      if state["config"].get(k) != ours.get(k)}  # fmt: skip
            raise ValueError(f"checkpoint {ckpt} was written by a run with other settings: "
                             + ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items()))  # fmt: skip
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(state["adapter"][name])
        try:
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
        except (ValueError, KeyError, TypeError) as e:
            raise BadFileError(ckpt / TENSORS_FILE, "optimizer", str(e)) from None
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        start = resumed_from = int(state["step"])
        losses = list(state["losses"])

    lengths = [int(e["input_ids"].numel()) for e in examples]
    micro = start * config.grad_accum  # micro-batches consumed so far
    epoch, position = divmod(micro, len(epoch_order(lengths, config.micro_batch_size, config.seed, 0, config.group_by_length)))
    order = epoch_order(lengths, config.micro_batch_size, config.seed, epoch, config.group_by_length)

    previous_determinism = torch.are_deterministic_algorithms_enabled()
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    history: list[StepMetrics] = []
    began = time.perf_counter()
    bar = tqdm(total=config.max_steps, initial=start, disable=not progress, desc="train", dynamic_ncols=True)
    model.train()
    try:
        for step in range(start, config.max_steps):
            t0 = time.perf_counter()
            step_loss, step_tokens = 0.0, 0
            for _ in range(config.grad_accum):
                batch = collate([examples[i] for i in order[position]], pad_token_id)
                position += 1
                if position == len(order):
                    epoch, position = epoch + 1, 0
                    order = epoch_order(lengths, config.micro_batch_size, config.seed, epoch, config.group_by_length)
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast:
                    loss = model(**batch).loss
                (loss / config.grad_accum).backward()
                step_loss += loss.item() / config.grad_accum
                step_tokens += int(batch["attention_mask"].sum())
            if config.max_grad_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
            else:
                grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
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
            if on_step is not None:
                on_step(metrics)
            done = step + 1
            if checkpoint_dir is not None and (done == config.max_steps or (config.save_every and done % config.save_every == 0)):
                state = {
                    "step": done,
                    "config": _config_fingerprint(config),
                    "adapter": {n: p.detach() for n, p in named.items()},
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "rng_cpu": torch.get_rng_state(),
                    "losses": losses,
                }
                if device.type == "cuda":
                    state["rng_cuda"] = torch.cuda.get_rng_state(device)
                save_checkpoint(checkpoint_dir, done, state, keep=config.keep_checkpoints)
    finally:
        bar.close()
        torch.use_deterministic_algorithms(previous_determinism)
    return TrainResult(config.max_steps, history, losses, resumed_from, time.perf_counter() - began)


def _config_fingerprint(config: TrainConfig) -> dict:
    """The settings a resumed run must share with the run that wrote the checkpoint."""
    d = dataclasses.asdict(config)
    d["schedule"] = config.schedule.value
    d["optimizer_bits"] = config.optimizer_bits.value
    for free in ("save_every", "keep_checkpoints"):
        d.pop(free)
    return d
