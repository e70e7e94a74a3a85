"""One command that verifies and benchmarks the kernels on a GPU (issue 15 §2); < 8 minutes on one H100/H200.

    python benchmarks/gpu_check.py [--out-dir reports] [--model-dir DIR] [--steps 50]
    python benchmarks/gpu_check.py --dry-run [--out-dir DIR]     # CPU, interpreter, tiny shapes, < 1 min

Writes gpu_check.json and gpu_check.md (device, driver, CUDA, torch, triton, bitsandbytes versions) with:
(a) correctness of every kernel on CUDA against the pure-PyTorch reference: quantize codes and absmax
    bit-exact, dequantize exact in fp32 / bf16 / fp16, fused dequant-matmul within stated tolerances;
    and against bitsandbytes' CUDA functions when installed (where its bytes differ, and how close those
    elements lie to a rounding midpoint);
(b) NF4 -> bf16 dequantize bandwidth as a fraction of a device-to-device copy of the same bytes, and
    against bitsandbytes' dequantize in the same run;
(c) a QLoRA linear (NF4 + DQ, LoRA r=64) forward + backward at 4096 x 4096 and 8k tokens against a bf16
    linear with the same LoRA;
(d) 50 QLoRA training steps on SmolLM2-135M: tokens/s and peak memory, ours against transformers + PEFT
    + bitsandbytes in the same run (skipped with a note when those are not installed);
(e) the fused-vs-dequantize dispatch threshold (`FUSED_MAX_TOKENS` in qlora/nn/functional.py), measured
    and printed as the value to set;
and the issue's goals as ratios, met or not. A section that fails records its error and the run goes on.

--dry-run runs the same code paths on CPU under Triton's interpreter (which computes bf16 kernels in fp32)
on tiny shapes and a tiny random Llama; its figures are not measurements and say so. It writes to a
temporary folder unless --out-dir is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The goals of issue 15 §3, as ratios from one run.
GOALS = {
    "dequant_vs_copy": (">=", 0.90, "NF4 -> bf16 dequantize bandwidth / device copy bandwidth (worst shape)"),
    "dequant_vs_bnb": (">=", 1.30, "bitsandbytes dequantize time / ours (worst shape)"),
    "linear_vs_bf16": ("<=", 1.10, "QLoRA linear fwd+bwd time / bf16 linear with LoRA"),
    "train_tokens_vs_peft_bnb": (">=", 2.00, "training tokens/s, ours / transformers+PEFT+bitsandbytes"),
    "train_peak_vs_peft_bnb": ("<=", 1.00, "training peak memory, ours / transformers+PEFT+bitsandbytes"),
}
# Relative Frobenius error of the fused matmul against the fp32 product of the dequantized weight:
# the 16-bit paths round W and the output once each (2^-9 bf16, 2^-12 fp16 relative per element).
FUSED_TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}


@dataclasses.dataclass
class Context:
    torch: object
    device: object
    dry_run: bool
    model_dir: Path | None
    steps: int

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def bench(self, fn, reps: int = 20, warmup: int = 3) -> float:
        """Median seconds of `fn()` (CUDA events on GPU, perf_counter on CPU)."""
        torch = self.torch
        reps, warmup = (2, 1) if self.dry_run else (reps, warmup)
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        return statistics.median(times)


def _optional(name: str):
    try:
        return __import__(name, fromlist=["_"])
    except Exception as err:  # noqa: BLE001 - a peer that fails to import is reported as missing
        return f"{type(err).__name__}: {err}"


def meta(ctx: Context, args) -> dict:
    torch = ctx.torch
    import triton

    info = {"dry_run": ctx.dry_run, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "cpu": platform.processor() or platform.machine(), "device": str(ctx.device)}  # fmt: skip
    for name in ("bitsandbytes", "transformers", "peft"):
        module = _optional(name)
        info[name] = module if isinstance(module, str) else getattr(module, "__version__", "?")
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        info.update(device_name=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1))
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]  # fmt: skip
        except Exception as err:  # noqa: BLE001
            info["driver"] = f"unknown ({type(err).__name__})"
    else:
        info.update(device_name="cpu (dry run: Triton interpreter)", driver="none")
    return info


# ---------------------------------------------------------------- (a) correctness


def _guarded(fn, *args) -> dict:
    """fn(*args), or {"error": traceback} — a peer's failure must not lose our own figures."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001
        return {"error": traceback.format_exc()}


