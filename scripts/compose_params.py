"""Writes params.yaml (and each profile folder's, e.g. findings/params.yaml) from conf/ with Hydra's compose
API (what `dvc exp run` does with hydra.enabled for the root params.yaml)."""

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

root = Path(__file__).resolve().parent.parent


def compose_params(overrides: list[str] | None = None) -> str:
    with initialize_config_dir(config_dir=str(root / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=overrides or [])
    return OmegaConf.to_yaml(cfg, resolve=True)


# params files of the pipelines: the root's (the default profile) and each profile folder's
PROFILES = {"params.yaml": [], "findings/params.yaml": ["experiment=findings"]}

if __name__ == "__main__":
    for path, overrides in PROFILES.items():
        (root / path).parent.mkdir(exist_ok=True)
        (root / path).write_text(compose_params(overrides + sys.argv[1:]))
