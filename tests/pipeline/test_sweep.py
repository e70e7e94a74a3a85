"""A refused sweep job (`stages/sweep.py`) removes only the output folder Hydra made for it, never a
folder that holds anything else: `hydra.run.dir=.` makes the working copy the job's folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sweep(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": "", "QLORA_CACHE": str(cwd.parent / "cache")}
    return subprocess.run([sys.executable, str(ROOT / "stages" / "sweep.py"), *overrides], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*")) if ".hydra" not in p.parts
            and p.name != "sweep.log"}  # fmt: skip


def test_a_refused_job_in_the_working_copy_deletes_nothing(tmp_path):
    work = tmp_path / "copy"
    (work / "src").mkdir(parents=True)
    (work / "README.md").write_text("mine\n")
    (work / "src" / "code.py").write_text("print(1)\n")
    (work / "notes.log").write_text("a log the user keeps\n")
    before = tree(work)
    done = sweep(work, "hydra.run.dir=.", "train.lr=nan")
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == "error: train.lr=nan: expected a finite number", done.stderr
    assert tree(work) == before


def test_a_refused_job_removes_the_folder_hydra_made_for_it(tmp_path):
    done = sweep(tmp_path, "hydra.run.dir=runs/job", "train.lr=nan")
    assert done.returncode == 1 and "train.lr=nan" in done.stderr
    assert (tmp_path / "runs").is_dir() and not (tmp_path / "runs" / "job").exists()
