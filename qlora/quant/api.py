"""Public entry points: `quantize` and `dequantize`, for every data type and backend.

The wrappers check the input, pick the implementation and assemble the typed state:
- `Backend.REFERENCE`: the pure-PyTorch reference (`reference.py`), any device;
- `Backend.TRITON`: the Triton kernels (`qlora.kernels`); CUDA tensors, or CPU tensors when Triton's
  interpreter is active (tests set TRITON_INTERPRET=1 before importing qlora);
- `Backend.AUTO` (default): Triton on CUDA, the fast CPU path (`cpu.py`) on CPU.
All backends produce bit-identical codes and absmax, and identical float32 dequantized values.
"""

from __future__ import annotations

import enum
import math

import torch

from qlora.quant import cpu, minifloat, reference, scales
from qlora.quant.dtypes import NESTED_BLOCK_SIZE, DataType, DoubleQuant, ScaleFormat, codebook, nearest_code_search, validate_block_size
from qlora.quant.state import CodedScales, NestedAbsmax, QuantizedTensor

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# Note: NaN and Inf
# The project's rule for every data type: an input with NaN or +-Inf is refused (ValueError naming how
# many and where), never encoded: no format's NaN or Inf code is ever written (FP8 E4M3 has NaN, E5M2
# Inf and NaN, E8M0 NaN). Finite values beyond a format's range saturate to its largest finite value
# (`qlora.quant.minifloat`, `# Note: rounding to a grid`); magnitudes the float32 computation overflows
# on are refused (`# Note: magnitude limit`).

# Note: magnitude limit
# Quantization computes in float32: a float64 value beyond float32's largest finite value (~3.4e38)
# becomes Inf there and its block NaN, so it is refused (BF16 storage: bfloat16's largest value). Double
# quantization also sums the n_blocks absmax values (their mean is the offset) and adds the offset back
# when dequantizing: |value| <= float32 max / (2 * n_blocks) keeps every such sum finite.


class Backend(enum.Enum):
    AUTO = "auto"
    REFERENCE = "reference"
    TRITON = "triton"
    CPU = "cpu"  # the fast CPU path; bit-identical to REFERENCE


