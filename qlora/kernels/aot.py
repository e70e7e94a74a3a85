"""Ahead-of-time compilation of every kernel specialisation for a GPU target, on a machine without one.

Triton compiles for a named target without a driver (ttir -> ttgir -> llir -> ptx -> cubin, with the
ptxas that ships in its wheel). That proves what the interpreter cannot: the kernels build for sm_80 /
sm_90 in their real dtypes (bf16 included, which the interpreter computes in fp32), without register
spills, within the target's shared memory and register file, rounding fp32 -> bf16 to nearest-even,
with no fp64 instruction, and (for the bit-exact kernels) with no fused multiply-add and no
flush-to-zero.

A specialisation is what the JIT compiles for one launch: the kernel, its constexprs (dtype paths, block
and tile sizes: the same values the wrappers in this package choose) and how it specialises the runtime
arguments (`# Note: launch variants`). The kernels must be real `triton.jit` functions: this module
refuses to work under Triton's interpreter (TRITON_INTERPRET=1 at import), so tests run it in a
subprocess without that variable.

# Note: launch variants
Triton's JIT specialises each launch on its arguments: an integer equal to 1 becomes a constant, an
integer or pointer divisible by 16 gets a divisibility hint, an integer >= 2**31 is 64-bit. Each
specialisation is compiled in the variants that bound what the wrappers launch:
- ALIGNED: the common launch: every pointer 16-byte aligned, sizes multiples of 16, contiguous
  activations (unit strides become constants);
- RAGGED: nothing aligned, odd sizes, strided activations; blockwise kernels with 64-bit sizes (tensors
  of 2**31 elements or more);
- DECODE (fused matmul only): one token (M = 1 becomes a constant), the inference case.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import re
import subprocess
import tempfile
import time
from pathlib import Path

import triton

from qlora.kernels import blockwise, fused_matmul

# The quantization block sizes a QuantizedTensor may have (qlora.quant.dtypes.VALID_BLOCK_SIZES; a test
# checks they agree: this package imports nothing above it).
BLOCK_SIZES = tuple(2**k for k in range(5, 13))
# The block sizes of the 4-bit minifloat types with 8-bit block scales (DataType.NVFP4: 16, MXFP4: 32; a
# test checks them): their element-rounding and coded-scale paths, and NVFP4's 16 in the fused matmul.
CODED_BLOCK_SIZES = (16, 32)
# Output dtypes of the dequantize kernel and of the fused matmul (triton names).
FLOAT_TYPES = ("fp32", "fp16", "bf16")
NESTED_BLOCK = 256  # double quantization's block size (paper §3)


class Variant(enum.Enum):
    ALIGNED = "aligned"
    RAGGED = "ragged"
    DECODE = "decode"


@dataclasses.dataclass(frozen=True)
class Pointer:
    """A pointer argument: element type (triton name) and whether its address is 16-byte aligned."""

    dtype: str
    aligned: bool = True


@dataclasses.dataclass(frozen=True)
class Specialisation:
    """One compiled form of one kernel.

    Attributes:
        kernel: the kernel's function name in `KERNELS`.
        label: what it serves, for reports ("dequantize 4-bit dq -> bf16").
        variant: how the runtime arguments are specialised.
        args: the runtime arguments in order: a `Pointer` or an int value.
        constexprs: the constexpr arguments.
        options: compile options the wrapper passes (e.g. enable_fp_fusion).
        rounds_to: float types the kernel converts fp32 results to (checked for round-to-nearest-even).
        exact: the kernel must be bit-exact with the reference (no FMA contraction allowed).
    """

    kernel: str
    label: str
    variant: Variant
    args: tuple[tuple[str, Pointer | int], ...]
    constexprs: tuple[tuple[str, int | bool], ...]
    options: tuple[tuple[str, object], ...] = ()
    rounds_to: tuple[str, ...] = ()
    exact: bool = False
    bits: int = 4
    double_quant: bool = False
    coded_scales: bool = False
    in_dtype: str = "fp32"
    out_dtype: str = "fp32"
    direction: str = ""

    @property
    def block_size(self) -> int:
        return dict(self.constexprs)["QBLOCK"]


@dataclasses.dataclass(frozen=True)
class Target:
    """A GPU target and the limits a launch must fit (per block, opt-in shared memory as the driver reports)."""

    name: str
    arch: int
    shared_limit: int  # bytes of shared memory per block
    registers_per_block: int = 65536
    registers_per_thread: int = 255
    warp_size: int = 32

    def gpu_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", self.arch, self.warp_size)


# Opt-in shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin): A100 (sm_80) 163 KiB, H100 / H200
# (sm_90) 227 KiB; Triton refuses a launch that asks for more ("out of resource: shared memory").
TARGETS = (Target("sm_80", 80, 166912), Target("sm_90", 90, 232448))


def kernels() -> dict:
    """The kernels of this package by name (JIT functions; interpreted ones under TRITON_INTERPRET=1)."""
    return {
        "quantize_4bit": blockwise._quantize_4bit_kernel,
        "quantize_int8": blockwise._quantize_int8_kernel,
        "quantize_grid": blockwise._quantize_grid_kernel,
        "dequantize": blockwise._dequantize_kernel,
        "dequant_matmul": fused_matmul._dequant_matmul_kernel,
    }


def _blockwise_sizes(variant: Variant, block_size: int) -> tuple[int, int]:
    """(n_elements, n_blocks) of a launch in `variant`: 4096² elements, or 2**31 + 1 (64-bit, odd)."""
    n = 4096 * 4096 if variant is Variant.ALIGNED else 2**31 + 1
    return n, -(-n // block_size)


def quantize_specialisations(variants=(Variant.ALIGNED, Variant.RAGGED)) -> list[Specialisation]:
    """The quantize kernels: one 4-bit kernel for every codebook (NF4, FP4, Int4...), one Int8 kernel."""
    specs = []
    for variant, block, four_bit in itertools.product(variants, BLOCK_SIZES, (True, False)):
        aligned = variant is Variant.ALIGNED
        n, n_blocks = _blockwise_sizes(variant, block)
        x = ("x_ptr", Pointer("fp32", aligned))
        if four_bit:
            args = (x, ("packed_ptr", Pointer("u8", aligned)), ("absmax_ptr", Pointer("fp32", aligned)),
                    ("midpoints_ptr", Pointer("fp32", aligned)), ("order_ptr", Pointer("u8", aligned)))  # fmt: skip
        else:
            args = (x, ("q_ptr", Pointer("i8", aligned)), ("absmax_ptr", Pointer("fp32", aligned)))
        specs.append(Specialisation(
            kernel="quantize_4bit" if four_bit else "quantize_int8",
            label=f"quantize {'4-bit (every codebook)' if four_bit else 'int8'} block {block}",
            variant=variant,
            args=args + (("n_elements", n), ("n_blocks", n_blocks)),
            constexprs=(("QBLOCK", block), ("BLOCKS_PER_PROGRAM", blockwise.quantize_blocks_per_program(block))),
            options=tuple(blockwise.EXACT_OPTIONS.items()),
            exact=True,
            bits=4 if four_bit else 8,
        ))  # fmt: skip
    return specs + grid_specialisations(variants)


def grid_specialisations(variants=(Variant.ALIGNED, Variant.RAGGED)) -> list[Specialisation]:
    """The minifloat-grid rounding kernel: 8-bit codes (FP8) at every block size, 4-bit packed codes (NVFP4,
    MXFP4) at their fixed block sizes."""
    specs = []
    cases = [(block, 8) for block in BLOCK_SIZES] + [(block, 4) for block in CODED_BLOCK_SIZES]
    for variant, (block, bits) in itertools.product(variants, cases):
        aligned = variant is Variant.ALIGNED
        n, _ = _blockwise_sizes(variant, block)
        pointers = [("x_ptr", "fp32"), ("enc_ptr", "fp32"), ("codes_ptr", "u8"), ("midpoints_ptr", "fp32"), ("ties_ptr", "u8"),
                    ("order_ptr", "u8")]  # fmt: skip
        specs.append(Specialisation(
            kernel="quantize_grid",
            label=f"quantize to a minifloat grid, {bits}-bit codes block {block}",
            variant=variant,
            args=tuple((name, Pointer(t, aligned)) for name, t in pointers) + (("n_elements", n),),
            constexprs=(("QBLOCK", block), ("TILE", blockwise.QUANT_TILE), ("LOG2_CODES", bits), ("PACK", bits == 4)),
            options=tuple(blockwise.EXACT_OPTIONS.items()),
            exact=True,
            bits=bits,
        ))  # fmt: skip
    return specs


def dequantize_specialisations(variants=(Variant.ALIGNED, Variant.RAGGED), block_sizes=BLOCK_SIZES,
                               coded_block_sizes=CODED_BLOCK_SIZES) -> list[Specialisation]:  # fmt: skip
    """The dequantize kernel: 4-bit codebook / 8-bit paths, plain / double-quantized absmax, every output dtype;
    and 4-bit codes with 8-bit coded block scales (NVFP4, MXFP4) at their block sizes."""
    cases = [(block, four_bit, dq, False) for block in block_sizes for four_bit in (True, False) for dq in (False, True)]
    cases += [(block, True, False, True) for block in coded_block_sizes]
    specs = []
    for variant, (block, four_bit, dq, coded), out in itertools.product(variants, cases, FLOAT_TYPES):
        aligned = variant is Variant.ALIGNED
        n, _ = _blockwise_sizes(variant, block)
        pointers = [("q_ptr", "u8" if four_bit else "i8"), ("absmax_ptr", "fp32"), ("code_ptr", "fp32"), ("nested_codes_ptr", "u8"),
                    ("nested_absmax_ptr", "fp32"), ("nested_code_ptr", "fp32"), ("offset_ptr", "fp32"), ("out_ptr", out)]  # fmt: skip
        specs.append(Specialisation(
            kernel="dequantize",
            label=f"dequantize {'4-bit' if four_bit else 'int8'}{' dq' if dq else ''}{' coded scales' if coded else ''} -> {out} block {block}",
            variant=variant,
            args=tuple((name, Pointer(t, aligned)) for name, t in pointers) + (("n_elements", n),),
            constexprs=(("QBLOCK", block), ("NESTED_BLOCK", NESTED_BLOCK), ("TILE", blockwise.DEQUANT_TILE),
                        ("IS_4BIT", four_bit), ("DOUBLE_QUANT", dq), ("CODED_SCALES", coded)),  # fmt: skip
            options=tuple(blockwise.EXACT_OPTIONS.items()),
            rounds_to=() if out == "fp32" else (out,),
            exact=True,
            bits=4 if four_bit else 8,
            double_quant=dq,
            coded_scales=coded,
            out_dtype=out,
        ))  # fmt: skip
    return specs


def matmul_dtypes() -> list[tuple[str, str]]:
    """(activation, output) triton types the fused matmul can run: fp32 in -> fp32 compute and output;
    fp16 / bf16 in -> tensor-core dot, output in any float type (the wrapper's out_dtype)."""
    return [("fp32", "fp32")] + [(a, c) for a in ("bf16", "fp16") for c in FLOAT_TYPES]


def matmul_specialisations(variants=tuple(Variant), block_sizes=BLOCK_SIZES, dtypes=None,
                           extra_4bit_block_sizes=tuple(b for b in CODED_BLOCK_SIZES if b not in BLOCK_SIZES)) -> list[Specialisation]:  # fmt: skip
    """The fused dequant-matmul: forward (A @ W^T) and input gradient (dY @ W), 4-bit and 8-bit codes; NVFP4's
    block of 16 for 4-bit codes (its scales reach the kernel decoded to float32, `qlora.quant.block_absmax`)."""
    specs = []
    blocks = [(block, four_bit) for block in block_sizes for four_bit in (True, False)] + [(b, True) for b in extra_4bit_block_sizes]
    for variant, (block, four_bit), (a_t, c_t), forward in itertools.product(
        variants, blocks, dtypes or matmul_dtypes(), (True, False)
    ):
        aligned = variant is Variant.ALIGNED
        tiles = fused_matmul.DEFAULT_TILES
        n_out, k_in = (4096, 4096) if variant is not Variant.RAGGED else (33, 70)
        m = {Variant.ALIGNED: 16, Variant.DECODE: 1, Variant.RAGGED: 5}[variant]
        j, t = (n_out, k_in) if forward else (k_in, n_out)
        stride_am, stride_at = (t, 1) if variant is not Variant.RAGGED else (2 * t + 1, 2)  # RAGGED: a strided view
        w_stride_j, w_stride_t = (k_in, 1) if forward else (1, k_in)
        args = (("a_ptr", Pointer(a_t, aligned)), ("q_ptr", Pointer("u8" if four_bit else "i8", aligned)),
                ("absmax_ptr", Pointer("fp32", aligned)), ("code_ptr", Pointer("fp32", aligned)), ("c_ptr", Pointer(c_t)),
                ("M", m), ("J", j), ("T", t), ("N_CODES", 16 if four_bit else 256), ("stride_am", stride_am),
                ("stride_at", stride_at), ("stride_cm", j), ("stride_cj", 1), ("w_stride_j", w_stride_j), ("w_stride_t", w_stride_t))  # fmt: skip
        specs.append(Specialisation(
            kernel="dequant_matmul",
            label=f"fused {'forward' if forward else 'input-grad'} {'4-bit' if four_bit else 'int8'} {a_t} -> {c_t} block {block}",
            variant=variant,
            args=args,
            constexprs=(("QBLOCK", block), ("IS_4BIT", four_bit), ("FP32_COMPUTE", a_t == "fp32"),
                        ("BLOCK_M", tiles.block_m), ("BLOCK_J", tiles.block_j), ("BLOCK_T", tiles.block_t)),  # fmt: skip
            options=(("num_warps", tiles.num_warps),),
            rounds_to=tuple(sorted({a_t, c_t} - {"fp32"})),  # the 16-bit dot converts W to a's type, then C
            bits=4 if four_bit else 8,
            in_dtype=a_t,
            out_dtype=c_t,
            direction="forward" if forward else "input-grad",
        ))  # fmt: skip
    return specs


def all_specialisations() -> list[Specialisation]:
    """Every specialisation the wrappers of this package can launch, in every launch variant."""
    return quantize_specialisations() + dequantize_specialisations() + matmul_specialisations()


def ci_specialisations() -> list[Specialisation]:
    """The matrix CI compiles (~140 specialisations): every kernel, data path (4-bit codebook / int8,
    plain / double-quantized absmax), dtype path and direction at block 64 in the aligned launch; every
    block size 32..4096 for the quantize kernels, the bf16 dequantize paths and the bf16 / fp32 fused
    matmul; the ragged and decode launches at block 64 for every kernel and the fused matmul's
    same-dtype paths. The rest of `all_specialisations` differs from these only in the block size (a
    power-of-two divisor) or in an output dtype of the same conversion."""

    def keep(s: Specialisation) -> bool:
        same_dtype = s.in_dtype == s.out_dtype
        if s.block_size == 64:
            return s.variant is Variant.ALIGNED or s.kernel != "dequant_matmul" or same_dtype
        if s.variant is not Variant.ALIGNED:
            return False
        if s.kernel == "dequantize":
            if s.coded_scales:
                return s.out_dtype == "bf16"
            return s.out_dtype == "bf16" and (s.bits == 4) == s.double_quant  # 4-bit + dq (QLoRA) and int8 plain
        if s.kernel == "dequant_matmul":
            return s.bits == 4 and same_dtype and s.in_dtype in ("bf16", "fp32")
        return True

    return [s for s in all_specialisations() if keep(s)]


SETS = {"ci": ci_specialisations, "full": all_specialisations}


def _ast_source(spec: Specialisation):
    """The ASTSource the JIT would build for this launch (`# Note: launch variants`)."""
    from triton.compiler import ASTSource

    fn = kernels()[spec.kernel]
    if not isinstance(fn, triton.runtime.jit.JITFunction):
        raise RuntimeError(
            f"{spec.kernel} is a {type(fn).__name__}, not a JITFunction: Triton's interpreter was active when qlora.kernels "
            "was imported (TRITON_INTERPRET=1); compile in a process without it"
        )
    signature, constexprs, attrs = {}, dict(spec.constexprs), {}
    for name, value in spec.args:
        index = fn.arg_names.index(name)
        if isinstance(value, Pointer):
            signature[name] = "*" + value.dtype
            divisible = value.aligned
        elif value == 1:  # the JIT turns an integer 1 into a constant
            signature[name], constexprs[name], divisible = "constexpr", 1, False
        else:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            divisible = value % 16 == 0
        if divisible:
            attrs[(index,)] = [["tt.divisibility", 16]]
    for name in dict(spec.constexprs):
        signature[name] = "constexpr"
    missing = set(fn.arg_names) - set(signature)
    if missing:
        raise ValueError(f"specialisation {spec.label!r} gives no value for {sorted(missing)} of {spec.kernel}")
    return ASTSource(fn=fn, signature={name: signature[name] for name in fn.arg_names}, constexprs=constexprs, attrs=attrs)


@dataclasses.dataclass(frozen=True)
class CompileResult:
    """What one specialisation compiled to for one target, and the PTX features that are checked.

    Attributes:
        registers: registers per thread. local_bytes: per-thread local memory (spills and stack).
        shared_bytes: dynamic shared memory the launch requests. num_warps: warps per program.
        fp64: fp64 instructions. fma: fused multiply-adds (f32). ftz: instructions that flush subnormals
        to zero. cvt_rn_bf16 / cvt_rn_f16: fp32 ->
        bf16 / fp16 conversions rounding to nearest-even; cvt_other_16: conversions to 16-bit floats
        with another rounding (truncation: `.rz`).
    """

    kernel: str
    label: str
    variant: str
    target: str
    triton_version: str
    seconds: float
    error: str | None = None
    registers: int = 0
    local_bytes: int = 0
    static_shared_bytes: int = 0
    shared_bytes: int = 0
    num_warps: int = 0
    num_stages: int = 0
    fp64: int = 0
    fma: int = 0
    ftz: int = 0
    cvt_rn_bf16: int = 0
    cvt_rn_f16: int = 0
    cvt_other_16: int = 0
    rounds_to: tuple[str, ...] = ()
    exact: bool = False

    def problems(self, target: Target) -> list[str]:
        """The properties this result violates (empty when all hold)."""
        if self.error is not None:
            return [f"does not compile: {self.error}"]
        found = []
        if self.local_bytes:
            found.append(f"{self.local_bytes} bytes of local memory per thread (register spills or stack)")
        if self.shared_bytes > target.shared_limit:
            found.append(f"{self.shared_bytes} bytes of shared memory > {target.shared_limit} on {target.name}")
        threads = self.num_warps * target.warp_size
        if self.registers > target.registers_per_thread or self.registers * threads > target.registers_per_block:
            found.append(f"{self.registers} registers x {threads} threads exceed {target.name}'s register file")
        if self.fp64:
            found.append(f"{self.fp64} fp64 instruction(s)")
        if self.exact and self.fma:
            found.append(f"{self.fma} fused multiply-add(s) in a bit-exact kernel")
        if self.exact and self.ftz:
            found.append(f"{self.ftz} flush-to-zero instruction(s) in a bit-exact kernel (the 1e-38 floor is subnormal)")
        if "bf16" in self.rounds_to and not self.cvt_rn_bf16:
            found.append("no round-to-nearest-even fp32 -> bf16 conversion (cvt.rn.bf16) on the bf16 path")
        if "fp16" in self.rounds_to and not self.cvt_rn_f16:
            found.append("no round-to-nearest-even fp32 -> fp16 conversion (cvt.rn.f16) on the fp16 path")
        if self.cvt_other_16:
            found.append(f"{self.cvt_other_16} fp32 -> 16-bit conversion(s) that do not round to nearest-even")
        return found


def _ptx_instructions(ptx: str) -> list[str]:
    """The opcodes of the PTX body: comments, directives, braces and labels dropped, predicates skipped."""
    ops = []
    for line in ptx.splitlines():
        words = line.split("//", 1)[0].replace(";", " ").split()
        if words and words[0].startswith("@"):
            words = words[1:]
        if words and not words[0].startswith((".", "{", "}", "$")) and not words[0].endswith(":"):
            ops.append(words[0])
    return ops


def ptx_features(ptx: str) -> dict[str, int]:
    """Counts of the checked instructions in a PTX text."""
    ops = _ptx_instructions(ptx)
    return {
        "fp64": sum(bool(re.search(r"\.f64\b", op)) for op in ops),
        "fma": sum(op.startswith("fma.") and op.endswith("f32") for op in ops),
        "ftz": sum(".ftz" in op for op in ops),
        "cvt_rn_bf16": sum(bool(re.fullmatch(r"cvt\.rn(\.relu)?(\.satfinite)?\.bf16(x2)?\.f32", op)) for op in ops),
        "cvt_rn_f16": sum(bool(re.fullmatch(r"cvt\.rn(\.relu)?(\.satfinite)?\.f16(x2)?\.f32", op)) for op in ops),
        "cvt_other_16": sum(bool(re.fullmatch(r"cvt\.(rz|rm|rp|rna|rs)\S*\.(bf16|f16)(x2)?\.f32", op)) for op in ops),
    }


def _cuobjdump() -> Path:
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.is_file():
        raise FileNotFoundError(f"cuobjdump not found at {path} (it ships in Triton's wheel)")
    return path


def cubin_resources(cubin: bytes) -> dict[str, int]:
    """Registers, stack, static shared and local bytes of the one function in `cubin` (cuobjdump)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([str(_cuobjdump()), "--dump-resource-usage", str(path)], check=True, capture_output=True, text=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if match is None:
        raise RuntimeError(f"cannot read the resource usage from cuobjdump's output:\n{text}")
    reg, stack, shared, local = map(int, match.groups())
    return {"registers": reg, "local_bytes": max(stack, local), "static_shared_bytes": shared}


def compile_one(spec: Specialisation, target: Target) -> CompileResult:
    """Compiles `spec` for `target` and reads its resources and PTX features (errors are recorded, not raised)."""
    common = dict(kernel=spec.kernel, label=spec.label, variant=spec.variant.value, target=target.name,
                  triton_version=triton.__version__, rounds_to=spec.rounds_to, exact=spec.exact)  # fmt: skip
    start = time.perf_counter()
    try:
        compiled = triton.compile(_ast_source(spec), target=target.gpu_target(), options=dict(spec.options))
        resources = cubin_resources(compiled.asm["cubin"])
        features = ptx_features(compiled.asm["ptx"])
    except Exception as err:  # noqa: BLE001 - a failed compile is a result to report
        return CompileResult(**common, seconds=time.perf_counter() - start, error=f"{type(err).__name__}: {str(err)[:2000]}")
    meta = compiled.metadata
    return CompileResult(**common, seconds=time.perf_counter() - start, shared_bytes=int(meta.shared), num_warps=int(meta.num_warps),
                         num_stages=int(meta.num_stages), **resources, **features)  # fmt: skip


def _compile_job(job: tuple[Specialisation, Target]) -> CompileResult:
    return compile_one(*job)


def compile_all(specs: list[Specialisation], targets=TARGETS, workers: int = 1) -> list[CompileResult]:
    """Compiles every specialisation for every target, in `workers` processes (fork)."""
    jobs = [(spec, target) for spec in specs for target in targets]
    if workers <= 1:
        return [_compile_job(job) for job in jobs]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(_compile_job, jobs, chunksize=4)


def results_json(which: str, workers: int = 1) -> str:
    """JSON list of the `CompileResult`s of set `which` ("ci" or "full") for every target."""
    import json

    if which not in SETS:
        raise ValueError(f"unknown specialisation set {which!r}; expected one of {sorted(SETS)}")
    return json.dumps([dataclasses.asdict(r) for r in compile_all(SETS[which](), workers=workers)], indent=1)
