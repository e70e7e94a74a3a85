"""Triton kernels. They take codebooks and scales as tensors and know no formats.

Kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1, which
Triton reads when `@triton.jit` runs, i.e. at import of these modules: whoever wants the interpreter
sets it before importing qlora; the library itself never reads the environment).
"""

from qlora.kernels.blockwise import dequantize_blockwise, interpreter_active, quantize_blockwise, quantize_to_grid

__all__ = ["dequantize_blockwise", "interpreter_active", "quantize_blockwise", "quantize_to_grid"]
