"""Memory and speed of QLoRA training at 1 process vs N FSDP2 ranks on one machine
(reports/performance.md, "Multi-process training (FSDP2)").

    .venv/bin/python benchmarks/bench_fsdp.py --model tiny|<model folder> [--data tokens.safetensors] [--nproc 2]
        [--steps 4] [--micro-batch-size 4] [--out result.json]

On CPU the ranks share the machine's cores (gloo); with GPUs each rank takes one (NCCL, bf16 compute
and a bf16 mixed-precision policy) and the single-process runs use one GPU.

Runs the same training three times: one process with one torch thread, one process with a thread per
core used, then N ranks under torchrun with one thread each (the same cores). Per rank it records the frozen weights it holds
(4-bit codes + block constants, and all frozen tensors), its peak RSS, and tokens/s over the steps after
the first. N ranks on N cores measure the overhead of sharding (gathers, reductions, extra processes),
never a speed-up: the cores are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _model(spec: str):
    import torch

    from qlora.config import ComputeDtype, LoRAConfig, ModelKind, QuantConfig
    from qlora.quant.dtypes import DataType

    compute = ComputeDtype.AUTO if torch.cuda.is_available() else ComputeDtype.FP32  # AUTO: bf16 on CUDA
    torch.manual_seed(0)
    if spec == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        from qlora.models.surgery import prepare_model

        config = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=512, attention_dropout=0.0)  # fmt: skip
        model = LlamaForCausalLM(config)
        prepare_model(model, QuantConfig(DataType.NF4, True, 64, compute), LoRAConfig(rank=16, alpha=16.0, dropout=0.0))
        return model
    from qlora.models.loading import load_for_training

    return load_for_training(spec, ModelKind.CAUSAL_LM, QuantConfig(DataType.NF4, True, 64, compute),
                             LoRAConfig(rank=64, alpha=16.0, dropout=0.0))  # fmt: skip


def _examples(spec: str, data: str | None, n: int):
    import torch

    if data:
        from qlora.data.tokenization import TokenizedDataset

        dataset = TokenizedDataset.load(data)
        return [dataset[i] for i in range(min(n, len(dataset)))]
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 256, (128,), generator=g)
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def _local_bytes(tensors) -> int:
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in local)


def rank_main(args: argparse.Namespace) -> None:
    """One rank (or the single process): build, shard when N > 1, train, write this rank's numbers."""
    import torch

    from qlora.distributed import launched_by_torchrun
    from qlora.distributed.sharding import quantized_bytes
    from qlora.train import TrainConfig, train
    from qlora.train.memory import peak_rss_bytes

    world = None
    if launched_by_torchrun():
        from qlora.distributed import init_world, shard_model

        world = init_world()
    else:
        torch.set_num_threads(args.threads)
    model = _model(args.model)
    if torch.cuda.is_available():
        model.to(world.device if world is not None else torch.device("cuda"))
    if world is not None and world.size > 1:
        shard_model(model)
    examples = _examples(args.model, args.data, args.examples)
    seen = []
    config = TrainConfig(max_steps=args.steps, micro_batch_size=args.micro_batch_size, lr=2e-4, warmup_ratio=0.0,
                         group_by_length=False, max_grad_norm=0.3)  # fmt: skip
    began = time.perf_counter()
    train(model, examples, config, progress=False, on_step=seen.append)
    rank = 0 if world is None else world.rank
    result = {"rank": rank, "seconds": time.perf_counter() - began, "quantized_bytes_local": quantized_bytes(model, local=True),
              "quantized_bytes_total": quantized_bytes(model, local=False), "peak_rss": peak_rss_bytes(),
              "threads": torch.get_num_threads(), "frozen_bytes": _local_bytes(
                  [p for p in model.parameters() if not p.requires_grad] + list(model.buffers()))}  # fmt: skip
    if seen:  # rank 0: tokens/s over the steps after the first (warm-up)
        timed = seen[1:] or seen
        result["tokens_per_s"] = sum(m.tokens for m in timed) / sum(m.tokens / m.tokens_per_s for m in timed)
        result["losses"] = [m.loss for m in seen]
    every = [result]
    if world is not None and world.size > 1:
        import torch.distributed as dist

        every = [None] * world.size
        dist.all_gather_object(every, result)
    if rank == 0:
        Path(args.out).write_text(json.dumps(every, indent=2))


def run(model: str, nproc: int, cores: int, steps: int, data: str | None, micro_batch_size: int, examples: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        rest = ["--rank", "--model", model, "--steps", str(steps), "--out", str(out), "--threads", str(cores),
                "--micro-batch-size", str(micro_batch_size), "--examples", str(examples)] + (["--data", data] if data else [])  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        if nproc == 1:
            command = [sys.executable, __file__, *rest]
        else:
            from qlora.distributed.launch import torchrun_command

            command = torchrun_command(nproc, __file__, rest)
        subprocess.run(command, env=env, check=True)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' or a model folder (e.g. artifacts/models/causal)")
    parser.add_argument("--data", default=None, help="a token file (default: random tokens)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank:
        rank_main(args)
        return
    cores = args.nproc
    common = (args.steps, args.data, args.micro_batch_size, args.examples)
    results = {"model": args.model, "cores": cores, "load_avg": os.getloadavg(),
               "one_1_thread": run(args.model, 1, 1, *common), f"one_{cores}_threads": run(args.model, 1, cores, *common),
               "ranks": run(args.model, args.nproc, cores, *common)}  # fmt: skip
    results["load_avg_after"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