def _check_input(tensor: torch.Tensor) -> float:
    """Refuses non-tensors, non-floating dtypes, empty tensors and NaN/Inf; returns the largest |value|."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"can only quantize floating tensors (float32, float16, bfloat16, float64), got dtype {tensor.dtype}"
        )
    if tensor.numel() == 0:
        raise ValueError(f"cannot quantize an empty tensor (shape {tuple(tensor.shape)})")
    peak = float(torch.linalg.vector_norm(tensor.detach(), float("inf")))  # max |value|; NaN if any is NaN
    if not math.isfinite(peak):
        finite = torch.isfinite(tensor)
        bad = (~finite).nonzero()[0].tolist()
        raise ValueError(
            f"cannot quantize a tensor with NaN or Inf: {int((~finite).sum())} non-finite value(s), "
            f"the first at index {bad} = {tensor[tuple(bad)].item()}"
        )
    return peak


def _check_magnitude(peak: float, tensor: torch.Tensor, dtype: DataType, block_size: int, double_quant: bool) -> None:
    """Refuses a largest |value| that the computation overflows on (`# Note: magnitude limit`)."""
    if dtype is DataType.BF16:
        allowed, why = torch.finfo(torch.bfloat16).max, "bfloat16 storage"
    elif double_quant:
        n_blocks = math.ceil(tensor.numel() / block_size)
        allowed = torch.finfo(torch.float32).max / (2 * n_blocks)
        why = f"float32 computation with double_quant over {n_blocks} blocks: float32 max / (2 * n_blocks)"
    else:
        allowed, why = torch.finfo(torch.float32).max, "float32 computation: float32 max"
    if peak > allowed:
        raise ValueError(
            f"cannot quantize a {tensor.dtype} tensor whose largest magnitude is {peak:.6g}: {dtype.value} allows at "
            f"most {allowed:.6g} ({why}); beyond it the values overflow to Inf and quantize to NaN"
        )


def _resolve(backend: Backend, device: torch.device) -> Backend:
    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be a qlora Backend, got {backend!r}")
    if backend is Backend.AUTO:
        return Backend.TRITON if device.type == "cuda" else Backend.CPU
    if backend is Backend.CPU and device.type != "cpu":
        raise ValueError(f"Backend.CPU needs a CPU tensor, got a {device.type} tensor")
    if backend is Backend.TRITON and device.type != "cuda":
        from qlora.kernels import interpreter_active

        if not interpreter_active():
            raise RuntimeError(
                f"Backend.TRITON on a {device.type} tensor needs Triton's interpreter: set TRITON_INTERPRET=1 "
                "before importing qlora, or use Backend.AUTO / Backend.REFERENCE"
            )
    return backend


def quantize(
    tensor: torch.Tensor,
    dtype: DataType | str,
    block_size: int | None = None,
    double_quant: bool | DoubleQuant = False,
    *,
    backend: Backend = Backend.AUTO,
) -> QuantizedTensor:
    """Quantizes `tensor` blockwise to `dtype`.

    Args:
        tensor: any shape, float32/float16/bfloat16/float64, finite, non-empty; flattened row-major
            (non-contiguous inputs are read in logical order).
        dtype: a `DataType` (strings such as "nf4" are parsed).
        block_size: elements per block scale: a power of two from 32 to 4096, or the format's fixed size
            (NVFP4 16, MXFP4 32, AF4 64); None: 64, or the fixed size.
        double_quant: quantize the float32 absmax constants again to 8 bits in blocks of 256: True or
            DoubleQuant.DYNAMIC (paper §3), DoubleQuant.E4M4; not for NVFP4 / MXFP4 (8-bit scales already).
        backend: which implementation runs (see the module docstring).

    Returns:
        QuantizedTensor whose codes and absmax equal bitsandbytes' `quantize_4bit` for NF4/FP4.

    Raises:
        TypeError: non-floating input. ValueError: empty input, NaN/Inf (`# Note: NaN and Inf`), a
        magnitude the float32 computation overflows on (`# Note: magnitude limit`), bad block size, data
        type or double quantization.
    """
    dtype = DataType.parse(dtype)
    formats = {d.value for d in DoubleQuant}
    if not isinstance(double_quant, (bool, DoubleQuant)) and not (isinstance(double_quant, str) and double_quant.lower() in formats):
        from qlora.checks import ConfigError  # a string such as "no" is truthy: refuse it, as QuantConfig does

        raise ConfigError("double_quant", double_quant, "true or false (a boolean, not a string or number), or a double "
                          f"quantization format ({', '.join(sorted(formats))})")  # fmt: skip
    dq = DoubleQuant.parse(double_quant)
    peak = _check_input(tensor)
    shape, orig_dtype = tensor.shape, tensor.dtype
    block_size = dtype.default_block_size if block_size is None else block_size
    if dtype is DataType.BF16:
        if dq is not None:
            raise ValueError("double_quant=True needs a quantized data type, got bf16 (identity storage)")
        _check_magnitude(peak, tensor, dtype, block_size, False)
        return QuantizedTensor(tensor.detach().to(torch.bfloat16).contiguous().clone(), dtype, shape, orig_dtype, block_size)
    validate_block_size(block_size, dtype)
    if dq is not None and not dtype.allows_double_quant:
        raise ValueError(f"double_quant applies to float32 absmax; {dtype.value} stores one {dtype.scale_format.value} byte per "
                         f"block already, got double_quant={double_quant!r}")  # fmt: skip
    _check_magnitude(peak, tensor, dtype, block_size, dq is not None)
    flat = tensor.detach().reshape(-1).to(torch.float32)
    backend = _resolve(backend, flat.device)

    if dtype.grid is not None:
        data, absmax, coded = _quantize_minifloat(flat, dtype, block_size, backend)
        if coded is not None:
            return QuantizedTensor(data, dtype, shape, orig_dtype, block_size, scales=coded)
    elif backend is Backend.TRITON:
        from qlora.kernels import quantize_blockwise

        code = None if dtype is DataType.INT8 else nearest_code_search(dtype, flat.device)
        data, absmax = quantize_blockwise(flat, block_size, code)
    elif dtype is DataType.INT8:
        data, absmax = (cpu.quantize_int8 if backend is Backend.CPU else reference.quantize_int8)(flat, block_size)
    elif backend is Backend.CPU:
        data, absmax = cpu.quantize_4bit(flat, block_size, *nearest_code_search(dtype, flat.device))
    else:
        data, absmax = reference.quantize_4bit(flat, block_size, *nearest_code_search(dtype, flat.device))

    if dq is None:
        return QuantizedTensor(data, dtype, shape, orig_dtype, block_size, absmax=absmax)
    return QuantizedTensor(data, dtype, shape, orig_dtype, block_size, nested=double_quantize(absmax, dq))


def double_quantize(absmax: torch.Tensor, dq: DoubleQuant) -> NestedAbsmax:
    """The float32 absmax vector double-quantized (`DoubleQuant`), in blocks of 256, on its device."""
    if dq is DoubleQuant.DYNAMIC:
        codes, absmax2, offset = reference.double_quantize(absmax, NESTED_BLOCK_SIZE)
        code = reference.dynamic_map(absmax.device)
    else:
        codes, absmax2, offset = reference.double_quantize_e4m4(absmax, NESTED_BLOCK_SIZE)
        code = minifloat.values(minifloat.E4M4).to(absmax.device)
    return NestedAbsmax(codes, absmax2, offset, code, NESTED_BLOCK_SIZE, dq)


def _quantize_minifloat(flat: torch.Tensor, dtype: DataType, block_size: int, backend: Backend):
    """FP8 / NVFP4 / MXFP4: (codes, float32 absmax or None, CodedScales or None); see `qlora.quant.scales`."""
    grid = dtype.grid
    absmax = coded = None
    if dtype.scale_format is ScaleFormat.FP32:
        absmax, enc = scales.absmax_scales(flat, block_size, grid.max)
    elif dtype.scale_format is ScaleFormat.E8M0:
        codes, enc = scales.e8m0_scales(flat, block_size, grid.emax)
        coded = CodedScales(codes, ScaleFormat.E8M0)
    else:
        g_dec, multiplier = scales.nvfp4_tensor_scale(flat.abs().amax())
        codes, enc = scales.e4m3_scales(flat, block_size, g_dec, multiplier)
        coded = CodedScales(codes, ScaleFormat.E4M3, g_dec)
    table = minifloat.rounding_table(grid, flat.device)
    if backend is Backend.TRITON:
        from qlora.kernels import quantize_to_grid

        data = quantize_to_grid(flat, enc, block_size, (table.midpoints, table.ties_up, table.order), bits=dtype.bits)
    else:
        data = (cpu if backend is Backend.CPU else reference).quantize_to_grid(flat, enc, block_size, table, dtype.bits)
    return data, absmax, coded


def block_absmax(qt: QuantizedTensor) -> torch.Tensor:
    """Each block's float32 scale of `qt`: the absmax, double-dequantized when nested, decoded when coded."""
    if qt.scales is not None:
        s = qt.scales
        return scales.scale_map(s.format, s.tensor_scale, s.codes.device)[s.codes.long()]
    if qt.nested is None:
        return qt.absmax
    n = qt.nested
    return reference.double_dequantize(n.codes, n.absmax, n.offset, n.code, n.block_size)


