"""Minifloat formats against their definitions: spec values, nearest-even rounding, saturation, NaN/Inf codes."""

import math
from fractions import Fraction

import pytest
import torch

from qlora.quant import minifloat as mf

FORMATS = [mf.E4M3, mf.E5M2, mf.E2M1, mf.E4M4]


def test_e4m3_spec_values():
    # OFP8 v1.0 E4M3: bias 7, max normal S.1111.110 = 448, S.1111.111 = NaN, no Inf
    assert mf.E4M3.decode(0x7E) == 448.0 and mf.E4M3.decode(0xFE) == -448.0
    assert math.isnan(mf.E4M3.decode(0x7F)) and math.isnan(mf.E4M3.decode(0xFF))
    assert mf.E4M3.decode(0x78) == 256.0  # exponent 15 is a normal binade in E4M3 (no Inf)
    assert mf.E4M3.decode(0x08) == 2.0**-6  # smallest normal
    assert mf.E4M3.decode(0x01) == 2.0**-9  # smallest subnormal
    assert mf.E4M3.decode(0x38) == 1.0 and mf.E4M3.max == 448.0


def test_e5m2_spec_values():
    # OFP8 v1.0 E5M2: bias 15, IEEE specials: exponent 31 is Inf (m = 0) or NaN
    assert mf.E5M2.decode(0x7B) == 57344.0 and mf.E5M2.max == 57344.0
    assert mf.E5M2.decode(0x7C) == float("inf") and mf.E5M2.decode(0xFC) == float("-inf")
    assert all(math.isnan(mf.E5M2.decode(c)) for c in (0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF))
    assert mf.E5M2.decode(0x04) == 2.0**-14 and mf.E5M2.decode(0x01) == 2.0**-16
    assert mf.E5M2.decode(0x3C) == 1.0


def test_e2m1_spec_values():
    # OCP MX v1.0 FP4 E2M1: bias 1, no Inf/NaN, one subnormal 0.5
    assert mf.values(mf.E2M1).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
    assert mf.E2M1.max == 6.0 and mf.E2M1.emax == 2


def test_e4m4_is_bitsandbytes_kbit_absmax_format():
    # bitsandbytes' decode_absmax_e4m4 (bias 11): normal 2^(e-11) (1 + m/16), subnormal 2^-10 m/16, no sign
    v = mf.values(mf.E4M4)
    for code in range(256):
        e, m = code >> 4, code & 15
        expected = 2.0 ** (e - 11) * (1 + m / 16) if e else 2.0**-10 * m / 16
        assert v[code].item() == expected
    assert mf.E4M4.max == 31.0 and v[1].item() == 2.0**-14


@pytest.mark.parametrize(("fmt", "torch_dtype"), [(mf.E4M3, torch.float8_e4m3fn), (mf.E5M2, torch.float8_e5m2)])
def test_fp8_decoding_equals_torch(fmt, torch_dtype):
    ours = mf.values(fmt)
    theirs = torch.arange(256, dtype=torch.uint8).view(torch_dtype).to(torch.float32)
    assert torch.equal(torch.isnan(ours), torch.isnan(theirs))
    finite = ~torch.isnan(ours)
    assert torch.equal(ours[finite], theirs[finite])


def _nearest_even_by_definition(y: float, fmt: mf.Minifloat) -> float:
    """Brute force over every finite value in exact arithmetic: nearest; on a tie the even code; beyond
    the largest finite value: that value (saturation)."""
    if abs(y) >= fmt.max:
        return math.copysign(fmt.max, y) if fmt.signed or y > 0 else 0.0
    finite = [(fmt.decode(c), c) for c in range(fmt.n_codes) if math.isfinite(fmt.decode(c))]
    best = min(abs(Fraction(v) - Fraction(y)) for v, _ in finite)
    candidates = {(v, c) for v, c in finite if abs(Fraction(v) - Fraction(y)) == best}
    values = {v for v, _ in candidates}
    if len(values) == 1:
        return values.pop()
    return next(v for v, c in sorted(candidates) if fmt.is_even(c))


