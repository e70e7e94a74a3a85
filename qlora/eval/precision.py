"""Scores from fp32 logits: the output layer's matmul runs in float32 while the rest of the model may
compute in bf16 (autocast).

Under bf16 autocast the head's matmul returns bf16 logits: 8 bits of mantissa, so two answer letters'
logits tie exactly in up to 14 of 100 MMLU questions and an argmax then picks the first (a bias towards
"A"), and log-softmax over a 49k-262k vocabulary loses ~0.01 nats per token. Casting the bf16 logits to
fp32 afterwards does not bring the lost bits back. `fp32_head(model)` runs the head itself in fp32 (its
input cast up, its weight cast up, autocast off for that one matmul); every evaluator wraps its forward
passes in it. The head is the model's output embedding (causal LMs) or its classification layer.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

_HEAD_NAMES = ("classifier", "score", "out_proj")


def _head_linears(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers that produce the logits: the output embedding, else a classification head."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if isinstance(head, nn.Linear):
        return [head]
    found = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear) and leaf in _HEAD_NAMES and not any(p in name for p in ("attention", "attn", "self_attn")):
            found.append(module)
    return found


def _fp32_forward(layer: nn.Linear):
    # the weight is cast once per block (the layer is frozen while scoring), not once per batch
    weight = layer.weight.detach().float()
    bias = None if layer.bias is None else layer.bias.detach().float()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), weight, bias)

    return forward


@contextlib.contextmanager
def fp32_head(model: nn.Module) -> Iterator[list[nn.Linear]]:
    """Within the block, the model's head computes its logits in float32 (see the module doc).

    Yields:
        The patched layers (empty when the model has no recognisable head: then nothing changes).
    """
    layers = _head_linears(model)
    saved = [layer.__dict__.get("forward") for layer in layers]
    try:
        for layer in layers:
            layer.forward = _fp32_forward(layer)
        yield layers
    finally:
        for layer, old in zip(layers, saved):
            if old is None:
                del layer.forward
            else:
                layer.forward = old


def fp32_scoring(evaluate: Callable) -> Callable:
    """Decorates an evaluator `evaluate(model, ...)`: its forward passes run within `fp32_head(model)`."""

    @functools.wraps(evaluate)
    def wrapper(model, *args, **kwargs):
        with fp32_head(model):
            return evaluate(model, *args, **kwargs)

    return wrapper
