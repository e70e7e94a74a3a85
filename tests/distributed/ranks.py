"""Run a function on N ranks of a gloo process group on CPU, from inside a test (no torchrun).

Ranks are processes forked from a `forkserver` that has imported torch, transformers and qlora once per
test session, so each call costs process start-up of ~0.1 s instead of ~5 s of imports. The target is a
module-level function `target(rank, world_size, *args)`; its return values come back in rank order
(through torch.save files in a temporary folder), and an exception on any rank fails the call with that
rank's traceback. torchrun itself is tested separately (tests/distributed/test_launch.py).
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import traceback
from pathlib import Path

import torch

_PRELOAD = ["torch", "torch.distributed.fsdp", "transformers", "qlora.nn.linear", "qlora.models.surgery",
            "qlora.distributed.sharding", "qlora.train.trainer", "tests.distributed.workers", "tests.distributed.warm"]  # fmt: skip
_CONTEXT = mp.get_context("forkserver")
_CONTEXT.set_forkserver_preload(_PRELOAD)


def _rank_main(target, rank: int, world_size: int, folder: str, args: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # N ranks share the machine's cores
    out = Path(folder)
    try:
        dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=rank, world_size=world_size)
        result = target(rank, world_size, *args)
        torch.save(result, out / f"result{rank}.pt")
    except BaseException:
        (out / f"error{rank}.txt").write_text(traceback.format_exc())
        raise SystemExit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(target, *args, world_size: int = 2, timeout_s: float = 120.0) -> list:
    """`target(rank, world_size, *args)` on each rank; the results in rank order."""
    with tempfile.TemporaryDirectory() as folder:
        procs = [_CONTEXT.Process(target=_rank_main, args=(target, r, world_size, folder, args)) for r in range(world_size)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout_s)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        errors = [(r, Path(folder, f"error{r}.txt")) for r in range(world_size)]
        errors = [f"rank {r}:\n{path.read_text()}" for r, path in errors if path.exists()]
        codes = [p.exitcode for p in procs]
        if errors or any(c != 0 for c in codes):
            raise AssertionError(f"ranks failed (exit codes {codes}):\n" + "\n".join(errors))
        return [torch.load(Path(folder, f"result{r}.pt"), weights_only=False) for r in range(world_size)]