def _unpack(packed, n: int):
    """(bytes,) uint8 -> (n,) int32 4-bit codes, element 2j from the high nibble of byte j."""
    b = packed.reshape(-1).int()
    return (b[:, None] >> b.new_tensor([4, 0])).bitwise_and(15).reshape(-1)[:n]


def _bits_differ(a, b) -> int:
    """Elements whose bit patterns differ (NaN-safe, -0.0 vs 0.0 counted)."""
    torch = sys.modules["torch"]
    as_int = {4: torch.int32, 2: torch.int16}[a.element_size()]
    return int((a.reshape(-1).view(as_int) != b.reshape(-1).view(as_int)).sum())


def _quantize_case(ctx: Context, dtype, dq: bool, shape: tuple, block: int, in_dtype) -> dict:
    """Triton quantize / dequantize against the reference on one case: counts of differing values."""
    torch = ctx.torch
    import qlora
    from qlora import Backend

    w = torch.randn(shape, device=ctx.device).to(in_dtype)
    w.view(-1)[: min(block, w.numel() // 2)] = 0  # an all-zero block
    ref = qlora.quantize(w, dtype, block, dq, backend=Backend.REFERENCE)
    tri = qlora.quantize(w, dtype, block, dq, backend=Backend.TRITON)
    row = {"dtype": dtype.value, "double_quant": getattr(dq, "value", dq), "block": block, "shape": list(shape), "in": str(in_dtype)[6:],
           "codes_differ": int((ref.data != tri.data).sum())}  # fmt: skip
    if ref.scales is not None:  # NVFP4 / MXFP4: 8-bit block scales (and NVFP4's tensor scale)
        row["absmax_differ"] = int((ref.scales.codes != tri.scales.codes).sum()) + int(
            ref.scales.tensor_scale is not None and bool(ref.scales.tensor_scale != tri.scales.tensor_scale))
    elif dq:
        row["absmax_differ"] = int((ref.nested.codes != tri.nested.codes).sum() + (ref.nested.absmax != tri.nested.absmax).sum()
                                   + (ref.nested.offset != tri.nested.offset).sum())  # fmt: skip
    else:
        row["absmax_differ"] = int((ref.absmax != tri.absmax).sum())
    for out in (torch.float32, torch.bfloat16, torch.float16):
        expected = qlora.dequantize(ref, out, backend=Backend.REFERENCE)
        row[f"dequant_{str(out)[6:]}_differ"] = _bits_differ(expected, qlora.dequantize(ref, out, backend=Backend.TRITON))
    return row


def correctness(ctx: Context) -> dict:
    torch = ctx.torch
    import qlora
    from qlora import Backend, DataType
    from qlora.kernels.fused_matmul import dequant_matmul
    from qlora.quant import block_absmax, codebook

    dev, dry = ctx.device, ctx.dry_run
    # (shape, block size): every block size on a square weight and a ragged one (odd numel, partial
    # last block), the 7B MLP shape at the default block size
    cases = [((33, 65), 64)] if dry else [(shape, b) for shape in ((4096, 4096), (33, 65)) for b in (32, 64, 256, 4096)] + [((11008, 4096), 64)]
    in_dtypes = [torch.bfloat16] if dry else [torch.bfloat16, torch.float16, torch.float32]
    from qlora import DoubleQuant

    def variants(dtype):  # the double quantizations a type allows, at the block sizes it allows
        dqs = (False, True, DoubleQuant.E4M4) if dtype.allows_double_quant else (False,)
        sizes = [(shape, b if b in dtype.block_sizes else dtype.block_sizes[0]) for shape, b in cases]
        return [(dq, case) for dq in dqs for case in dict.fromkeys(sizes)]

    rows = [_quantize_case(ctx, dtype, dq, shape, block, in_dtype) for dtype in DataType if dtype.is_quantized
            for dq, (shape, block) in variants(dtype) for in_dtype in in_dtypes]  # fmt: skip
    failures = [row for row in rows if any(v for k, v in row.items() if k.endswith("_differ"))]
    fused = []
    n, k = (40, 48) if dry else (4096, 4096)
    for dtype in (DataType.NF4, DataType.INT8, DataType.FP8_E4M3, DataType.NVFP4, DataType.MXFP4):
        q = qlora.quantize(torch.randn(n, k, device=dev), dtype, None, dtype.allows_double_quant, backend=Backend.TRITON)
        w = qlora.dequantize(q, torch.float32, backend=Backend.TRITON)
        for act in (torch.float32, torch.bfloat16, torch.float16):
            for tokens in ((1, 5) if dry else (1, 16, 128)):
                for forward in (True, False):
                    a = torch.randn(tokens, k if forward else n, device=dev).to(act)
                    c = dequant_matmul(a, q.data, block_absmax(q), codebook(q.dtype, dev), shape=(n, k), block_size=q.block_size,
                                       bits=4 if dtype.is_4bit else 8, transpose_w=forward)  # fmt: skip
                    exact = a.float() @ (w.t() if forward else w)
                    err = float((c.float() - exact).norm() / exact.norm().clamp_min(1e-30))
                    tol = FUSED_TOLERANCE[str(act)[6:]]
                    fused.append({"dtype": dtype.value, "act": str(act)[6:], "tokens": tokens, "direction": "forward" if forward else "input-grad",
                                  "rel_error": err, "tolerance": tol, "ok": err <= tol})  # fmt: skip
    return {"quantize_dequantize": rows, "mismatches": failures, "all_bit_exact": not failures, "fused": fused,
            "fused_ok": all(f["ok"] for f in fused), "bitsandbytes": _guarded(bnb_compare, ctx)}  # fmt: skip


def bnb_compare(ctx: Context) -> dict:
    """Our quantize / dequantize against bitsandbytes' functions on the same device: differing bytes and where."""
    torch = ctx.torch
    F = _optional("bitsandbytes.functional")
    if isinstance(F, str):
        return {"skipped": f"bitsandbytes not importable: {F}"}
    import qlora
    from qlora import Backend
    from qlora.quant.bnb_format import from_bnb_dict
    from qlora.quant.dtypes import DataType, nearest_code_search

    shape = (64, 128) if ctx.dry_run else (4096, 4096)
    rows = []
    for quant_type in ("nf4", "fp4"):
        for dq in (False, True):
            for in_dtype in (torch.bfloat16, torch.float16, torch.float32):
                w = torch.randn(shape, device=ctx.device).to(in_dtype)
                packed, state = F.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=dq)
                ours = qlora.quantize(w, quant_type, 64, dq, backend=Backend.TRITON)
                differ = (ours.data.view(-1) != packed.view(-1)).nonzero().view(-1)
                row = {"quant_type": quant_type, "double_quant": dq, "in": str(in_dtype)[6:], "bytes": packed.numel(),
                       "bytes_differ": int(differ.numel())}  # fmt: skip
                if dq:
                    row["absmax_codes_differ"] = int((state.absmax.view(-1) != ours.nested.codes).sum())
                    row["offset_equal"] = bool(torch.equal(state.offset.float().view(()), ours.nested.offset.view(())))
                else:
                    row["absmax_differ"] = int((state.absmax.view(-1) != ours.absmax).sum())
                if differ.numel():  # where: the elements whose code differs and their distance to a midpoint
                    n = w.numel()
                    elems = (_unpack(ours.data, n) != _unpack(packed, n)).nonzero().view(-1)
                    absmax = qlora.quant.block_absmax(ours)
                    scaled = (w.view(-1).float()[elems] / absmax[elems // 64]).clamp(-1, 1)
                    midpoints, _ = nearest_code_search(DataType.parse(quant_type), ctx.device)
                    dist = (scaled[:, None] - midpoints[None, :]).abs().min(dim=1).values
                    row.update(elements_differ=int(elems.numel()), max_distance_to_midpoint=float(dist.max()),
                               examples=[{"index": int(i), "scaled": float(s)} for i, s in zip(elems[:5].tolist(), scaled[:5].tolist())])  # fmt: skip
                theirs = F.dequantize_4bit(packed, state)  # bnb's dequantize of bnb's state, in w's dtype
                mine = qlora.dequantize(from_bnb_dict(packed, state.as_dict(packed=True)), in_dtype, backend=Backend.TRITON)
                row["dequant_of_bnb_state_values_differ"] = int((mine != theirs).sum())
                row["dequant_of_bnb_state_bits_differ"] = _bits_differ(mine, theirs)  # counts -0.0 vs 0.0 too
                rows.append(row)
    return {"rows": rows}


# ---------------------------------------------------------------- (b) dequantize bandwidth


def bandwidth(ctx: Context) -> dict:
    torch = ctx.torch
    import qlora
    from qlora import Backend, DataType

    F = _optional("bitsandbytes.functional")
    shapes = [(256, 256)] if ctx.dry_run else [(4096, 4096), (11008, 4096)]
    rows = []
    for shape in shapes:
        for dq in (False, True):
            w = torch.randn(shape, device=ctx.device, dtype=torch.bfloat16)
            q = qlora.quantize(w, DataType.NF4, 64, dq, backend=Backend.TRITON)
            out = torch.empty(shape, device=ctx.device, dtype=torch.bfloat16)
            t_ours = ctx.bench(lambda: qlora.dequantize(q, torch.bfloat16, out=out, backend=Backend.TRITON))
            read = q.storage_bytes()
            moved = read + out.numel() * 2
            half = moved // 2  # a copy of `half` bytes reads and writes the same traffic as the dequantize
            src, dst = torch.empty(half, dtype=torch.uint8, device=ctx.device), torch.empty(half, dtype=torch.uint8, device=ctx.device)
            t_copy = ctx.bench(lambda: dst.copy_(src))
            row = {"shape": list(shape), "double_quant": dq, "bytes_moved": moved, "ours_s": t_ours, "copy_s": t_copy,
                   "ours_GBps": moved / t_ours / 1e9, "copy_GBps": moved / t_copy / 1e9, "fraction_of_copy": t_copy / t_ours}  # fmt: skip
            if not isinstance(F, str):
                bnb = _guarded(_bnb_dequant_seconds, ctx, F, w, dq)
                row.update({"bnb_error": bnb["error"]} if "error" in bnb else {"bnb_s": bnb["seconds"], "bnb_over_ours": bnb["seconds"] / t_ours})
            rows.append(row)
    result = {"rows": rows, "worst_fraction_of_copy": min(r["fraction_of_copy"] for r in rows)}
    if isinstance(F, str):
        result["bnb_skipped"] = f"bitsandbytes not importable: {F}"
    elif all("bnb_over_ours" in r for r in rows):
        result["worst_bnb_over_ours"] = min(r["bnb_over_ours"] for r in rows)
    return result


def _bnb_dequant_seconds(ctx: Context, F, w, dq: bool) -> dict:
    torch = ctx.torch
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)
    out = torch.empty(w.shape, device=ctx.device, dtype=torch.bfloat16)
    kwargs = {"out": out} if ctx.device.type == "cuda" else {}  # bitsandbytes' CPU backend has no out= kernel
    return {"seconds": ctx.bench(lambda: F.dequantize_4bit(packed, state, **kwargs))}


# ---------------------------------------------------------------- (c) QLoRA linear vs bf16 linear with LoRA


def linear(ctx: Context) -> dict:
    torch = ctx.torch
    from qlora import QLoRALinear
    from qlora.config import ComputeDtype, LoRAConfig, QuantConfig
    from qlora.nn.lora import lora_parameters

    features, tokens, rank = (64, 32, 8) if ctx.dry_run else (4096, 8192, 64)
    dev, bf16 = ctx.device, torch.bfloat16
    base = torch.nn.Linear(features, features, bias=False, device=dev, dtype=bf16)
    ours = QLoRALinear.from_linear(base, QuantConfig(compute_dtype=ComputeDtype.BF16), LoRAConfig(rank=rank, alpha=16, dropout=0.0))
    weight = base.weight.detach()
    lora_a, lora_b = lora_parameters(features, features, rank, device=dev)
    scaling = 16 / rank

    def reference(x):  # a bf16 linear with the same fp32 adapter, cast to bf16 as ours does
        return x @ weight.t() + scaling * ((x @ lora_a.to(bf16).t()) @ lora_b.to(bf16).t())

    x = torch.randn(tokens, features, device=dev, dtype=bf16, requires_grad=True)
    grad = torch.randn(tokens, features, device=dev, dtype=bf16)

    def step(fn):
        def run():
            fn(x).backward(grad)
            x.grad = None

        return run

    t_ours, t_ref = ctx.bench(step(ours), reps=10), ctx.bench(step(reference), reps=10)
    return {"features": features, "tokens": tokens, "rank": rank, "ours_s": t_ours, "bf16_lora_s": t_ref, "ratio": t_ours / t_ref}


# ---------------------------------------------------------------- (d) QLoRA training, ours vs transformers + PEFT + bitsandbytes


def _model_dir(ctx: Context) -> Path:
    if ctx.dry_run:  # a tiny random Llama: the same loading and training code, in seconds
        from transformers import LlamaConfig, LlamaForCausalLM

        path = Path(tempfile.mkdtemp(prefix="gpu_check_tiny_llama_"))
        config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
        LlamaForCausalLM(config).save_pretrained(path)
        return path
    if ctx.model_dir is not None:
        return ctx.model_dir
    from qlora.data.gguf_model import materialise_smollm2

    path = Path(tempfile.gettempdir()) / "qlora-gpu-check-smollm2"
    if not (path / "config.json").exists():
        materialise_smollm2(path, overwrite=True)
    return path


def _train(ctx: Context, model, batch, steps: int) -> dict:
    """`steps` AdamW steps on the trainable parameters, bf16 autocast on GPU (as qlora.train's trainer)."""
    torch = ctx.torch
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    model.train()
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.device.type == "cuda")
    warmup = min(5, steps - 1)
    losses = []
    for step in range(steps):
        if step == warmup:
            ctx.sync()
            start = time.perf_counter()
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    ctx.sync()
    seconds = time.perf_counter() - start
    tokens = batch["input_ids"].numel() * (steps - warmup)
    peak = torch.cuda.max_memory_allocated(ctx.device) if ctx.device.type == "cuda" else None
    return {"tokens_per_s": tokens / seconds, "timed_steps": steps - warmup, "peak_bytes": peak, "first_loss": losses[0],
            "last_loss": losses[-1], "trainable_params": sum(p.numel() for p in params)}  # fmt: skip


def training(ctx: Context) -> dict:
    """Ours (qlora.prepare_model, NF4 + DQ, compute dtype AUTO: bf16 on GPU) against transformers + PEFT +
    bitsandbytes (NF4 + DQ, bf16 compute), LoRA r=64 alpha 16 on all linear layers, the same batches and
    loop. Both load the model in fp32 and train under bf16 autocast on GPU, as qlora.train does."""
    torch = ctx.torch
    from transformers import AutoModelForCausalLM

    from qlora import prepare_model
    from qlora.config import LoRAConfig, QuantConfig

    path = _model_dir(ctx)
    batch_size, seq, steps = (2, 16, 3) if ctx.dry_run else (8, 512, ctx.steps)
    generator = torch.Generator().manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(ctx.device)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq), generator=generator).to(ctx.device)
    batch = {"input_ids": ids, "labels": ids}
    result = {"model": str(path), "batch": [batch_size, seq], "steps": steps, "data": "random token ids (throughput only)"}
    report = prepare_model(model, QuantConfig(), LoRAConfig(rank=64, alpha=16, dropout=0.0))
    result["ours"] = {**_train(ctx, model, batch, steps), "quantized_bits_per_param": report.quantized_bits_per_param}
    del model
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    peft, bnb = _optional("peft"), _optional("bitsandbytes")
    if isinstance(peft, str) or isinstance(bnb, str):
        result["peer_skipped"] = f"transformers + PEFT + bitsandbytes not available: peft={peft if isinstance(peft, str) else 'ok'}, bitsandbytes={bnb if isinstance(bnb, str) else 'ok'}"
        return result
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
    peer = AutoModelForCausalLM.from_pretrained(path, quantization_config=config, dtype=torch.float32, device_map={"": str(ctx.device)})
    peer = get_peft_model(peer, LoraConfig(r=64, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    result["peft_bnb"] = _train(ctx, peer, batch, steps)
    ours, theirs = result["ours"], result["peft_bnb"]
    result["tokens_ratio"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
    if ours["peak_bytes"] is not None:
        result["peak_ratio"] = ours["peak_bytes"] / theirs["peak_bytes"]
    return result


# ---------------------------------------------------------------- (e) fused vs dequantize dispatch threshold


def dispatch(ctx: Context) -> dict:
    torch = ctx.torch
    import qlora
    import qlora.nn.functional as functional
    from qlora import Backend, DataType

    shapes = [(64, 64)] if ctx.dry_run else [(4096, 4096), (11008, 4096), (4096, 11008)]
    token_counts = [1, 4, 16] if ctx.dry_run else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    rule = functional.use_fused_kernel
    rows = []
    try:
        for n, k in shapes:
            q = qlora.quantize(torch.randn(n, k, device=ctx.device), DataType.NF4, 64, True, backend=Backend.TRITON)
            for tokens in token_counts:
                for forward in (True, False):
                    a = torch.randn(tokens, k if forward else n, device=ctx.device, dtype=torch.bfloat16)
                    times = {}
                    for fused in (True, False):  # the two paths of quantized_matmul, forced
                        functional.use_fused_kernel = lambda *_, fused=fused: fused
                        times[fused] = ctx.bench(lambda: functional.quantized_matmul(a, q, torch.bfloat16, transpose_w=forward))
                    rows.append({"shape": [n, k], "tokens": tokens, "direction": "forward" if forward else "input-grad",
                                 "fused_s": times[True], "dequant_matmul_s": times[False], "fused_faster": times[True] < times[False]})  # fmt: skip
    finally:
        functional.use_fused_kernel = rule
    threshold = 0
    for tokens in token_counts:  # the largest count up to which the fused path wins everywhere
        if all(r["fused_faster"] for r in rows if r["tokens"] <= tokens):
            threshold = tokens
    return {"rows": rows, "measured_threshold": threshold, "current_threshold": functional.FUSED_MAX_TOKENS,
            "advice": f"set FUSED_MAX_TOKENS = {threshold} in qlora/nn/functional.py"}


# ---------------------------------------------------------------- report


SECTIONS = {"correctness": correctness, "bandwidth": bandwidth, "linear": linear, "training": training, "dispatch": dispatch}


def goals(sections: dict, dry_run: bool) -> list[dict]:
    """The issue's goals with this run's values; `met` is None when not measured (or in a dry run)."""
    values = {
        "dequant_vs_copy": sections["bandwidth"].get("worst_fraction_of_copy"),
        "dequant_vs_bnb": sections["bandwidth"].get("worst_bnb_over_ours"),
        "linear_vs_bf16": sections["linear"].get("ratio"),
        "train_tokens_vs_peft_bnb": sections["training"].get("tokens_ratio"),
        "train_peak_vs_peft_bnb": sections["training"].get("peak_ratio"),
    }
    rows = []
    for name, (op, goal, what) in GOALS.items():
        value = values[name]
        met = None if value is None or dry_run else (value >= goal if op == ">=" else value <= goal)
        rows.append({"goal": name, "what": what, "value": value, "target": f"{op} {goal}", "met": met})
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "n/a" if v is None else str(v)


def markdown(report: dict) -> str:
    m, s = report["meta"], report["sections"]
    lines = ["# GPU check" + (" — DRY RUN (CPU interpreter, tiny shapes: NOT measurements)" if m["dry_run"] else ""), "",
             f"Command: `python benchmarks/{m['command']}`; {m['date']}; device {m['device_name']}, driver {m.get('driver')}, "
             f"CUDA {m['cuda']}, torch {m['torch']}, triton {m['triton']}, bitsandbytes {m['bitsandbytes']}, transformers "
             f"{m['transformers']}, peft {m['peft']}; total {report['seconds']:.0f} s.", "",
             "## Goals (issue 15)", "", "| goal | value | target | met |", "|---|---:|---|---|"]  # fmt: skip
    for g in report["goals"]:
        met = "n/a (dry run)" if m["dry_run"] else _fmt(g["met"])
        lines.append(f"| {g['what']} | {_fmt(g['value'])} | {g['target']} | {met} |")
    for name in SECTIONS:
        sec = s[name]
        lines += ["", f"## {name} ({sec.get('seconds', 0):.0f} s)", ""]
        if "error" in sec:
            lines += ["```", sec["error"][-3000:], "```"]
            continue
        if name == "correctness":
            lines.append(f"Quantize / dequantize vs the reference: {len(sec['quantize_dequantize'])} cases, "
                         f"{'all bit-exact' if sec['all_bit_exact'] else str(len(sec['mismatches'])) + ' with differences'}. "
                         f"Fused matmul within tolerance ({FUSED_TOLERANCE}): {sec['fused_ok']} (worst relative error "
                         f"{max(f['rel_error'] for f in sec['fused']):.3g}).")  # fmt: skip
            for row in sec["mismatches"][:20]:
                lines.append(f"- mismatch: {row}")
            bnb = sec["bitsandbytes"]
            lines += ["", "bitsandbytes: " + bnb.get("skipped", ""), ""]
            for row in bnb.get("rows", []):
                lines.append(f"- {row}")
        elif name == "dispatch":
            lines.append(f"Measured threshold: {sec['measured_threshold']} tokens (current {sec['current_threshold']}): {sec['advice']}.")
            lines += ["", "| shape | tokens | direction | fused s | dequant+matmul s |", "|---|---:|---|---:|---:|"]
            lines += [f"| {r['shape']} | {r['tokens']} | {r['direction']} | {r['fused_s']:.3g} | {r['dequant_matmul_s']:.3g} |" for r in sec["rows"]]
        else:
            lines += ["```json", json.dumps({k: v for k, v in sec.items() if k != "seconds"}, indent=1)[:6000], "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes (not measurements)")
    ap.add_argument("--out-dir", type=Path, help="where gpu_check.json/.md go (default: reports/, or a temp folder with --dry-run)")
    ap.add_argument("--model-dir", type=Path, help="SmolLM2 safetensors folder (default: materialised from the embedded package)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--only", action="append", choices=list(SECTIONS), help="run only these sections")
    args = ap.parse_args()
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are imported: before any qlora import
        # the quantized layers' CPU path (qlora/quant/cpu.py) runs eagerly: no inductor compile in a dry run
        os.environ["TORCH_COMPILE_DISABLE"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run to exercise the code paths on CPU")
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="gpu_check_dry_")) if args.dry_run else ROOT / "reports")
    ctx = Context(torch, torch.device("cpu" if args.dry_run else "cuda"), args.dry_run, args.model_dir, args.steps)
    torch.manual_seed(0)
    start = time.perf_counter()
    report = {"meta": meta(ctx, args), "sections": {}}
    for name, fn in SECTIONS.items():
        if args.only and name not in args.only:
            report["sections"][name] = {"skipped": "not selected (--only)"}
            continue
        t = time.perf_counter()
        try:
            report["sections"][name] = fn(ctx)
        except Exception:  # noqa: BLE001 - one run on a lent GPU: record the failure and go on
            report["sections"][name] = {"error": traceback.format_exc()}
        report["sections"][name]["seconds"] = time.perf_counter() - t
        print(f"{name}: {report['sections'][name]['seconds']:.1f} s{' ERROR' if 'error' in report['sections'][name] else ''}", flush=True)
    report["seconds"] = time.perf_counter() - start
    report["goals"] = goals(report["sections"], args.dry_run)
    from qlora.atomic import write_json, write_text

    write_json(out_dir / "gpu_check.json", report)
    write_text(out_dir / "gpu_check.md", markdown(report))
    for g in report["goals"]:
        print(f"{g['what']}: {_fmt(g['value'])} (target {g['target']}, met: {_fmt(g['met'])})")
    print(report["sections"]["dispatch"].get("advice", ""))
    print(f"wrote {out_dir / 'gpu_check.json'} and gpu_check.md" + (" (DRY RUN: not measurements)" if args.dry_run else ""))


if __name__ == "__main__":
    main()
