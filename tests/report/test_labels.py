"""Data-type labels: one typed value per row of Table 2, with the text form the files use."""

import pytest

from qlora.config import QuantConfig
from qlora.quant.dtypes import DataType
from qlora.report import labels as L
from qlora.report.labels import DataTypeLabel


@pytest.mark.parametrize("text,label,display", [
    ("nf4_dq", L.NF4_DQ, "NF4 + DQ"), ("NF4_DQ", L.NF4_DQ, "NF4 + DQ"), ("fp4", L.FP4, "FP4 (E2M1, bnb grid)"),
    ("fp4_e3m0", L.FP4_E3M0, "FP4 (E3M0)"), ("fp4_e3m0_dq", DataTypeLabel(DataType.FP4_E3M0, True), "FP4 (E3M0) + DQ"),
    ("int8_b128", DataTypeLabel(DataType.INT8, False, 128), "Int8, block 128"), ("bf16", L.BF16, "BF16"),
])  # fmt: skip
def test_parse_value_display(text, label, display):
    got = DataTypeLabel.parse(text)
    assert got == label and got.display == display and DataTypeLabel.parse(got.value) == got
    assert got.value == text.lower() and str(got) == got.value


def test_of_quant_config_and_errors():
    assert DataTypeLabel.of(QuantConfig()) == L.NF4_DQ and DataTypeLabel.of(QuantConfig(DataType.FP4, False)) == L.FP4
    assert DataTypeLabel.of(QuantConfig(DataType.NF4, True, 128)).value == "nf4_dq_b128"
    assert DataTypeLabel(DataType.BF16, block_size=128) == L.BF16  # BF16 has no blocks
    for bad in ("main", "nf5", "nf4_dqx", "", None):
        with pytest.raises(ValueError, match="data type label must be"):
            DataTypeLabel.parse(bad)
    with pytest.raises(ValueError, match="block_size must be a power of two"):
        DataTypeLabel.parse("nf4_b100")
    with pytest.raises(ValueError, match="double quantization needs a quantized data type"):
        DataTypeLabel.parse("bf16_dq")
    with pytest.raises(TypeError, match="double_quant must be a bool"):
        DataTypeLabel(DataType.NF4, "no")


def test_labels_of_the_types_since_the_paper():
    from qlora.quant.dtypes import DataType, DoubleQuant
    from qlora.report.labels import DataTypeLabel

    for text, display in [("nvfp4", "NVFP4"), ("mxfp4", "MXFP4"), ("fp8_e4m3", "FP8 (E4M3)"), ("fp8_e5m2_dq", "FP8 (E5M2) + DQ"),
                          ("af4", "AF4-64"), ("nf4_dq_e4m4", "NF4 + DQ (E4M4)"), ("fp8_e4m3_dq_e4m4_b128", "FP8 (E4M3) + DQ (E4M4), block 128")]:  # fmt: skip
        label = DataTypeLabel.parse(text)
        assert label.value == text and label.display == display
    assert DataTypeLabel.parse("nvfp4").block_size == 16 and DataTypeLabel.parse("mxfp4").block_size == 32
    assert DataTypeLabel(DataType.NF4, True, 64, DoubleQuant.DYNAMIC) == DataTypeLabel.parse("nf4_dq")
    with pytest.raises(ValueError, match="fixed block size of 16"):
        DataTypeLabel.parse("nvfp4_b64")
