"""Peak memory of quantize-while-loading (`qlora.from_pretrained`) vs loading in full precision first.

    .venv/bin/python benchmarks/bench_load_memory.py DIR [DIR ...] [--repeats N]

Each measurement runs in a fresh subprocess and reads its own peak resident set size
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`): once after the imports and a first tiny quantize (the
baseline: the compiled CPU quantizer costs the same either way), once after loading and one forward
pass of 32 tokens (safetensors maps tensors lazily: the embedding and head become resident when used).
Both ways quantize every linear layer but the head to NF4 + double quantization (block 64, fp32
compute, no adapters); their logits on a fixed input must be bit-identical, which is checked. Prints a
Markdown table for reports/performance.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
import torch
from qlora.config import ComputeDtype, ModelKind, QuantConfig
from qlora.models.loading import load_base
from qlora.models.pretrained import from_pretrained
from qlora.models.surgery import model_report, prepare_model

directory, how, logits_file = sys.argv[1:4]
quant = QuantConfig(compute_dtype=ComputeDtype.FP32)
# first-use costs before the baseline: the CPU quantizer's compiled kernel (~0.2 GiB), matmul buffers
from qlora.quant.api import quantize
quantize(torch.randn(128, 128), "nf4", 64, True)
torch.nn.functional.linear(torch.ones(2, 2), torch.ones(2, 2))
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base = rss()
t0 = time.perf_counter()
if how == "streamed":
    model = from_pretrained(directory, quant=quant)
else:
    model = load_base(directory, ModelKind.CAUSAL_LM)
    prepare_model(model, quant)
seconds = time.perf_counter() - t0
load_peak = rss()
# one forward pass: tensors that safetensors maps lazily (embeddings, head) become resident only when used
with torch.no_grad():
    logits = model.eval()(torch.arange(1, 33).unsqueeze(0)).logits
peak = rss()
report = model_report(model)
torch.save(logits, logits_file)
print(json.dumps({"base": base, "load_peak": load_peak, "peak": peak, "seconds": seconds,
                  "weight_bytes": report.weight_bytes_after, "params": report.total_params}))
"""


def measure(directory: Path, how: str, logits_file: Path) -> dict:
    # through a shell: Linux carries a parent's RSS high-water mark into a child's ru_maxrss across
    # fork/exec, so a direct child would start at this process's peak; a grandchild starts clean
    argv = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", _CHILD, str(directory), how, str(logits_file)]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="materialised model folders (float safetensors)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    gib = 2**30
    print("| model | fp32 file GiB | way | peak RSS GiB | above baseline GiB | model storage GiB | load s | identical logits |")
    print("|---|---:|---|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for directory in args.dirs:
            size = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
            name = json.loads((directory / "config.json").read_text()).get("_model_name_or_path") or directory.name
            runs = {}
            for how in ("full", "streamed"):
                for r in range(args.repeats):
                    res = measure(directory, how, Path(tmp) / f"{how}.pt")
                    runs.setdefault(how, []).append(res)
            same = torch.equal(torch.load(Path(tmp) / "full.pt"), torch.load(Path(tmp) / "streamed.pt"))
            for how, label in (("full", "load fp32, then prepare_model"), ("streamed", "qlora.from_pretrained (streamed)")):
                best = min(runs[how], key=lambda r: r["peak"])
                print(f"| {name} | {size / gib:.2f} | {label} | {best['peak'] / gib:.2f} | {(best['peak'] - best['base']) / gib:.2f} "
                      f"| {best['weight_bytes'] / gib:.2f} | {min(r['seconds'] for r in runs[how]):.1f} | {'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
