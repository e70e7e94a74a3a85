"""torchrun itself: a rank SIGKILLed mid-run fails the job cleanly, and re-running resumes to the
adapter of an uninterrupted run (the same ranks: bit for bit)."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qlora.distributed import torchrun_command
from qlora.train.checkpoint import latest_checkpoint
from tests.distributed import workers
from tests.distributed.ranks import run_ranks

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "distributed" / "torchrun_train.py"
STEPS = 4


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_a_rank_killed_mid_run_fails_the_job_and_a_rerun_resumes_to_the_same_adapter(tmp_path):
    reference = run_ranks(workers.train_tiny, {**workers.KILL_CONFIG, "max_steps": STEPS})[0]["adapter"]
    command = torchrun_command(2, SCRIPT, [tmp_path / "ckpt", tmp_path / "out.safetensors", STEPS])
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids, killed_at = {}, None
    for line in proc.stdout:
        # the ranks share one pipe with torch's stderr: an announcement may share its line with other output
        for rank, pid in re.findall(r"rank (\d+) pid (\d+)", line):
            pids[int(rank)] = int(pid)
        if re.search(r"\bstep 2\b", line):
            os.kill(pids[1], signal.SIGKILL)  # rank 1, possibly inside a collective or rank 0's checkpoint write
            killed_at = time.monotonic()
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, rest
    assert time.monotonic() - killed_at < 60  # torchrun stops the surviving rank; nothing hangs
    assert not (tmp_path / "out.safetensors").exists()
    resumed_from = latest_checkpoint(tmp_path / "ckpt")
    assert resumed_from is not None and resumed_from.name in ("step-00000001", "step-00000002")

    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("step ")]
    assert steps[0] in (2, 3) and steps[-1] == STEPS  # resumed, not started again
    out = load_file(tmp_path / "out.safetensors")
    assert out.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(out[name], value), name