def dequantize(
    qt: QuantizedTensor,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    out: torch.Tensor | None = None,
    backend: Backend = Backend.AUTO,
) -> torch.Tensor:
    """Dequantizes `qt` to a tensor of `qt.shape`.

    Values are computed in float32 (code * absmax) and rounded once to `out_dtype`.

    Args:
        qt: a QuantizedTensor.
        out_dtype: float32, float16 or bfloat16 (float64 too, via the reference: for gradcheck).
        out: optional preallocated output of shape `qt.shape` and dtype `out_dtype`, any strides and
            storage offset; filled in place and returned.
        backend: which implementation runs.

    Raises:
        TypeError: `qt` is not a QuantizedTensor or `out_dtype` is not floating.
        ValueError: `out` has the wrong shape, dtype or device.
    """
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"expected a QuantizedTensor, got {type(qt).__name__}")
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"out_dtype must be float32, float16, bfloat16 or float64, got {out_dtype}")
    if out is not None:
        if tuple(out.shape) != tuple(qt.shape) or out.dtype != out_dtype or out.device != qt.device:
            raise ValueError(
                f"out must have shape {tuple(qt.shape)}, dtype {out_dtype} and device {qt.device}; "
                f"got shape {tuple(out.shape)}, dtype {out.dtype}, device {out.device}"
            )
    if qt.dtype is DataType.BF16:
        result = qt.data.to(out_dtype)
        return result if out is None else out.copy_(result)

    backend = _resolve(backend, qt.device)
    if out_dtype == torch.float64:
        backend = Backend.REFERENCE  # values are fp32 products; float64 only widens them
    if backend is Backend.TRITON:
        from qlora.kernels import dequantize_blockwise

        n, c = qt.nested, qt.scales
        extra = {}
        if n is not None:
            extra = dict(nested_codes=n.codes, nested_absmax=n.absmax, nested_offset=n.offset, nested_code=n.code,
                         nested_block_size=n.block_size)  # fmt: skip
        elif c is not None:
            extra = dict(scale_codes=c.codes, scale_map=scales.scale_map(c.format, c.tensor_scale, qt.device))
        result = dequantize_blockwise(
            qt.data, qt.absmax, codebook(qt.dtype, qt.device), numel=qt.numel, block_size=qt.block_size,
            bits=4 if qt.dtype.is_4bit else 8, out_dtype=out_dtype, out=out, **extra,
        )  # fmt: skip
        return result.view(qt.shape) if out is None else out
    absmax = block_absmax(qt)
    if backend is Backend.CPU and qt.dtype.is_4bit:
        result = cpu.dequantize_4bit(qt.data, absmax, codebook(qt.dtype), qt.block_size, qt.numel, out_dtype, out=out)
        return result.view(qt.shape) if out is None else out  # the fast path wrote into `out`
    if backend is Backend.CPU:  # INT8, FP8
        result = cpu.dequantize_8bit(qt.data, absmax, codebook(qt.dtype), qt.block_size, out_dtype).view(qt.shape)
        return result if out is None else out.copy_(result)
    if not qt.dtype.is_4bit:
        values = reference.dequantize_8bit(qt.data, absmax, codebook(qt.dtype, qt.device), qt.block_size)
    else:
        values = reference.dequantize_4bit(qt.data, absmax, codebook(qt.dtype, qt.device), qt.block_size, qt.numel)
    result = values.view(qt.shape).to(out_dtype)
    return result if out is None else out.copy_(result)
