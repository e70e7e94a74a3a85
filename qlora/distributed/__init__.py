"""Multi-process training: FSDP2 sharding of quantized models, launched with torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node N script.py   # one rank per GPU

Each rank calls `init_world()`, builds the same model, `shard_model(model)` (one FSDP2 group per layer
block, then the root; the 4-bit codes sharded by rows) and trains it with `qlora.train.train`, which
follows the process group: each rank takes its share of every global batch, and rank 0 logs and
writes. `gathered(model)` lends the whole model for saving. Tested on CPU with gloo.
"""

from qlora._lazy import attach

_LAZY = {
    "RanksFailed": "qlora.distributed.launch",
    "ShardReport": "qlora.distributed.sharding",
    "World": "qlora.distributed.world",
    "close_world": "qlora.distributed.world",
    "current_world": "qlora.distributed.world",
    "full_tensor": "qlora.distributed.state",
    "gather_optimizer_state": "qlora.distributed.optim_state",
    "gathered": "qlora.distributed.state",
    "init_world": "qlora.distributed.world",
    "launch": "qlora.distributed.launch",
    "launched_by_torchrun": "qlora.distributed.world",
    "local_shard": "qlora.distributed.state",
    "mixed_precision_policy": "qlora.distributed.sharding",
    "quantized_bytes": "qlora.distributed.sharding",
    "shard_model": "qlora.distributed.sharding",
    "shard_optimizer_state": "qlora.distributed.optim_state",
    "torchrun_command": "qlora.distributed.launch",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = attach(__name__, _LAZY)
