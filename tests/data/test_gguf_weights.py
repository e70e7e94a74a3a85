"""Linear weights read straight from a GGUF file (`qlora.data.gguf_weights`), on small files written here
with the `gguf` package: orientation, de-quantization, which tensors count, the summary."""

from pathlib import Path

import numpy as np
import pytest

from qlora.data.gguf_weights import gguf_linear_weights, gguf_summary


def write_gguf(path: Path, arch: str, tensors: dict[str, np.ndarray], quantized: dict[str, str] | None = None) -> Path:
    """A GGUF file holding `tensors` (float32; those named in `quantized` stored in that GGML format)."""
    import gguf
    from gguf import quants

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny {arch}")
    for name, values in tensors.items():
        kind = (quantized or {}).get(name)
        if kind is None:
            writer.add_tensor(name, values.astype(np.float32))
        else:
            qtype = gguf.GGMLQuantizationType[kind]
            writer.add_tensor(name, quants.quantize(values.astype(np.float32), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_linear_weights_come_back_in_their_shape_and_values(tmp_path):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((48, 64)).astype(np.float32)  # (out, in): not square, so orientation is checked
    down = rng.standard_normal((64, 96)).astype(np.float32)
    tensors = {"token_embd.weight": rng.standard_normal((100, 64)), "blk.0.attn_norm.weight": np.ones(64),
               "blk.0.attn_q.weight": q, "blk.1.ffn_down.weight": down, "output.weight": rng.standard_normal((100, 64))}  # fmt: skip
    path = write_gguf(tmp_path / "m.gguf", "llama", tensors, {"blk.1.ffn_down.weight": "Q8_0"})
    weights = list(gguf_linear_weights(path))
    assert [(w.name, w.layer, w.kind, w.source_type, w.values.shape) for w in weights] == [
        ("blk.0.attn_q.weight", 0, "attn_q", "F32", (48, 64)), ("blk.1.ffn_down.weight", 1, "ffn_down", "Q8_0", (64, 96))]
    np.testing.assert_array_equal(weights[0].values, q)
    err = np.abs(weights[1].values - down).max()
    assert 0 < err <= np.abs(down).max() / 127  # Q8_0: absmax / 127 per block of 32, rounded to nearest: half that
    s = gguf_summary(path)
    assert (s.architecture, s.name) == ("llama", "tiny llama")
    assert s.parameters == 100 * 64 * 2 + 64 + 48 * 64 + 64 * 96
    assert (s.linear_parameters, s.linear_weights, s.source_types) == (48 * 64 + 64 * 96, 2, {"F32": 1, "Q8_0": 1})


def test_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf does not exist"):
        gguf_summary(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError, match="nope.gguf does not exist"):
        next(gguf_linear_weights(tmp_path / "nope.gguf"))
