"""What the ranks of the distributed tests run (module-level functions: the forkserver imports them)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qlora.config import ComputeDtype, LoRAConfig, QuantConfig
from qlora.distributed import gathered, shard_model
from qlora.models.surgery import prepare_model
from qlora.nn.linear import QLoRALinear
from qlora.quant.dtypes import DataType
from qlora.train import TrainConfig, train


def tiny_qlora(seed: int = 0, *, block_size: int = 32, hidden: int = 32, intermediate: int = 64, rank: int = 4,
               double_quant: bool = True, compute: ComputeDtype = ComputeDtype.FP32) -> LlamaForCausalLM:  # fmt: skip
    """A 2-layer Llama with every linear layer but the head NF4-quantized and adapted (no dropout)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, attention_dropout=0.0)  # fmt: skip
    model = LlamaForCausalLM(config)
    quant = QuantConfig(DataType.NF4, double_quant, block_size, compute)
    prepare_model(model, quant, LoRAConfig(rank=rank, alpha=2.0 * rank, dropout=0.0))
    return model


def examples(n: int = 13, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = 5 + int(torch.randint(0, 9, (1,), generator=g))
        ids = torch.randint(1, 64, (length,), generator=g)
        labels = ids.clone()
        labels[: length // 2] = -100  # loss on the "response" half
        out.append({"input_ids": ids, "labels": labels})
    return out


def adapter_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole trainable parameters (gathered when sharded: every rank calls it)."""
    with gathered(model):
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train_tiny(rank: int, world_size: int, config: dict, checkpoint_dir: str | None = None, n_examples: int = 13) -> dict:
    model = tiny_qlora()
    if world_size > 1:
        shard_model(model)
    result = train(model, examples(n_examples), TrainConfig(**config), checkpoint_dir=checkpoint_dir, progress=False)
    return {"losses": result.losses, "adapter": adapter_of(model), "resumed_from": result.resumed_from,
            "memory": result.history[-1].memory if result.history else None}  # fmt: skip


def quantized_layers(model: torch.nn.Module) -> dict[str, QLoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QLoRALinear)}


def noop(rank: int, world_size: int) -> int:
    return rank


def dequantized_in_forward(rank: int, world_size: int, mp_bf16: bool) -> dict:
    """Shards a model (bf16 mixed precision when asked) and records, inside each quantized layer's
    forward (where FSDP has gathered its parameters), the dequantized weight and the adapter's dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from qlora.quant.api import dequantize

    model = tiny_qlora(compute=ComputeDtype.BF16 if mp_bf16 else ComputeDtype.FP32)
    seen: dict[str, tuple] = {}

    def record(name):
        def hook(module, args):
            seen[name] = (dequantize(module.weight, torch.float32), module.lora_a.dtype, type(module.qweight).__name__)
        return hook

    for name, m in quantized_layers(model).items():
        m.register_forward_pre_hook(record(name))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mp_bf16 else None
    shard_model(model, mp_policy=policy)
    model(input_ids=torch.ones(1, 4, dtype=torch.long))
    return seen


class Stack(torch.nn.Module):
    def __init__(self, blocks: list[torch.nn.Module]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            x = block(x)
        return x


def shard_layout(rank: int, world_size: int) -> dict:
    """Local shard shapes and bytes of a model with uneven rows (9 outputs) and a layer whose rows split blocks."""
    import warnings

    from qlora.distributed import quantized_bytes

    torch.manual_seed(0)
    model = Stack([torch.nn.Sequential(torch.nn.Linear(64, 9), torch.nn.Linear(9, 64)),
                   torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 64))])  # fmt: skip
    prepare_model(model, QuantConfig(DataType.NF4, True, 32, ComputeDtype.FP32), LoRAConfig(rank=2, alpha=4.0, dropout=0.0))
    x = torch.randn(3, 64)
    reference = model(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = shard_model(model)
    y = model(x)
    layers = quantized_layers(model)
    return {
        "report": report,
        "warnings": [str(w.message) for w in caught if "replicated" in str(w.message)],
        "local_rows": {n: tuple(m.qweight.to_local().shape) if hasattr(m.qweight, "to_local") else None for n, m in layers.items()},
        "types": {n: type(m.qweight).__name__ for n, m in layers.items()},
        "local_bytes": quantized_bytes(model, local=True),
        "forward_matches": torch.equal(y, reference),
    }


def save_sharded(rank: int, world_size: int, folder: str) -> dict:
    """Saves a trained-looking sharded model (adapter + bitsandbytes layout), written by rank 0 only."""
    from qlora.models.saving import Save, save_pretrained

    model = tiny_qlora(block_size=64, hidden=64, intermediate=128)
    with torch.no_grad():
        for m in quantized_layers(model).values():
            m.lora_b.normal_(generator=torch.Generator().manual_seed(7))
    shard_model(model)
    with gathered(model):
        if rank == 0:
            save_pretrained(model, folder, what=Save.ADAPTER | Save.QUANTIZED_MODEL)
    still_sharded = all(hasattr(m.qweight, "to_local") for m in quantized_layers(model).values())
    return {"still_sharded": still_sharded}


def train_tiny_bytes(rank: int, world_size: int) -> dict:
    from qlora.distributed import quantized_bytes

    model = tiny_qlora(block_size=32, hidden=64, intermediate=128)
    total = quantized_bytes(model, local=False)
    shard_model(model)
    return {"total": total, "local": quantized_bytes(model, local=True)}


def train_tiny_logged(rank: int, world_size: int, config: dict, checkpoint_dir: str | None = None) -> dict:
    """train_tiny, recording on_step calls and which ranks wrote checkpoint files."""
    seen = []
    model = tiny_qlora()
    shard_model(model)
    train(model, examples(), TrainConfig(**config), checkpoint_dir=checkpoint_dir, progress=True, on_step=seen.append)
    return {"steps": [m.step for m in seen]}


def eight_bit_state(rank: int, world_size: int) -> dict:
    """PagedAdamW 8-bit on a sharded parameter of 5120 elements (2560 per rank, below the 4096 minimum)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from qlora.distributed import gather_optimizer_state, shard_optimizer_state
    from qlora.optim import AdamWConfig, PagedAdamW, StateBits

    mesh = init_device_mesh("cpu", (world_size,))
    torch.manual_seed(0)
    full = torch.randn(80, 64)
    p = torch.nn.Parameter(distribute_tensor(full, mesh, [Shard(0)], src_data_rank=None))
    opt = PagedAdamW([p], config=AdamWConfig(lr=1e-2, bits=StateBits.BITS_8))
    for step in range(3):
        p.grad = distribute_tensor(torch.randn(80, 64, generator=torch.Generator().manual_seed(step)), mesh, [Shard(0)],
                                   src_data_rank=None)  # fmt: skip
        opt.step()
    local = {k: v.clone() for k, v in opt.state[p].items()}
    whole = gather_optimizer_state(opt, [p])
    back = shard_optimizer_state(whole, [p])["state"][0]
    return {"keys": sorted(local), "local_numel": p.to_local().numel(), "whole": whole,
            "round_trip_exact": all(torch.equal(back[k], local[k]) for k in local), "param": p.full_tensor()}  # fmt: skip


def train_unsharded(rank: int, world_size: int) -> None:
    train(tiny_qlora(), examples(), TrainConfig(max_steps=1), progress=False)


KILL_CONFIG = dict(micro_batch_size=4, grad_accum=2, lr=2e-2, warmup_ratio=0.0, save_every=1, seed=3)