def _probe_values(fmt: mf.Minifloat) -> torch.Tensor:
    table = mf.rounding_table(fmt)
    mids = table.midpoints[: table.n_values - 1]
    above = torch.nextafter(mids, torch.tensor(float("inf")))
    below = torch.nextafter(mids, torch.tensor(float("-inf")))
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(300, generator=g) * fmt.max / 3
    beyond = torch.tensor([fmt.max * 1.01, fmt.max * 1.07, fmt.max * 4, 3e38])
    probes = torch.cat([mids, above, below, spread, beyond, mf.values(fmt)[torch.isfinite(mf.values(fmt))]])
    if fmt.signed:
        probes = torch.cat([probes, -probes])
    return probes[probes >= 0] if not fmt.signed else probes


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_rounding_is_nearest_ties_to_even_with_saturation(fmt):
    probes = _probe_values(fmt)
    codes = mf.round_to_grid(probes, mf.rounding_table(fmt))
    got = mf.values(fmt)[codes.long()].tolist()
    expected = [_nearest_even_by_definition(y, fmt) for y in probes.tolist()]
    assert got == expected


@pytest.mark.parametrize(
    ("y", "expected"),
    [(0.25, 0.0), (0.75, 1.0), (1.25, 1.0), (1.75, 2.0), (2.5, 2.0), (3.5, 4.0), (5.0, 4.0), (5.01, 6.0),
     (6.5, 6.0), (7.0, 6.0), (1e30, 6.0), (-0.25, 0.0), (-2.5, -2.0), (-5.0, -4.0), (-100.0, -6.0)],
)  # fmt: skip
def test_e2m1_ties_and_saturation_spec_examples(y, expected):
    code = mf.round_to_grid(torch.tensor([y]), mf.rounding_table(mf.E2M1))
    assert mf.values(mf.E2M1)[code.long()].item() == expected


def test_fp8_saturates_at_the_largest_finite_value():
    # OFP8's saturating conversion: beyond the largest finite value -> the largest finite value, never NaN/Inf
    e4m3 = mf.round_to_grid(torch.tensor([449.0, 464.0, 480.0, 1e6, -1e6]), mf.rounding_table(mf.E4M3))
    assert mf.values(mf.E4M3)[e4m3.long()].tolist() == [448.0, 448.0, 448.0, 448.0, -448.0]
    e5m2 = mf.round_to_grid(torch.tensor([61440.0, 1e9]), mf.rounding_table(mf.E5M2))
    assert mf.values(mf.E5M2)[e5m2.long()].tolist() == [57344.0, 57344.0]


@pytest.mark.parametrize(("fmt", "torch_dtype"), [(mf.E4M3, torch.float8_e4m3fn), (mf.E5M2, torch.float8_e5m2)])
def test_fp8_rounding_equals_torch_cast_inside_the_range(fmt, torch_dtype):
    g = torch.Generator().manual_seed(1)
    y = (torch.randn(200_000, generator=g) * torch.exp(torch.randn(200_000, generator=g) * 4)).clamp(-fmt.max, fmt.max)
    ours = mf.values(fmt)[mf.round_to_grid(y, mf.rounding_table(fmt)).long()]
    theirs = y.to(torch_dtype).to(torch.float32)
    assert torch.equal(ours, theirs)  # -0.0 == 0.0: the sign of a zero result is not kept (code 0)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_rounding_never_writes_a_nan_or_inf_code_and_zero_is_code_0(fmt):
    table = mf.rounding_table(fmt)
    used = table.order[: table.n_values]
    assert torch.isfinite(mf.values(fmt)[used.long()]).all()
    assert mf.round_to_grid(torch.tensor([0.0, -0.0, 1e-30, -1e-30]), table).tolist() == [0, 0, 0, 0]
