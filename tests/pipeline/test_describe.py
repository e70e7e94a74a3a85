"""`qlora info` (`qlora.pipeline.describe`): sizes in MiB, and the keys and the text say MiB."""

import pytest

from qlora.config import ComputeDtype, DataType, QuantConfig
from qlora.models.pretrained import from_pretrained
from qlora.models.saving import save_pretrained
from qlora.pipeline.describe import describe, format_info
from tests.models import tiny_models


def test_sizes_are_mib_and_say_so(tmp_path):
    base = tiny_models.save(tiny_models.llama(), tmp_path / "base")
    folder = save_pretrained(from_pretrained(base, quant=QuantConfig(DataType.NF4, True, compute_dtype=ComputeDtype.FP32)), tmp_path / "q4")
    info = describe(folder)
    files = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert info["files_mib"] == pytest.approx(files / 2**20, abs=5e-4)
    assert info["quantized_mib"] > 0 and info["other_mib"] > 0
    assert not [k for k in info if k.endswith("_mb")]  # "MB" printed over MiB values (1.049x off) before
    assert "files_mib" in format_info(info)
