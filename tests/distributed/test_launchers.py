"""Hydra launchers for sweeps (conf/hydra/launcher/): composed from the real plugins' schemas and checked
the way the plugins would use them; the SLURM one down to the sbatch script submitit would submit (no
cluster here)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"


def launcher(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    return cfg, OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_local_joblib_runs_two_jobs_at_once():
    _, params = launcher("hydra/launcher=local_joblib")
    assert params["_target_"] == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert params["n_jobs"] == 2 and params["prefer"] == "processes"
    made = instantiate(params)  # what Hydra does with it
    assert type(made).__name__ == "JoblibLauncher" and made.joblib["n_jobs"] == 2


@pytest.mark.parametrize("ranks", [1, 8])
def test_slurm_gives_each_job_one_task_with_a_gpu_per_torchrun_rank(ranks):
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    cfg, params = launcher("hydra/launcher=slurm", f"train.nproc_per_node={ranks}", "hydra.launcher.partition=gpu")
    assert params["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert params["tasks_per_node"] == 1 and params["nodes"] == 1 and params["gpus_per_node"] == cfg.train.nproc_per_node == ranks
    made = instantiate({**params, "submitit_folder": "/tmp/submitit/%j"})
    assert type(made).__name__ == "SlurmLauncher"
    # the plugin's translation to submitit's SLURM parameters, then the sbatch script (unknown names raise)
    skip = ("submitit_folder", "_target_", "max_num_timeout")  # executor settings, not sbatch ones
    sbatch = {SlurmExecutor._equivalence_dict().get(k, k): v for k, v in params.items() if k not in skip}
    sbatch["mem"] = f"{sbatch['mem']}GB"
    script = _make_sbatch_string("python stages/sweep.py", folder="/tmp/submitit/%j", **{k: v for k, v in sbatch.items() if v is not None})
    for line in (f"#SBATCH --gpus-per-node={ranks}", "#SBATCH --ntasks-per-node=1", "#SBATCH --nodes=1", "#SBATCH --partition=gpu",
                 "#SBATCH --cpus-per-task=32", "#SBATCH --time=720", "#SBATCH --mem=64GB"):  # fmt: skip
        assert line in script, line
