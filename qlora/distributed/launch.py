"""Starting N ranks of a script on this machine with torchrun (`python -m torch.distributed.run`).

`--standalone` makes torchrun pick a free local port for the rendezvous, so several launches (parallel
sweep workers) can run side by side. torchrun watches its ranks: when one fails or is killed, it stops
the others and exits non-zero, and `launch` raises. What the ranks wrote atomically (checkpoints) stays,
so running the same command again resumes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


class RanksFailed(RuntimeError):
    """A torchrun launch ended with a non-zero status (a rank failed or was killed)."""

    def __init__(self, command: Sequence[str], status: int) -> None:
        self.command, self.status = list(command), status
        super().__init__(f"torchrun exited with status {status}: a rank failed or was killed ({' '.join(self.command)})")


def torchrun_command(nproc_per_node: int, script: str | Path, args: Sequence[str] = (), *, python: str | None = None) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node N script args...` as an argv list.

    Raises:
        ValueError: nproc_per_node is not an integer >= 1.
    """
    if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int) or nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be an integer >= 1, got {nproc_per_node!r}")
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
            str(script), *map(str, args)]  # fmt: skip


def launch(nproc_per_node: int, script: str | Path, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
           cwd: str | Path | None = None) -> None:  # fmt: skip
    """Runs `script args` as `nproc_per_node` ranks and waits for them.

    Args:
        env: the ranks' environment (default: this process'); torchrun adds RANK, WORLD_SIZE, ....
        cwd: their working directory (default: this process').

    Raises:
        RanksFailed: torchrun exited non-zero.
    """
    command = torchrun_command(nproc_per_node, script, args)
    status = subprocess.run(command, env=None if env is None else dict(env), cwd=cwd).returncode
    if status != 0:
        raise RanksFailed(command, status)
