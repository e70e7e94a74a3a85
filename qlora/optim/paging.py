"""Paged optimizer state: CUDA unified memory that the driver can page out to host RAM.

QLoRA (arXiv:2305.14314, §3 "Paged Optimizers") keeps the optimizer state in NVIDIA unified memory so
that a long sequence's memory spike evicts state pages to the CPU instead of failing with out-of-memory;
the pages come back when the optimizer touches them. Here: `cudaMallocManaged` for the state and
`cudaMemPrefetchAsync` to the GPU before each parameter's update (so the update does not fault page by
page). On CPU the state is ordinary memory and paging is a no-op.

# Note: paging design
Three ways to get a torch CUDA tensor backed by managed memory were considered:
1. bitsandbytes (`get_paged`): `cudaMallocManaged` in its C library, the pointer wrapped through numpy
   as a *CPU* torch tensor that only its own CUDA kernels treat as device memory. Our update is plain
   torch ops, which would then run on the CPU: not usable.
2. `torch.cuda.memory.CUDAPluggableAllocator` + `MemPool`: needs a compiled shared library exposing
   alloc/free with torch's signature, i.e. a build step on every GPU machine.
3. (chosen) `cudaMallocManaged` through ctypes on the CUDA runtime torch has already loaded; the pointer
   reaches torch through `__cuda_array_interface__`: `torch.as_tensor` wraps it without a copy as a
   CUDA tensor and holds the owning Python object until the storage dies, whose finaliser calls
   `cudaFree`. Pure Python, nothing to compile.
Managed memory is outside torch's caching allocator: `torch.cuda.memory_allocated()` does not count it.
The prefetch is enqueued on torch's current stream, so the update kernels that follow are ordered after
it without a device synchronisation.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import math
import os
from functools import lru_cache

import torch

_CUDA_MEM_ATTACH_GLOBAL = 1  # cudaMemAttachGlobal: accessible from any stream on any device
_CUDA_MEM_LOCATION_TYPE_DEVICE = 1  # cudaMemLocationTypeDevice (CUDA >= 13 prefetch API)
_CUDA_ERROR_CUDART_UNLOADING = 4  # cudaErrorCudartUnloading
_TYPESTR = {torch.float32: "<f4", torch.float64: "<f8", torch.uint8: "|u1"}  # the dtypes optimizer state uses


class _MemLocation(ctypes.Structure):
    """`cudaMemLocation` {cudaMemLocationType type; int id;}, passed by value since CUDA 13."""

    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _CudaRuntime:
    """The few libcudart entry points paging needs, with their C signatures."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        lib.cudaGetErrorString.argtypes = [ctypes.c_int]
        version = ctypes.c_int()
        self._check(lib.cudaRuntimeGetVersion(ctypes.byref(version)), "cudaRuntimeGetVersion")
        self.version = version.value
        lib.cudaMallocManaged.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_uint]
        lib.cudaFree.argtypes = [ctypes.c_void_p]
        # CUDA 13 changed cudaMemPrefetchAsync(ptr, n, int device, stream) to take a cudaMemLocation
        # and flags (the former `_v2`); the symbol name stayed.
        if self.version >= 13000:
            lib.cudaMemPrefetchAsync.argtypes = [
                ctypes.c_void_p, ctypes.c_size_t, _MemLocation, ctypes.c_uint, ctypes.c_void_p
            ]
        else:
            lib.cudaMemPrefetchAsync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            message = self._lib.cudaGetErrorString(status).decode()
            raise RuntimeError(f"{what} failed with CUDA error {status}: {message}")

    def malloc_managed(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        status = self._lib.cudaMallocManaged(ctypes.byref(ptr), nbytes, _CUDA_MEM_ATTACH_GLOBAL)
        self._check(status, f"cudaMallocManaged({nbytes} bytes)")
        return int(ptr.value)

    def free(self, ptr: int) -> None:
        status = self._lib.cudaFree(ptr)
        if status != _CUDA_ERROR_CUDART_UNLOADING:  # at interpreter exit the memory goes with the process
            self._check(status, "cudaFree")

    def prefetch(self, ptr: int, nbytes: int, device_index: int, stream: int) -> None:
        if self.version >= 13000:
            location = _MemLocation(_CUDA_MEM_LOCATION_TYPE_DEVICE, device_index)
            status = self._lib.cudaMemPrefetchAsync(ptr, nbytes, location, 0, stream)
        else:
            status = self._lib.cudaMemPrefetchAsync(ptr, nbytes, device_index, stream)
        self._check(status, "cudaMemPrefetchAsync")


def _cudart_candidates() -> list[str]:
    """Sonames first (dlopen returns the copy libtorch_cuda already loaded), then files on disk."""
    major = (torch.version.cuda or "").split(".")[0]
    names = [f"libcudart.so.{major}"] if major else []
    names.append("libcudart.so")
    roots = [os.path.join(os.path.dirname(torch.__file__), "lib")]
    nvidia = importlib.util.find_spec("nvidia")  # pip CUDA wheels: nvidia/cuda_runtime/lib, nvidia/cu13/lib
    if nvidia is not None and nvidia.submodule_search_locations:
        roots += list(nvidia.submodule_search_locations)
    for root in roots:
        names += sorted(glob.glob(os.path.join(root, "**", "libcudart*.so*"), recursive=True))
    return names


@lru_cache(maxsize=1)
def _runtime() -> _CudaRuntime:
    torch.cuda.init()  # loads libcudart into the process
    errors = []
    for name in _cudart_candidates():
        try:
            return _CudaRuntime(ctypes.CDLL(name))
        except (OSError, AttributeError) as error:
            errors.append(f"{name}: {error}")
    raise RuntimeError("paged optimizer state needs the CUDA runtime (libcudart); tried " + "; ".join(errors))


class _ManagedBuffer:
    """Owns one managed allocation; torch wraps it through `__cuda_array_interface__`."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self._runtime = _runtime()
        self.shape = shape
        self.typestr = _TYPESTR[dtype]
        self.ptr = self._runtime.malloc_managed(math.prod(shape) * dtype.itemsize)

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.typestr, "data": (self.ptr, False), "strides": None, "version": 2}

    def __del__(self) -> None:
        if getattr(self, "ptr", 0):
            self._runtime.free(self.ptr)
            self.ptr = 0


def paging_supported(device: torch.device) -> bool:
    """Whether state for a parameter on `device` can live in CUDA managed memory."""
    return device.type == "cuda" and torch.cuda.is_available()


def state_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, paged: bool) -> torch.Tensor:
    """A zero tensor for optimizer state: CUDA managed memory when `paged` on CUDA, else ordinary memory.

    Args:
        shape: the state's shape; dtype float32, float64 or uint8.
        paged: request managed memory; ignored (ordinary memory) off CUDA and for empty tensors.

    Returns:
        a tensor on `device` whose storage, when paged, is a `cudaMallocManaged` allocation freed with
        the storage.
    """
    if not (paged and paging_supported(device)) or math.prod(shape) == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    if dtype not in _TYPESTR:
        raise TypeError(f"paged state supports dtypes {sorted(map(str, _TYPESTR))}, got {dtype}")
    with torch.cuda.device(device):
        buffer = _ManagedBuffer(tuple(shape), dtype)
        tensor = torch.as_tensor(buffer, device=device)
    assert tensor.data_ptr() == buffer.ptr, "torch copied the managed buffer instead of wrapping it"
    return tensor.zero_()


def prefetch(tensors: list[torch.Tensor], device: torch.device) -> None:
    """Enqueues the migration of managed `tensors` to `device` on torch's current stream.

    Pass only tensors made by `state_zeros(..., paged=True)` on CUDA: the runtime rejects a prefetch of
    ordinary device memory. Off CUDA this does nothing.
    """
    if not paging_supported(device):
        return
    runtime = _runtime()
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index).cuda_stream
    for tensor in tensors:
        if tensor.numel():
            runtime.prefetch(tensor.data_ptr(), tensor.numel() * tensor.element_size(), index, stream)
