"""Test-wide setup: Triton's interpreter on CPU-only machines, offline Hugging Face, seeds, tolerances."""

import os

import torch

# Triton reads TRITON_INTERPRET when `@triton.jit` runs (at import of the kernel modules), so it must be
# set before anything imports qlora.kernels. Only tests do this; the library never reads the environment.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402
from tests.peers import peer

# One dtype-keyed tolerance table for comparisons of computed (not bit-exact) values.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _hf_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))
    yield


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The embedded SmolLM2-135M as a safetensors folder (~30 s once per session)."""
    peer("gguf")
    from qlora.data.gguf_model import materialise_smollm2

    return materialise_smollm2(tmp_path_factory.mktemp("models") / "smollm2")
