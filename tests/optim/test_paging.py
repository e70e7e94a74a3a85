"""Paging plumbing without a GPU: the CPU path, and the ctypes calls checked against a fake libcudart.

The real CUDA path (managed allocation wrapped as a torch CUDA tensor, prefetch, eviction under memory
pressure) needs a GPU and is not exercised here.
"""

import ctypes

import pytest
import torch

from qlora.optim import paging


class _FakeCudart:
    """Records calls with the C argument conventions of libcudart; returns cudaSuccess."""

    def __init__(self, version):
        self.calls = []
        self.cudaRuntimeGetVersion = lambda ref: setattr(ref._obj, "value", version) or 0
        self.cudaGetErrorString = lambda status: b"fake error"

        def malloc(ref, nbytes, flags):
            ref._obj.value = 0x1000
            self.calls.append(("malloc", nbytes, flags))
            return 0

        self.cudaMallocManaged = malloc
        self.cudaFree = lambda ptr: self.calls.append(("free", ptr)) or 0
        self.cudaMemPrefetchAsync = lambda *args: self.calls.append(("prefetch", *args)) or 0


@pytest.mark.parametrize("version", [12080, 13000])
def test_runtime_calls_use_the_c_signatures_of_the_runtime_version(version):
    fake = _FakeCudart(version)
    runtime = paging._CudaRuntime(fake)
    assert runtime.malloc_managed(1024) == 0x1000
    runtime.prefetch(0x1000, 1024, 3, 77)
    runtime.free(0x1000)
    assert fake.calls[0] == ("malloc", 1024, 1)  # cudaMemAttachGlobal
    _, ptr, nbytes, *rest = fake.calls[1]
    assert (ptr, nbytes) == (0x1000, 1024)
    if version >= 13000:  # (ptr, n, cudaMemLocation{device, 3}, flags 0, stream)
        location, flags, stream = rest
        assert (location.type, location.id, flags, stream) == (1, 3, 0, 77)
        assert fake.cudaMemPrefetchAsync.argtypes[2] is paging._MemLocation
    else:  # (ptr, n, int device, stream)
        assert rest == [3, 77]
        assert fake.cudaMemPrefetchAsync.argtypes[2] is ctypes.c_int
    assert fake.calls[2] == ("free", 0x1000)


def test_runtime_errors_name_the_call():
    fake = _FakeCudart(12080)
    fake.cudaMallocManaged = lambda ref, nbytes, flags: 2  # cudaErrorMemoryAllocation
    with pytest.raises(RuntimeError, match=r"cudaMallocManaged\(64 bytes\) failed with CUDA error 2: fake error"):
        paging._CudaRuntime(fake).malloc_managed(64)


def test_cpu_state_is_ordinary_memory():
    for paged in (False, True):
        t = paging.state_zeros((3, 4), torch.float32, torch.device("cpu"), paged=paged)
        assert t.device.type == "cpu" and torch.equal(t, torch.zeros(3, 4))
    paging.prefetch([t], torch.device("cpu"))  # a no-op off CUDA


def test_libcudart_candidates_are_sonames_then_files():
    names = paging._cudart_candidates()
    assert "libcudart.so" in names
