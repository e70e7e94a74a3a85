"""Quantize / dequantize throughput: qlora's fast path against bitsandbytes, measured in the same run.

CPU: qlora's `Backend.CPU` (and the reference, for context) against bitsandbytes' `quantize_4bit` /
`dequantize_4bit`. CUDA: the Triton path against a device-to-device copy of the same bytes.
GB/s counts bytes read + written (input weight, packed codes, block constants, output).

    python benchmarks/bench_quant.py [--shapes 4096x4096 11008x4096] [--reps 7] [--no-reference]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import qlora
from qlora import Backend, DataType


def _median_seconds(fn, reps: int, warmup: int = 2, sync=lambda: None) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _bytes(numel: int, block: int, dq: bool, elem: int = 2) -> tuple[int, int]:
    """(quantize, dequantize) bytes moved: weight in elem bytes, 4-bit codes, 1- or 4-byte absmax."""
    consts = numel // block * (1 if dq else 4)
    moved = numel * elem + numel // 2 + consts
    return moved, moved


def _row(name, n, moved, ours, theirs):
    ratio = f"{theirs / ours:.2f}" if theirs else "-"
    bnb = f"{n / theirs / 1e6:8.0f}" if theirs else "       -"
    return f"| {name:<34} | {n / ours / 1e6:8.0f} | {moved / ours / 1e9:6.2f} | {bnb} | {ratio:>5} |"


def bench_cpu(shapes, reps: int, block: int, with_reference: bool) -> list[str]:
    import bitsandbytes.functional as bnbf

    lines = ["| case | ours Mparam/s | ours GB/s | bnb Mparam/s | ours/bnb |", "|---|---:|---:|---:|---:|"]
    for rows, cols in shapes:
        w = torch.randn(rows, cols, dtype=torch.bfloat16)
        n = w.numel()
        for dq in (True, False):
            tag = f"{rows}x{cols} NF4{'+DQ' if dq else ''}"
            moved, _ = _bytes(n, block, dq)
            t_bq = _median_seconds(lambda: bnbf.quantize_4bit(w, blocksize=block, compress_statistics=dq, quant_type="nf4"), reps)
            t_q = _median_seconds(lambda: qlora.quantize(w, DataType.NF4, block, dq, backend=Backend.CPU), reps)
            lines.append(_row(f"{tag} quantize", n, moved, t_q, t_bq))
            packed, state = bnbf.quantize_4bit(w, blocksize=block, compress_statistics=dq, quant_type="nf4")
            qt = qlora.quantize(w, DataType.NF4, block, dq, backend=Backend.CPU)
            out = torch.empty(rows, cols, dtype=torch.bfloat16)
            t_bd = _median_seconds(lambda: bnbf.dequantize_4bit(packed, state), reps)
            try:
                t_bdo = _median_seconds(lambda: bnbf.dequantize_4bit(packed, state, out=out), reps)
            except NotImplementedError:  # bitsandbytes 0.50 has no out= kernel on CPU: compare with its allocating call
                t_bdo = t_bd
            t_d = _median_seconds(lambda: qlora.dequantize(qt, torch.bfloat16, backend=Backend.CPU), reps)
            t_do = _median_seconds(lambda: qlora.dequantize(qt, torch.bfloat16, out=out, backend=Backend.CPU), reps)
            lines.append(_row(f"{tag} dequantize bf16", n, moved, t_d, t_bd))
            lines.append(_row(f"{tag} dequantize bf16 out=", n, moved, t_do, t_bdo))
            if with_reference:
                t_rq = _median_seconds(lambda: qlora.quantize(w, DataType.NF4, block, dq, backend=Backend.REFERENCE), max(3, reps // 2), 1)
                t_rd = _median_seconds(lambda: qlora.dequantize(qt, torch.bfloat16, backend=Backend.REFERENCE), max(3, reps // 2), 1)
                lines.append(_row(f"{tag} quantize (reference)", n, moved, t_rq, t_bq))
                lines.append(_row(f"{tag} dequantize (reference)", n, moved, t_rd, t_bd))
    return lines


def bench_cuda(shapes, reps: int, block: int) -> list[str]:
    """Triton path against a device-to-device copy of the same number of bytes (the bandwidth ceiling)."""
    sync = torch.cuda.synchronize
    lines = ["| case | Triton Mparam/s | Triton GB/s | copy GB/s | Triton/copy |", "|---|---:|---:|---:|---:|"]
    for rows, cols in shapes:
        w = torch.randn(rows, cols, dtype=torch.bfloat16, device="cuda")
        n = w.numel()
        for dq in (True, False):
            tag = f"{rows}x{cols} NF4{'+DQ' if dq else ''}"
            moved, _ = _bytes(n, block, dq)
            src = torch.empty(moved // 2, dtype=torch.uint8, device="cuda")
            dst = torch.empty_like(src)
            t_copy = _median_seconds(lambda: dst.copy_(src), reps, sync=sync)  # reads + writes `moved` bytes
            copy_gbs = moved / t_copy / 1e9
            t_q = _median_seconds(lambda: qlora.quantize(w, DataType.NF4, block, dq, backend=Backend.TRITON), reps, sync=sync)
            qt = qlora.quantize(w, DataType.NF4, block, dq, backend=Backend.TRITON)
            t_d = _median_seconds(lambda: qlora.dequantize(qt, torch.bfloat16, backend=Backend.TRITON), reps, sync=sync)
            for what, t in (("quantize", t_q), ("dequantize bf16", t_d)):
                gbs = moved / t / 1e9
                lines.append(f"| {tag} {what} | {n / t / 1e6:.0f} | {gbs:.1f} | {copy_gbs:.1f} | {gbs / copy_gbs:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["4096x4096", "11008x4096"], help="ROWSxCOLS weights")
    parser.add_argument("--reps", type=int, default=7, help="timed runs per case (median reported)")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--no-reference", action="store_true", help="skip the slow reference rows")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    torch.manual_seed(0)
    if torch.cuda.is_available():
        lines = bench_cuda(shapes, args.reps, args.block_size)
    else:
        lines = bench_cpu(shapes, args.reps, args.block_size, not args.no_reference)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
