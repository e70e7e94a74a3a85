"""Paged AdamW with 32-bit or 8-bit state: the optimizer of QLoRA (arXiv:2305.14314, §3 and §4).

One class, `PagedAdamW(params, config=AdamWConfig(...))`:
- the update is torch.optim.AdamW's (Loshchilov & Hutter, decoupled weight decay), op for op: with
  float32 parameters and 32-bit state it matches `torch.optim.AdamW` (single-tensor path) exactly;
- `bits=StateBits.BITS_8` stores both moments blockwise-quantized (`qlora.optim.state8bit`);
- `paged=True` puts the state in CUDA unified memory, prefetched before each parameter's update
  (`qlora.optim.paging`). On CPU there is nothing to page to: `paged=True` is accepted and the state is
  ordinary memory, so one config runs on both.

# Note: precision
The moments and the update are float32 whatever the parameter dtype (bitsandbytes' 32-bit optimizers do
the same): a bf16 LoRA weight is updated in float32 and rounded once when written back. float64
parameters keep float64 32-bit state (8-bit state computes in float32). The step count is a float32 CPU tensor and the 32-bit state keys are
torch's, so a `torch.optim.AdamW` checkpoint resumes in `PagedAdamW` (32-bit state).

# Note: sharded parameters
Under FSDP2 the parameters and their gradients are DTensors holding one shard per rank. The update is
elementwise, so each rank updates its own shard (`DTensor.to_local()`) and keeps state of the shard's
shape: the state is sharded like the parameter. Whether a parameter gets 8-bit state is decided from
its full size (`DTensor.numel()` is the global count), so every rank, and a single process, make the
same choice for it; the 8-bit blocks of 256 are counted within the rank's shard.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

import torch

from qlora.optim.state_bits import StateBits

from qlora.optim import paging, state8bit
from qlora.optim.state8bit import MomentMap

_STATE_32 = ("exp_avg", "exp_avg_sq")
_STATE_8 = ("exp_avg_codes", "exp_avg_absmax", "exp_avg_sq_codes", "exp_avg_sq_absmax")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank's own shard of a DTensor (FSDP2 parameters and gradients); any other tensor as it is."""
    to_local = getattr(t, "to_local", None)
    return t if to_local is None else to_local()


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_hyperparameters(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
    """Raises ValueError/TypeError naming the first bad AdamW hyperparameter."""
    if _check_number("lr", lr) < 0:
        raise ValueError(f"lr must be >= 0, got {lr!r}")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        if not 0.0 <= _check_number(f"betas[{i}]", beta) < 1.0:
            raise ValueError(f"betas[{i}] must be in [0, 1), got {beta!r}")
    if _check_number("eps", eps) < 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if _check_number("weight_decay", weight_decay) < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")


_NONNEGATIVE = ("step", "exp_avg_sq", "exp_avg_absmax", "exp_avg_sq_absmax")


def _check_moment(key: str, index: Any, value: torch.Tensor) -> None:
    """Saved state must be finite (and >= 0 where Adam's maths keeps it so): NaN moments give NaN updates."""
    if not value.is_floating_point():
        return
    bad = ~torch.isfinite(value)
    if key in _NONNEGATIVE:
        bad |= value < 0
    if bool(bad.any()):
        first = value.reshape(-1)[bad.reshape(-1)][0].item()
        expected = "finite and >= 0" if key in _NONNEGATIVE else "finite"
        raise ValueError(f"optimizer state {key!r} for parameter {index}: {int(bad.sum())} of {value.numel()} values "
                         f"are not {expected} (e.g. {first})")  # fmt: skip


@dataclass(frozen=True)
class AdamWConfig:
    """Hyperparameters of `PagedAdamW`; defaults are torch.optim.AdamW's.

    The paper's runs use lr 2e-4 (1e-4 for 33B/65B), weight decay 0, paged 32-bit state.

    Args:
        lr: learning rate, >= 0.
        betas: (beta1, beta2), each in [0, 1).
        eps: added to sqrt(v_hat), >= 0.
        weight_decay: decoupled (p <- p * (1 - lr * weight_decay)), >= 0.
        bits: `StateBits` (32 or 8 are accepted and converted).
        paged: state in CUDA unified memory; a no-op on CPU.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    bits: StateBits = StateBits.BITS_32
    paged: bool = False

    def __post_init__(self) -> None:
        _check_hyperparameters(self.lr, self.betas, self.eps, self.weight_decay)
        object.__setattr__(self, "betas", tuple(self.betas))
        if not isinstance(self.bits, StateBits):
            valid = [b.value for b in StateBits]
            if isinstance(self.bits, bool) or self.bits not in valid:
                raise ValueError(f"bits must be one of {valid} (StateBits), got {self.bits!r}")
            object.__setattr__(self, "bits", StateBits(self.bits))
        if not isinstance(self.paged, bool):
            raise TypeError(f"paged must be a bool, got {self.paged!r}")


def adamw_update_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: float,
) -> None:
    """One AdamW step in place on same-shape tensors; torch.optim.AdamW's single-tensor maths op for op.

    m <- lerp(m, g, 1 - beta1); v <- beta2 * v + (1 - beta2) * g^2;
    p <- p * (1 - lr * wd) - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
    """
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


class PagedAdamW(torch.optim.Optimizer):
    """AdamW with 32-bit or 8-bit blockwise state, optionally paged to CUDA unified memory.

    Per-group overrides of lr, betas, eps and weight_decay work as in torch (and LR schedulers set
    `param_groups[i]["lr"]`); `bits` and `paged` hold for the whole optimizer. Parameters whose `grad`
    is None are skipped (no state is created, the step count does not advance).

    State per parameter (what `state_dict()` holds): `step` (float32 scalar) and either `exp_avg`,
    `exp_avg_sq` (the parameter's shape, float32) or, for 8-bit state on tensors of at least
    `state8bit.MIN_8BIT_SIZE` elements, `exp_avg_codes`, `exp_avg_sq_codes` ((numel,) uint8) and
    `exp_avg_absmax`, `exp_avg_sq_absmax` ((ceil(numel / 256),) float32).
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], *, config: AdamWConfig | None = None) -> None:
        config = AdamWConfig() if config is None else config
        if not isinstance(config, AdamWConfig):
            raise TypeError(f"config must be an AdamWConfig, got {type(config).__name__}")
        self.config = config
        defaults = dict(lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        for p in group["params"]:
            if p.dtype not in _FLOAT_DTYPES:
                raise TypeError(
                    f"PagedAdamW updates floating parameters {list(_FLOAT_DTYPES)}, "
                    f"got a {p.dtype} parameter of shape {tuple(p.shape)}"
                )

    def _is_8bit(self, p: torch.Tensor) -> bool:
        return self.config.bits is StateBits.BITS_8 and state8bit.uses_8bit(p.numel())

    def _paged(self, p: torch.Tensor) -> bool:
        return self.config.paged and paging.paging_supported(p.device)

    def _zeros(self, p: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return paging.state_zeros(shape, dtype, p.device, paged=self._paged(p))

    def _new_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fresh state of the shape of `p`'s local shard (8-bit or not decided from its full size)."""
        state = {"step": torch.tensor(0.0, dtype=torch.float32)}
        shard = _local(p)
        if self._is_8bit(p):
            n, blocks = shard.numel(), state8bit.n_blocks(shard.numel())
            for moment in ("exp_avg", "exp_avg_sq"):
                state[f"{moment}_codes"] = self._zeros(p, (n,), torch.uint8)
                state[f"{moment}_absmax"] = self._zeros(p, (blocks,), torch.float32)  # absmax 0 reads as zeros
        else:
            dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
            for moment in _STATE_32:
                state[moment] = self._zeros(p, tuple(shard.shape), dtype)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One optimizer step over every parameter with a gradient; returns `closure()` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError(f"PagedAdamW does not support sparse gradients (parameter of shape {tuple(p.shape)})")
                if not self.state[p]:
                    self.state[p] = self._new_state(p)
                self._update(p, self.state[p], group)
        return loss

    def _update(self, p: torch.Tensor, state: dict[str, torch.Tensor], group: dict[str, Any]) -> None:
        if self._paged(p):
            paging.prefetch([t for k, t in state.items() if k != "step"], p.device)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        hyper = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"])
        hyper["step"] = state["step"].item()
        compute_dtype = torch.float64 if p.dtype == torch.float64 and not self._is_8bit(p) else torch.float32
        shard = _local(p)  # `# Note: sharded parameters`
        work = shard if shard.dtype == compute_dtype else shard.to(compute_dtype)
        grad = _local(p.grad).to(compute_dtype)
        if self._is_8bit(p):
            moments = {
                kind: state8bit.dequantize_moment(state[f"{name}_codes"], state[f"{name}_absmax"], kind).view(shard.shape)
                for name, kind in (("exp_avg", MomentMap.SIGNED), ("exp_avg_sq", MomentMap.UNSIGNED))
            }
            adamw_update_(work, grad, moments[MomentMap.SIGNED], moments[MomentMap.UNSIGNED], **hyper)
            for name, kind in (("exp_avg", MomentMap.SIGNED), ("exp_avg_sq", MomentMap.UNSIGNED)):
                state8bit.quantize_moment_(moments[kind].view(-1), state[f"{name}_codes"], state[f"{name}_absmax"], kind)
        else:
            adamw_update_(work, grad, state["exp_avg"], state["exp_avg_sq"], **hyper)
        if work is not shard:
            shard.copy_(work)

    def state_bytes(self) -> int:
        """Bytes held by the optimizer state (moments, codes, absmax, step counters)."""
        return sum(t.numel() * t.element_size() for s in self.state.values() for t in s.values() if isinstance(t, torch.Tensor))

    def paged_state_bytes(self) -> int:
        """Bytes of the state in CUDA managed memory (`paged=True` on CUDA), which torch's allocator and
        so `torch.cuda.max_memory_allocated` never count; 0 on CPU."""
        return sum(t.numel() * t.element_size() for p, s in self.state.items() if self._paged(p)
                   for k, t in s.items() if k != "step" and isinstance(t, torch.Tensor))  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores `state_dict()` output: groups' hyperparameters and each parameter's state, copied
        into freshly allocated (paged where configured) buffers on the parameter's device.

        Raises:
            ValueError: the groups do not match, or a parameter's saved state does not have the form
                (32/8-bit keys, shapes, dtypes) this optimizer would create for it, or holds NaN/Inf
                (or negative second moments, absmax or step counts): resuming from it would give NaN updates.
        """
        if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict) or not isinstance(
            state_dict.get("param_groups"), list
        ):
            keys = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"optimizer state_dict must be a dict with 'state' (dict) and 'param_groups' (list), got {keys}")
        saved_state = state_dict["state"]
        super().load_state_dict({**state_dict, "state": {}})  # checks and restores the groups
        for group in self.param_groups:
            _check_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        by_id = dict(zip(saved_ids, params))
        for index, saved in saved_state.items():
            if index not in by_id:
                raise ValueError(f"optimizer state for parameter {index!r} has no parameter in the saved groups {saved_ids}")
            p = by_id[index]
            self.state[p] = self._restored(p, index, saved)

    def _restored(self, p: torch.Tensor, index: Any, saved: dict[str, Any]) -> dict[str, torch.Tensor]:
        state = self._new_state(p)
        if not isinstance(saved, dict):
            raise ValueError(f"optimizer state for parameter {index} must be a dict, got {type(saved).__name__}")
        if set(saved) != set(state):
            raise ValueError(
                f"optimizer state for parameter {index} (shape {tuple(p.shape)}) has keys {sorted(saved)}, but this "
                f"optimizer (bits={self.config.bits.value}) keeps {sorted(state)} for it"
            )
        for key, buffer in state.items():
            value = torch.as_tensor(saved[key])
            if value.shape != buffer.shape or (buffer.dtype == torch.uint8) != (value.dtype == torch.uint8):
                raise ValueError(
                    f"optimizer state {key!r} for parameter {index}: expected shape {tuple(buffer.shape)} "
                    f"({buffer.dtype}), got {tuple(value.shape)} ({value.dtype})"
                )
            _check_moment(key, index, value)
            buffer.copy_(value)
        return state
