"""One QLoRA training step on CPU: ours vs transformers + PEFT (fp32 LoRA) vs bitsandbytes + PEFT.

SmolLM2-135M (the embedded default), LoRA r=64 / alpha 16 on all linear layers, batch 4 x 256 tokens,
one AdamW step on the adapters. All setups are built first and stepped round-robin (so background load
hits each alike); medians of --repeats steps after one warm-up step; prints the table and the ratios
to PEFT fp32. bitsandbytes + PEFT QLoRA (NF4+DQ, bf16
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


class Setup:
    """One model and its optimizer, stepped one at a time so that setups interleave."""

    def __init__(self, name, model, autocast_bf16=False):
        self.name, self.model, self.autocast = name, model, autocast_bf16
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
        self.times, self.loss = [], float("nan")

    def step(self, batch, record=True):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.model(**batch).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if record:
            self.times.append(time.perf_counter() - t)
        self.loss = loss.item()


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
    from peft import LoraConfig, get_peft_model

    lora_peft = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM")
    setups = [Setup("transformers + PEFT LoRA (fp32)", get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), lora_peft))]
    ours = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    report = prepare_model(ours, QuantConfig(DataType.NF4, True, compute_dtype=ComputeDtype.FP32), LoRAConfig(rank=64, alpha=16, dropout=0.1))
    setups.append(Setup(f"ours QLoRA NF4+DQ (fp32 compute, {report.quantized_bits_per_param:.3f} bits/param)", ours))
    # bf16 compute (the paper's setting): the quantized layers dequantize to bf16, the rest autocasts
    ours_bf16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prepare_model(ours_bf16, QuantConfig(DataType.NF4, True, compute_dtype=ComputeDtype.BF16), LoRAConfig(rank=64, alpha=16, dropout=0.1))
    setups.append(Setup("ours QLoRA NF4+DQ (bf16 compute, autocast)", ours_bf16, autocast_bf16=True))
    if args.with_bnb:
        from transformers import BitsAndBytesConfig

        bnb_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                        bnb_4bit_compute_dtype=torch.bfloat16)  # fmt: skip
        bnb_model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=bnb_config, device_map="cpu")
        setups.append(Setup("bitsandbytes + PEFT QLoRA NF4+DQ (bf16 autocast)", get_peft_model(bnb_model, lora_peft), autocast_bf16=True))
    for s in setups:
        s.model.train()
        s.step(batch, record=False)  # warm-up
    for _ in range(args.repeats):  # round robin: background load hits every setup alike
        for s in setups:
            s.step(batch)
    rows = [(s.name, statistics.median(s.times), s.loss) for s in setups]

    peft_s = rows[0][1]
    print(f"\nSmolLM2-135M, LoRA r=64 all linear, batch {args.batch} x {args.seq}, one AdamW step; "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads\n")  # fmt: skip
    print("| setup | seconds / step (median) | vs PEFT fp32 | loss |")
    print("|---|---:|---:|---:|")
    for name, seconds, loss in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / peft_s:.2f}x | {loss:.3f} |")


if __name__ == "__main__":
    main()
