"""`QLoRALinear`: a frozen quantized linear layer with a LoRA adapter (QLoRA, paper Eq. 5).

One module serves every row of the paper's ablation: any `DataType` for the frozen weight (BF16 is
identity storage, giving plain LoRA on a 16-bit base), with or without an adapter (rank 0: inference).
The adapter comes from `qlora.nn.lora` (A Kaiming-uniform a = sqrt(5), B zeros: `# Note: LoRA init`),
scaling = alpha / rank. The maths of forward and backward is `qlora.nn.functional`.

# Note: sharded storage
The frozen quantized state is stored so that FSDP2 (`torch.distributed.fsdp.fully_shard`, which shards
parameters along dim 0 and leaves buffers alone) can split it by output rows, and so that no
mixed-precision policy or `module.to(dtype)` can change it (they cast floating tensors only):
- `qweight`: a frozen Parameter of codes, one row per output feature: uint8 (out, in / 2) for the 4-bit
  types (two codes per byte, the bitsandbytes nibble order), int8 (out, in) for INT8, and for BF16 the
  bfloat16 bits as int16 (out, in);
- `absmax` (without double quantization): a frozen Parameter holding the float32 block constants as
  their int32 bit pattern, (out, in / block_size); `nested_codes` (with it): the uint8 codes of those
  constants, (out, in / block_size);
- `nested_absmax`, `nested_offset`, `nested_code` (double quantization's second level, 1/256 of the
  constants and a 256-entry map): int32 bit patterns in buffers, replicated on every rank: their blocks
  of 256 constants do not follow row boundaries;
- NVFP4 / MXFP4: `scale_codes`, the uint8 E4M3 / E8M0 byte of each block, (out, in / block_size), a
  frozen Parameter like `absmax`; NVFP4's per-tensor float32 scale as an int32 bit pattern in the buffer
  `tensor_scale`.
A row shard then holds whole quantization blocks whenever in_features % block_size == 0 (for any row
split); such a layer is `row_shardable`. Otherwise blocks straddle rows: the state stays in the flat
layout ((numel + 1) / 2, 1) / (n_blocks,) and `qlora.distributed.shard_model` replicates that layer's
quantized parameters, with a warning naming it. `weight` returns the QuantizedTensor in the flat
bitsandbytes layout (views, no copy), so saving and export are byte-compatible; `forward` reads the
state from the module's own attributes on every call (FSDP2 swaps in the gathered tensors there),
never from references kept earlier.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from qlora.config import ComputeDtype, LoRAConfig, QuantConfig
from qlora.nn.functional import QuantizedLoRAFunction
from qlora.nn.lora import lora_delta, lora_parameters, reset_lora_parameters
from qlora.quant.api import dequantize, quantize
from qlora.quant.dtypes import DataType
from qlora.quant.state import CodedScales, NestedAbsmax, QuantizedTensor


class QLoRALinear(nn.Module):
    """y = x deq(W)ᵀ + b + (alpha / r) · dropout(x) Aᵀ Bᵀ.

    Args:
        weight: the frozen quantized weight, shape (out_features, in_features).
        bias: optional frozen bias (out_features,).
        lora: adapter settings (rank 0: no adapter).
        compute_dtype: dtype of the matmuls (AUTO: bf16 on CUDA, fp32 on CPU).
    """

    def __init__(self, weight: QuantizedTensor, bias: torch.Tensor | None = None, *, lora: LoRAConfig | None = None,
                 compute_dtype: ComputeDtype = ComputeDtype.AUTO) -> None:  # fmt: skip
        super().__init__()
        if not isinstance(weight, QuantizedTensor):
            raise TypeError(f"weight must be a QuantizedTensor, got {type(weight).__name__}")
        if len(weight.shape) != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        self.compute_dtype = compute_dtype
        self._meta = (weight.dtype, weight.shape, weight.orig_dtype, weight.block_size)
        out_f, in_f = self.out_features, self.in_features
        # see `# Note: sharded storage`
        self.row_shardable = weight.dtype is DataType.BF16 or in_f % weight.block_size == 0
        if weight.dtype is DataType.BF16:
            codes = weight.data.view(torch.int16)
        elif self.row_shardable:
            codes = weight.data.reshape(out_f, in_f // 2 if weight.dtype.is_4bit else in_f)
        else:
            codes = weight.data
        blocks = (out_f, in_f // weight.block_size) if self.row_shardable else (-1,)
        nested, coded = weight.nested, weight.scales
        absmax = None if weight.absmax is None else weight.absmax.view(torch.int32).reshape(blocks)
        nested_codes = None if nested is None else nested.codes.reshape(blocks)
        scale_codes = None if coded is None else coded.codes.reshape(blocks)
        for name, value in (("qweight", codes), ("absmax", absmax), ("nested_codes", nested_codes), ("scale_codes", scale_codes)):
            self.register_parameter(name, None if value is None else nn.Parameter(value, requires_grad=False))
        self._nested_block = None if nested is None else nested.block_size
        self._nested_format = None if nested is None else nested.format
        self._scale_format = None if coded is None else coded.format
        tensor_scale = None if coded is None or coded.tensor_scale is None else coded.tensor_scale.reshape(()).view(torch.int32)
        self.register_buffer("tensor_scale", tensor_scale)
        for name, value in (("nested_absmax", None if nested is None else nested.absmax),
                            ("nested_offset", None if nested is None else nested.offset),
                            ("nested_code", None if nested is None else nested.code)):  # fmt: skip
            self.register_buffer(name, None if value is None else value.view(torch.int32))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.lora_config = lora or LoRAConfig(rank=0)
        r = self.lora_config.rank
        if r:
            self.lora_a, self.lora_b = lora_parameters(self.in_features, self.out_features, r, device=weight.device)
            self.dropout = nn.Dropout(self.lora_config.dropout) if self.lora_config.dropout else nn.Identity()
        else:
            self.lora_a = self.lora_b = None
            self.dropout = nn.Identity()
        self.scaling = self.lora_config.scaling
        self.from_conv1d = False

    @classmethod
    def from_linear(cls, linear: nn.Module, quant: QuantConfig, lora: LoRAConfig | None = None, *, transposed: bool = False) -> "QLoRALinear":
        """Quantizes an nn.Linear (or, with transposed=True, a GPT-2 Conv1D whose weight is (in, out))."""
        w = linear.weight.detach()
        w = w.t() if transposed else w
        layer = cls(quantize(w, quant.dtype, quant.block_size, quant.double_quant_mode or False), getattr(linear, "bias", None),
                    lora=lora, compute_dtype=quant.compute_dtype)  # fmt: skip
        layer.from_conv1d = transposed  # merged export gives back the original module type
        return layer

    @property
    def weight(self) -> QuantizedTensor:
        """The frozen weight as a QuantizedTensor in the flat bitsandbytes layout (views of the module's
        current tensors, rebuilt on every access: it follows .to() and FSDP2's gather)."""
        dtype, shape, orig_dtype, block = self._meta
        if dtype is DataType.BF16:
            return QuantizedTensor(self.qweight.view(torch.bfloat16), dtype, shape, orig_dtype, block)
        data = self.qweight.reshape(-1, 1) if dtype.is_4bit else self.qweight.reshape(-1)
        nested = None
        if self.nested_codes is not None:
            nested = NestedAbsmax(self.nested_codes.reshape(-1), self.nested_absmax.view(torch.float32),
                                  self.nested_offset.view(torch.float32), self.nested_code.view(torch.float32),
                                  self._nested_block, self._nested_format)  # fmt: skip
        coded = None
        if self.scale_codes is not None:
            ts = None if self.tensor_scale is None else self.tensor_scale.view(torch.float32)
            coded = CodedScales(self.scale_codes.reshape(-1), self._scale_format, ts)
        absmax = None if self.absmax is None else self.absmax.reshape(-1).view(torch.float32)
        return QuantizedTensor(data, dtype, shape, orig_dtype, block, absmax=absmax, nested=nested, scales=coded)

    def quantized_parameters(self) -> list[nn.Parameter]:
        """The frozen Parameters of the quantized state (codes and first-level block constants), the
        tensors FSDP2 shards by rows when the layer is `row_shardable`."""
        return [p for p in (self.qweight, self.absmax, self.nested_codes, self.scale_codes) if p is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cd = self.compute_dtype.resolve(x.device)
        x_lora = self.dropout(x) if self.lora_a is not None else None
        return QuantizedLoRAFunction.apply(x, x_lora, self.lora_a, self.lora_b, self.bias, self.scaling, self.weight, cd)

    def adapter_params(self) -> list[nn.Parameter]:
        return [] if self.lora_a is None else [self.lora_a, self.lora_b]

    def reset_adapter(self, generator: torch.Generator | None = None) -> None:
        """A fresh adapter (B = 0: the layer computes the quantized base alone again); A drawn from
        `generator` (default: the global RNG)."""
        if self.lora_a is not None:
            if generator is not None and self.lora_a.device.type != "cpu":  # a CPU generator draws on the CPU
                a = torch.empty_like(self.lora_a, device="cpu")
                reset_lora_parameters(a, self.lora_b, generator)
                with torch.no_grad():
                    self.lora_a.copy_(a)
            else:
                reset_lora_parameters(self.lora_a, self.lora_b, generator)

    def lora_delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """s · B A (out_features, in_features)."""
        if self.lora_a is None:
            return torch.zeros(self.out_features, self.in_features, dtype=dtype, device=self.qweight.device)
        return lora_delta(self.lora_a, self.lora_b, self.scaling, dtype)

    def merge(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """The dense merged weight deq(W) + s·B·A for export (computed in fp32, rounded once)."""
        return (dequantize(self.weight, torch.float32) + self.lora_delta(torch.float32)).to(dtype)

    def unmerge(self, merged: torch.Tensor) -> torch.Tensor:
        """The base weight back from a merged one: merged - s·B·A (fp32)."""
        return merged.to(torch.float32) - self.lora_delta(torch.float32)

    def merge_requantized(self) -> tuple[QuantizedTensor, float]:
        """Merges and re-quantizes to the base's data type — lossy: warns with the relative error.

        Returns:
            (the new quantized weight, ||deq(new) - merged|| / ||merged||).
        """
        merged = self.merge(torch.float32)
        dtype, _, _, block = self._meta
        q = quantize(merged, dtype, block, self._nested_format or False)
        error = float((dequantize(q, torch.float32) - merged).norm() / merged.norm().clamp_min(1e-30))
        warnings.warn(f"re-quantizing a merged weight to {dtype.value} adds rounding error: relative {error:.3e}", stacklevel=2)
        return q, error

    def to_linear(self, dtype: torch.dtype = torch.bfloat16) -> nn.Linear:
        """A plain nn.Linear holding the merged weight (and bias)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, dtype=dtype, device=self.qweight.device)
        with torch.no_grad():
            out.weight.copy_(self.merge(dtype))
            if self.bias is not None:
                out.bias.copy_(self.bias.to(dtype))
        return out

    def storage_bytes(self) -> int:
        return self.weight.storage_bytes() + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())

    def extra_repr(self) -> str:
        dtype = self._meta[0].value + ("+dq" if self.nested_codes is not None else "")
        if self._nested_format is not None and self._nested_format.value != "dynamic":
            dtype += f"({self._nested_format.value})"
        return (f"in_features={self.in_features}, out_features={self.out_features}, dtype={dtype}, rank={self.lora_config.rank}, "
                f"shards={'rows' if self.row_shardable else 'replicated'}")
