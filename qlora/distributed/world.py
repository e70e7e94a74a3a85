"""The ranks of a multi-process run: joining the process group torchrun set up, and which rank this is.

torchrun (`python -m torch.distributed.run --nproc_per_node N script ...`) starts N copies of a script
and tells each, through its environment, where to meet; `torch.distributed.init_process_group` reads
that (the `env://` rendezvous), so nothing here reads the environment itself. The backend follows the
device: NCCL with one GPU per rank, gloo on CPU (where all of this is tested).
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class World:
    """This process' place in a multi-process run.

    Attributes:
        rank: 0 .. size - 1; rank 0 writes the outputs and logs.
        size: the number of ranks.
        device: where this rank computes (cuda:<rank % GPUs per node>, or cpu).
    """

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a torchrun launch (torch's own test of its environment)."""
    return dist.is_torchelastic_launched()


def current_world() -> World | None:
    """The World of an initialized process group, or None when torch.distributed is not in use."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    rank, size = dist.get_rank(), dist.get_world_size()
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return World(rank, size, device)


def init_world(*, timeout_s: float = 1800.0) -> World:
    """Joins the process group of a torchrun launch (or returns the one already joined); it is left
    when the process exits (`close_world`).

    On a machine with GPUs each rank takes GPU `rank % device_count` (one rank per GPU, as
    `--nproc_per_node` = the number of GPUs gives) and the NCCL backend; without GPUs, gloo on CPU.

    Args:
        timeout_s: how long a collective may wait for the other ranks before failing.

    Raises:
        RuntimeError: not launched by torchrun (no rendezvous to join).
    """
    world = current_world()
    if world is not None:
        return world
    if not launched_by_torchrun():
        raise RuntimeError("not started by torchrun: run `python -m torch.distributed.run --nproc_per_node N ...`")
    if torch.cuda.is_available():
        dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=timeout_s))
        torch.cuda.set_device(dist.get_rank() % torch.cuda.device_count())
    else:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
    atexit.register(close_world)  # leave the group when the process ends, whoever joined it
    return current_world()


def close_world() -> None:
    """Leaves the process group (if any); every rank calls it at the end."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
