"""The fast CPU path of quantize/dequantize: what CPU tensors use by default.

Bit-identical to `reference.py` (same codes, absmax, and float32 values before the one rounding to the
output dtype); faster by making one pass over memory instead of many. The whole blocks go through one
fused `torch.compile` (inductor, C++) kernel each; a partial last block goes through the reference.

# Note: formulations that inductor vectorizes
- Codebook lookups are a 4-level select tree on the nibble's bits over the 16 codebook values (each
  a scalar load, broadcast): gathers with index tensors vectorize poorly on CPU.
- bf16 output: two elements are rounded to nearest-even on their float32 bit patterns with integer
  ops and written as one int32 (element 2j in the low half), because inductor does not vectorize
  int16 and a stacked (2j, 2j+1) store is a strided one. The rounding is c10's `round_to_nearest_even`
  (the inputs are finite).
- The codebook and midpoints are tensor inputs and every size is dynamic, so one compiled kernel
  serves every data type, block size and shape (compiled lazily, on first use).
If compilation fails (no C++ compiler, an unsupported platform), every call runs the reference.

# Note: output allocation
A freshly allocated multi-MB output is mmap'd by the C allocator, and its first-touch page faults
(4 KiB each) cost more than the kernel itself (~8 ms for a 32 MB bf16 4096x4096 weight on these
machines). Large outputs are advised as transparent huge pages (madvise MADV_HUGEPAGE, Linux) before
the kernel writes them: 2 MiB faults, ~4x cheaper allocation. Advice only: where it is unavailable
nothing changes but speed.
"""

from __future__ import annotations

import ctypes
import logging
import sys

import torch

from qlora.quant import codebooks, minifloat, reference

logger = logging.getLogger(__name__)

_TINY = 1e-38  # as reference._TINY

_HUGE_PAGE = 1 << 21
_MADV_HUGEPAGE = 14
_MIN_HUGE_BYTES = 4 << 20


def _libc_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _libc_madvise()


