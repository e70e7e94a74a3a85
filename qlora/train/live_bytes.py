"""Bytes of the tensors a piece of code creates, live and at their peak — on any device, the CPU included.

On a GPU `torch.cuda.max_memory_allocated` says how much memory a training step took; on a CPU nothing
does (the peak RSS also holds the Python runtime and libraries, and never goes down). `LiveBytes` is a
`TorchDispatchMode`: every aten op that runs inside it (the forward, and the backward, which autograd
runs on the same thread for CPU tensors and with the same modes) reports its outputs; an output whose
storage is new — not one of the op's inputs' storages (a view, an in-place op) and not already counted —
is counted with its storage's bytes until that storage is freed (a `weakref.finalize` on the storage,
whose Python object torch keeps alive exactly as long as the storage). So `live` is the bytes of the
storages made inside the block that are still alive, and `peak` the most there ever were at once.

What existed before the block (parameters, buffers, inputs, optimizer state) is never counted; what the
block allocates outside aten ops (Python-side `torch.empty` is an aten op too) would be missed.

Note (storage bytes): a storage counts whole (`nbytes`), however small the view onto it: what the
allocator really holds, not the view's elements.

Note (compiled regions): torch.compile refuses to run under a Python dispatch mode unless the mode says
it is an "infra" mode, and the fast CPU dequantize (`qlora.quant.cpu`) is compiled: under an ordinary
mode it would fall back to the reference for the rest of the process. `LiveBytes` therefore declares
itself infra: a compiled region runs as compiled code, and buffers made inside it may go uncounted (the
CPU dequantize writes into a preallocated buffer). On SmolLM2-135M the bytes counted were the same, to
the byte, as with the eager reference dequantize.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storages(values) -> list[torch.UntypedStorage]:
    flat, _ = tree_flatten(values)
    return [t.untyped_storage() for t in flat if isinstance(t, torch.Tensor) and t.layout is torch.strided]


class LiveBytes(TorchDispatchMode):
    """Counts the storages made by the aten ops run inside `with LiveBytes() as tracker:`.

    Attributes:
        live: bytes of the counted storages still alive.
        peak: the most `live` has been since the block began (or since `reset_peak`).
        allocations: how many storages were counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.allocations = 0
        self._counted: dict[int, int] = {}  # storage key -> bytes

    @classmethod
    def is_infra_mode(cls) -> bool:
        return True  # see the Note (compiled regions)

    def reset_peak(self) -> None:
        """Starts a new peak from what is live now."""
        self.peak = self.live

    def _free(self, key: int) -> None:
        self.live -= self._counted.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {s.data_ptr() for s in _storages((args, kwargs)) if s.nbytes()}
        out = func(*args, **kwargs)
        for storage in _storages(out):
            key, size = storage.data_ptr(), storage.nbytes()
            if not size or key in inputs or key in self._counted:
                continue
            self._counted[key] = size
            self.live += size
            self.allocations += 1
            weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.live)
        return out
