"""Writes params.yaml from conf/ with Hydra's compose API (what `dvc exp run` does with hydra.enabled)."""

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

root = Path(__file__).resolve().parent.parent


def compose_params(overrides: list[str] | None = None) -> str:
    with initialize_config_dir(config_dir=str(root / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=overrides or [])
    return OmegaConf.to_yaml(cfg, resolve=True)


if __name__ == "__main__":
    (root / "params.yaml").write_text(compose_params(sys.argv[1:]))