def empty_output(n: int, dtype: torch.dtype) -> torch.Tensor:
    """torch.empty(n, dtype=dtype), advised as huge pages when large (see "# Note: output allocation")."""
    out = torch.empty(n, dtype=dtype)
    nbytes = n * out.element_size()
    if _MADVISE is not None and nbytes >= _MIN_HUGE_BYTES:
        ptr = out.data_ptr()
        start = (ptr + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        end = (ptr + nbytes) & ~(_HUGE_PAGE - 1)
        if end > start:
            _MADVISE(start, end - start, _MADV_HUGEPAGE)  # advice: a failure only costs speed
    return out


def _select16(q: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """table[q] for int32 q in [0, 16) as a select tree on the bits of q; (…) -> (…) float32."""
    vals = [table[k] for k in range(16)]
    for bit in range(4):
        on = (q & (1 << bit)) != 0
        vals = [torch.where(on, vals[2 * i + 1], vals[2 * i]) for i in range(len(vals) // 2)]
    return vals[0]


def _bf16_bits_high(v: torch.Tensor) -> torch.Tensor:
    """float32 -> int32 whose upper 16 bits are the round-to-nearest-even bf16 of v (v finite)."""
    bits = v.view(torch.int32)
    return bits + (0x7FFF + ((bits >> 16) & 1))


def _row_scales(absmax: torch.Tensor, width: int) -> torch.Tensor:
    """(B,) -> (B, 1); or (R, g) scales of g blocks per row -> (R, width), each repeated width / g times.

    Rows of at least 16 bytes: inductor vectorizes rows of 8 bytes (NVFP4's blocks of 16) poorly (~30x
    slower measured), so small blocks are processed g to a row (`# Note: formulations that inductor
    vectorizes`)."""
    if absmax.dim() == 1:
        return absmax[:, None]
    rows, g = absmax.shape
    return absmax[:, :, None].expand(rows, g, width // g).reshape(rows, width)


def _dequant_bf16_pairs(packed: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor, out: torch.Tensor) -> None:
    """(B, W) uint8, (B,) or (B, g) float32, (16,) float32 -> writes out (B, W) int32: two bf16 per byte, high nibble low."""
    p = packed.to(torch.int32)
    a = _row_scales(absmax, packed.shape[1])
    hi = _bf16_bits_high(_select16(p >> 4, table) * a)
    lo = _bf16_bits_high(_select16(p & 15, table) * a)
    out.copy_(((hi >> 16) & 0xFFFF) | (lo & -65536))


def _dequant_pairs(packed: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor, out: torch.Tensor) -> None:
    """(B, W) uint8, (B,) or (B, g) float32 -> writes out (B, W, 2) of its dtype; the float32 product rounded once."""
    p = packed.to(torch.int32)
    a = _row_scales(absmax, packed.shape[1])
    out.copy_(torch.stack([_select16(p >> 4, table) * a, _select16(p & 15, table) * a], dim=-1))


def _scale(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) float32 -> scaled (B, S) in [-1, 1], absmax (B,); as reference.scale_to_unit."""
    absmax = x.abs().amax(dim=1)
    inv = 1.0 / absmax.clamp(min=_TINY)
    return (x * inv[:, None]).clamp(-1, 1), absmax


def _quant_4bit(x: torch.Tensor, midpoints: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) float32 -> packed (B, S / 2) uint8, absmax (B,).

    The storage code is order[#{midpoints < x}] = steps[0] + sum_i [x > midpoints[i]] * steps[i + 1]
    (steps: order[0], then order[i + 1] - order[i]), exact because the passed comparisons form a prefix.
    """
    scaled, absmax = _scale(x)
    code = torch.zeros_like(scaled, dtype=torch.int32) + steps[0]
    for i in range(15):
        code = code + torch.where(scaled > midpoints[i], steps[i + 1], 0)
    pairs = code.view(code.shape[0], -1, 2)
    return ((pairs[..., 0] << 4) | pairs[..., 1]).to(torch.uint8), absmax


def _quant_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) float32 -> int8 codes (B, S), absmax (B,); as reference.quantize_int8."""
    scaled, absmax = _scale(x)
    return torch.round(scaled * codebooks.INT8_LEVELS).to(torch.int8), absmax


def _dequant_int8(q: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """(B, S) int8, (B,), (256,) q/127 table -> (B, S) out_dtype."""
    return (table[q.to(torch.int32) + 128] * absmax[:, None]).to(out_dtype)


def _quant_grid(x: torch.Tensor, enc: torch.Tensor, midpoints: torch.Tensor, ties_up: torch.Tensor, order: torch.Tensor,
                log2_codes: int, pack: bool) -> torch.Tensor:
    """(B, S) float32, (B,) enc -> codes of x * enc on a minifloat grid: (B, S) uint8, or (B, S / 2) packed.

    The sorted position by binary search over the midpoints, as the Triton kernel: the positions i with
    y > mid[i] or (y == mid[i] and ties_up[i]) are a prefix (`minifloat.round_to_grid`).
    """
    y = x * enc[:, None]
    position = torch.zeros_like(y, dtype=torch.int64)
    for level in range(log2_codes):
        step = 1 << (log2_codes - 1 - level)
        probe = position + (step - 1)
        mid = midpoints[probe]
        up = (y > mid) | ((y == mid) & (ties_up[probe] != 0))
        position = torch.where(up, position + step, position)
    codes = order[position].to(torch.int32)
    if not pack:
        return codes.to(torch.uint8)
    pairs = codes.view(codes.shape[0], -1, 2)
    return ((pairs[..., 0] << 4) | pairs[..., 1]).to(torch.uint8)


_RECOMPILE_LIMIT = 64
_MIN_ROW_ELEMENTS = 32  # elements per compiled dequantize row at least (`_row_scales`)


class _Compiled:
    """A function compiled on first use; after a failure, `None` and callers use the reference."""

    def __init__(self, fn):
        self._fn = fn
        self._compiled = None
        self.broken = False

    def __call__(self, *args):
        """The compiled function's result (True when it returns None), or None when unavailable."""
        if self.broken:
            return None
        try:
            if self._compiled is None:
                self._compiled = torch.compile(self._fn, dynamic=True, fullgraph=True)
            # one graph per dtype combination (input, output, compute): more than dynamo's default 8
            with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT, accumulated_recompile_limit=4 * _RECOMPILE_LIMIT):
                result = self._compiled(*args)
            return True if result is None else result
        except Exception as err:  # noqa: BLE001 - any compiler/toolchain failure falls back to the reference
            logger.warning("qlora fast CPU path unavailable (%s: %s); using the reference", type(err).__name__, err)
            self.broken = True
            return None


_DEQUANT_BF16 = _Compiled(_dequant_bf16_pairs)
_DEQUANT = _Compiled(_dequant_pairs)
_QUANT_4BIT = _Compiled(_quant_4bit)
_QUANT_INT8 = _Compiled(_quant_int8)
_DEQUANT_INT8 = _Compiled(_dequant_int8)
_QUANT_GRID = _Compiled(_quant_grid)


def _steps(order: torch.Tensor) -> torch.Tensor:
    o = order.to(torch.int32)
    return torch.cat([o[:1], o[1:] - o[:-1]])


def quantize_4bit(flat: torch.Tensor, block_size: int, midpoints: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `reference.quantize_4bit`: (n,) float32 -> packed ((n + 1) // 2, 1) uint8, absmax."""
    n = flat.numel()
    n_full = n // block_size * block_size
    if n_full == 0:
        return reference.quantize_4bit(flat, block_size, midpoints, order)
    flat = flat.contiguous()
    res = _QUANT_4BIT(flat[:n_full].view(-1, block_size), midpoints.contiguous(), _steps(order))
    if res is None:
        return reference.quantize_4bit(flat, block_size, midpoints, order)
    packed, absmax = res
    if n_full == n:
        return packed.view(-1, 1), absmax
    tail_packed, tail_absmax = reference.quantize_4bit(flat[n_full:], block_size, midpoints, order)
    return torch.cat([packed.view(-1, 1), tail_packed]), torch.cat([absmax, tail_absmax])


def dequantize_4bit(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    code: torch.Tensor,
    block_size: int,
    n: int,
    out_dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`reference.dequantize_4bit(...).to(out_dtype)`: (n,) tensor of `out_dtype`.

    Args:
        out: optional tensor of `n` elements of `out_dtype`, written in place; returned flattened when
            contiguous (else, or for bf16 at an odd storage offset, filled with a copy and returned as is).
    """
    # bf16 pairs are written as int32: a bf16 `out` starting at an odd element offset cannot be viewed so
    if out is not None and (not out.is_contiguous() or (out_dtype == torch.bfloat16 and out.storage_offset() % 2)):
        return out.copy_(dequantize_4bit(packed, absmax, code, block_size, n, out_dtype).view(out.shape))
    dst = empty_output(n, out_dtype) if out is None else out.view(-1)
    per_row = max(1, _MIN_ROW_ELEMENTS // block_size)  # blocks per compiled row (see `_row_scales`)
    n_full = n // (block_size * per_row) * (block_size * per_row)
    if n_full:
        rows = packed.view(-1)[: n_full // 2].view(-1, per_row * block_size // 2)  # (B, per_row * block_size / 2)
        scales = absmax[: rows.shape[0] * per_row]
        scales = scales if per_row == 1 else scales.view(-1, per_row)
        head = dst[:n_full]
        if out_dtype == torch.bfloat16:
            ok = _DEQUANT_BF16(rows, scales, code, head.view(torch.int32).view(rows.shape))
        else:
            ok = _DEQUANT(rows, scales, code, head.view(*rows.shape, 2))
        if not ok:
            return dst.copy_(reference.dequantize_4bit(packed, absmax, code, block_size, n))
    if n_full < n:
        tail = packed.view(-1)[n_full // 2 :].view(-1, 1)
        dst[n_full:] = reference.dequantize_4bit(tail, absmax[n_full // block_size :], code, block_size, n - n_full)
    return dst


def quantize_int8(flat: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `reference.quantize_int8`."""
    n = flat.numel()
    n_full = n // block_size * block_size
    if n_full == 0:
        return reference.quantize_int8(flat, block_size)
    flat = flat.contiguous()
    res = _QUANT_INT8(flat[:n_full].view(-1, block_size))
    if res is None:
        return reference.quantize_int8(flat, block_size)
    codes, absmax = res
    if n_full == n:
        return codes.view(-1), absmax
    tail_codes, tail_absmax = reference.quantize_int8(flat[n_full:], block_size)
    return torch.cat([codes.view(-1), tail_codes]), torch.cat([absmax, tail_absmax])


def dequantize_int8(codes: torch.Tensor, absmax: torch.Tensor, block_size: int, out_dtype: torch.dtype) -> torch.Tensor:
    """`reference.dequantize_int8(...).to(out_dtype)`: (n,) tensor of `out_dtype`."""
    return dequantize_8bit(codes, absmax, reference._int8_code(codes.device), block_size, out_dtype)


def dequantize_8bit(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block_size: int, out_dtype: torch.dtype) -> torch.Tensor:
    """`reference.dequantize_8bit(...).to(out_dtype)` (Int8, FP8): (n,) tensor of `out_dtype`."""
    n = codes.numel()
    n_full = n // block_size * block_size
    if n_full == 0:
        return reference.dequantize_8bit(codes, absmax, code, block_size).to(out_dtype)
    res = _DEQUANT_INT8(codes[:n_full].view(-1, block_size), absmax[: n_full // block_size], code.contiguous(), out_dtype)
    if res is None:
        return reference.dequantize_8bit(codes, absmax, code, block_size).to(out_dtype)
    if n_full == n:
        return res.view(-1)
    tail = reference.dequantize_8bit(codes[n_full:], absmax[n_full // block_size :], code, block_size).to(out_dtype)
    return torch.cat([res.view(-1), tail])


def quantize_to_grid(flat: torch.Tensor, enc: torch.Tensor, block_size: int, table: minifloat.RoundingTable, bits: int) -> torch.Tensor:
    """Same contract as `reference.quantize_to_grid`: 4-bit packed ((n + 1) // 2, 1) uint8, or 8-bit (n,) int8."""
    n = flat.numel()
    n_full = n // block_size * block_size
    if n_full == 0:
        return reference.quantize_to_grid(flat, enc, block_size, table, bits)
    flat = flat.contiguous()
    log2_codes = table.midpoints.numel().bit_length() - 1
    res = _QUANT_GRID(flat[:n_full].view(-1, block_size), enc[: n_full // block_size].contiguous(), table.midpoints,
                      table.ties_up, table.order, log2_codes, bits == 4)  # fmt: skip
    if res is None:
        return reference.quantize_to_grid(flat, enc, block_size, table, bits)
    head = res.view(-1, 1) if bits == 4 else res.view(-1).view(torch.int8)
    if n_full == n:
        return head
    tail = reference.quantize_to_grid(flat[n_full:], enc[n_full // block_size :], block_size, table, bits)
    return torch.cat([head, tail])
