"""repr(QuantizedTensor) is one readable line, never a dump of the absmax tensor (issue 13 §4)."""

import pytest
import torch

import qlora


@pytest.mark.parametrize(
    "dtype, double_quant, shape, expected",
    [
        ("nf4", True, (256, 512), "QuantizedTensor(nf4, shape=(256, 512), orig_dtype=float32, block_size=64, double_quant=True, "
                                  "4.127 bits/param, device=cpu)"),
        ("nf4", False, (256, 512), "QuantizedTensor(nf4, shape=(256, 512), orig_dtype=float32, block_size=64, double_quant=False, "
                                   "4.500 bits/param, device=cpu)"),
        ("int8", False, (64, 64), "QuantizedTensor(int8, shape=(64, 64), orig_dtype=float32, block_size=64, double_quant=False, "
                                  "8.500 bits/param, device=cpu)"),
        ("bf16", False, (3, 5), "QuantizedTensor(bf16, shape=(3, 5), 16 bits/param, device=cpu)"),
    ],
)  # fmt: skip
def test_repr_is_one_line(dtype, double_quant, shape, expected):
    q = qlora.quantize(torch.randn(shape), dtype, 64, double_quant)
    assert repr(q) == expected
    assert str(q) == expected and "\n" not in repr(q) and "tensor(" not in repr(q)
    if q.nested is not None:
        assert repr(q.nested) == f"NestedAbsmax(constants={q.n_blocks}, block_size=256, device=cpu)"


def test_check_values_names_the_field():
    q = qlora.quantize(torch.randn(128), "nf4", 64, False)
    q.check_values()
    q.absmax[1] = float("inf")
    with pytest.raises(ValueError, match=r"absmax must be finite and >= 0: 1 of 2 values are not \(first at index 1: inf\)"):
        q.check_values()
    dq = qlora.quantize(torch.randn(128), "nf4", 64, True)
    dq.nested.offset.fill_(float("nan"))
    with pytest.raises(ValueError, match="nested_offset must be finite"):
        dq.check_values()
