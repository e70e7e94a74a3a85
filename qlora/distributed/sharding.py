"""FSDP2 sharding of a (quantized) model: one group per decoder layer, then the root.

`shard_model` applies `torch.distributed.fsdp.fully_shard` to every block of the model's layer stack
and then to the whole model (the embeddings, final norm and head), over a 1-D device mesh of all
ranks. Each rank then keeps 1/N of every parameter, the frozen 4-bit codes included (they are frozen
integer Parameters of shape (out, in / 2): `qlora.nn.linear`, `# Note: sharded storage`), and FSDP
all-gathers a block's parameters just before it runs and frees them after. Gradients of the adapters
are reduce-scattered (averaged over the ranks) once per optimizer step.

Mixed precision (`mixed_precision_policy`): on GPU the floating parameters are gathered in bf16 and
gradients reduced in fp32 (`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`); on CPU
everything stays fp32. The policy casts floating parameters only: the quantized state is stored as
integers, so it is gathered byte for byte and dequantizes exactly as on one process.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from qlora.distributed.world import World, current_world
from qlora.nn.linear import QLoRALinear


def mixed_precision_policy(device: torch.device | str) -> MixedPrecisionPolicy:
    """bf16 compute with fp32 gradient reduction on CUDA; fp32 throughout on CPU."""
    if torch.device(device).type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)


def layer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model's layer stack (a transformers model's decoder/encoder layers).

    The elements of every outermost `nn.ModuleList` of the model; when the model names its blocks'
    classes (`_no_split_modules`, transformers), only elements of those classes.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside or not isinstance(module, nn.ModuleList):
            continue
        chosen = [m for m in module if not names or type(m).__name__ in names]
        if chosen and any(True for _ in module.parameters()):
            blocks += chosen
            inside.update(id(m) for m in module.modules())
    return blocks


@dataclasses.dataclass(frozen=True)
class ShardReport:
    """What `shard_model` did.

    Attributes:
        blocks: the number of layer blocks sharded as their own FSDP group.
        replicated: the quantized layers whose quantized state every rank holds whole (their rows would
            split quantization blocks: in_features % block_size != 0).
        quantized_bytes: bytes of the codes and first-level block constants in the whole model.
        local_quantized_bytes: bytes of them that this rank holds.
    """

    blocks: int
    replicated: tuple[str, ...]
    quantized_bytes: int
    local_quantized_bytes: int


def _local_bytes(t: torch.Tensor) -> int:
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def quantized_bytes(model: nn.Module, *, local: bool) -> int:
    """Bytes of the quantized layers' codes and first-level block constants (`quantized_parameters`):
    this rank's shards when `local`, else the whole model's. (Double quantization's second level, 1/256
    of the constants plus a 256-entry map per layer, is replicated and not counted.)"""
    total = 0
    for m in model.modules():
        if isinstance(m, QLoRALinear):
            tensors = m.quantized_parameters()
            total += sum(_local_bytes(t) if local else t.numel() * t.element_size() for t in tensors)
    return total


def _check_same_model(model: nn.Module, world: World) -> None:
    """Every rank must shard the same model: each keeps its own copy's rows. Compares a checksum of the
    trainable parameters (a differently seeded adapter init is the usual cause) in one all-gather."""
    import torch.distributed as dist

    trainable = [p.detach() for p in model.parameters() if p.requires_grad]
    local = torch.stack([t.double().sum() for t in trainable] or [torch.zeros((), dtype=torch.float64)]).sum().reshape(1)
    local = torch.cat([local, torch.tensor([float(len(trainable))], dtype=torch.float64)]).to(world.device)
    every = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(every, local)
    if any(not torch.equal(e, every[0]) for e in every):
        raise ValueError("the ranks built different models (their trainable parameters differ): seed the adapter init "
                         "(torch.manual_seed) the same way on every rank before shard_model")  # fmt: skip


def shard_model(model: nn.Module, *, world: World | None = None, mesh: DeviceMesh | None = None,
                mp_policy: MixedPrecisionPolicy | None = None) -> ShardReport:  # fmt: skip
    """Shards `model` in place with FSDP2 over all ranks (call it on every rank, with the same model).

    The model must be on the rank's device (`World.device`) with its adapters already added. Quantized
    layers whose rows would split quantization blocks keep their quantized state replicated (one
    warning names them); everything else is sharded by rows.

    Args:
        world: this rank's World (default: the initialized process group's).
        mesh: the 1-D data-parallel mesh (default: all ranks on `world.device`'s type).
        mp_policy: default `mixed_precision_policy(world.device)`.

    Returns:
        ShardReport.

    Raises:
        RuntimeError: torch.distributed is not initialized.
        ValueError: the ranks hold different trainable parameters (e.g. adapters initialised unseeded).
    """
    world = world or current_world()
    if world is None:
        raise RuntimeError("torch.distributed is not initialized: call qlora.distributed.init_world() under torchrun first")
    mesh = mesh or init_device_mesh(world.device.type, (world.size,))
    mp_policy = mp_policy or mixed_precision_policy(world.device)
    total = quantized_bytes(model, local=False)
    replicated = {name: m for name, m in model.named_modules() if isinstance(m, QLoRALinear) and not m.row_shardable}
    ignored = {p for m in replicated.values() for p in m.quantized_parameters()}
    if replicated:
        first = next(iter(replicated.values()))
        warnings.warn(
            f"{len(replicated)} quantized layer(s) keep their 4-bit state replicated on every rank, not sharded: their "
            f"rows would split quantization blocks (in_features % block_size != 0, e.g. {first.in_features} % "
            f"{first.weight.block_size}): {', '.join(replicated)}", stacklevel=2)  # fmt: skip
    _check_same_model(model, world)
    blocks = layer_blocks(model)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp_policy, ignored_params=ignored or None)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, ignored_params=ignored or None)
    return ShardReport(len(blocks), tuple(replicated), total, quantized_bytes(model, local=True))
