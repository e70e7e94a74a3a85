"""One QLoRA training step on CPU: ours vs transformers + PEFT (fp32 LoRA) vs bitsandbytes + PEFT.

SmolLM2-135M (the embedded default), LoRA r=64 / alpha 16 on all linear layers, batch 4 x 256 tokens,
one AdamW step on the adapters. Medians of --repeats steps after one warm-up step, all measured in the
same run; prints the table and the ratios ours / PEFT-fp32. bitsandbytes + PEFT QLoRA (NF4+DQ, bf16
autocast) takes ~250 s a step here: opt in with --with-bnb.

    .venv/bin/python benchmarks/bench_qlora_step_cpu.py [--with-bnb] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from qlora.config import ComputeDtype, LoRAConfig, QuantConfig
from qlora.data.gguf_model import materialise_smollm2
from qlora.models.surgery import prepare_model
from qlora.quant import DataType


def step_times(model, batch, repeats, autocast_bf16=False):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step is warm-up
            times.append(time.perf_counter() - t)
    return statistics.median(times), loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="SmolLM2 safetensors folder (materialised from the package if absent)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--with-bnb", action="store_true")
    args = ap.parse_args()

    model_dir = args.model_dir or Path(tempfile.gettempdir()) / "qlora-bench-smollm2"
    if not (model_dir / "config.json").exists():
        materialise_smollm2(model_dir, overwrite=True)
    torch.manual_seed(0)
    ids = torch.randint(0, 49152, (args.batch, args.seq))
    batch = {"input_ids": ids, "labels": ids}
    rows = []

    from peft import LoraConfig, get_peft_model

    lora_peft = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), lora_peft)
    peft_model.train()
    rows.append(("transformers + PEFT LoRA (fp32)", *step_times(peft_model, batch, args.repeats)))
    del peft_model

    ours = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    report = prepare_model(ours, QuantConfig(DataType.NF4, True, compute_dtype=ComputeDtype.FP32), LoRAConfig(rank=64, alpha=16, dropout=0.1))
    ours.train()
    rows.append((f"ours QLoRA NF4+DQ (fp32 compute, {report.quantized_bits_per_param:.3f} bits/param)", *step_times(ours, batch, args.repeats)))
    del ours

    if args.with_bnb:
        from transformers import BitsAndBytesConfig

        bnb_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                        bnb_4bit_compute_dtype=torch.bfloat16)  # fmt: skip
        bnb_model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=bnb_config, device_map="cpu")
        bnb_model = get_peft_model(bnb_model, lora_peft)
        bnb_model.train()
        rows.append(("bitsandbytes + PEFT QLoRA NF4+DQ (bf16 autocast)", *step_times(bnb_model, batch, max(1, args.repeats - 2), True)))

    peft_s = rows[0][1]
    print(f"\nSmolLM2-135M, LoRA r=64 all linear, batch {args.batch} x {args.seq}, one AdamW step; "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads\n")  # fmt: skip
    print("| setup | seconds / step (median) | vs PEFT fp32 | loss |")
    print("|---|---:|---:|---:|")
    for name, seconds, loss in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / peft_s:.2f}x | {loss:.3f} |")


if __name__ == "__main__":
    main()
