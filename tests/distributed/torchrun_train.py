"""Trains the tiny sharded model as one rank of a torchrun launch (the SIGKILL test runs this).

usage: python -m torch.distributed.run --standalone --nproc_per_node 2 torchrun_train.py CKPT OUT STEPS
Each rank prints "rank R pid P" when sharded; rank 0 prints "step N" after each step and writes the
whole adapter to OUT at the end.
"""

import os
import sys

from safetensors.torch import save_file

from qlora.distributed import init_world, shard_model
from qlora.train import TrainConfig, train
from tests.distributed import workers

if __name__ == "__main__":
    ckpt, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    world = init_world()
    model = workers.tiny_qlora()
    shard_model(model)
    print(f"rank {world.rank} pid {os.getpid()}", flush=True)
    config = TrainConfig(**{**workers.KILL_CONFIG, "max_steps": steps})
    train(model, workers.examples(), config, checkpoint_dir=ckpt, progress=False, on_step=lambda m: print(f"step {m.step}", flush=True))
    adapter = workers.adapter_of(model)
    if world.is_main:
        save_file({k: v.contiguous() for k, v in adapter.items()}, out)
