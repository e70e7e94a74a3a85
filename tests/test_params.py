"""params.yaml is generated from conf/: plain `dvc repro` reads it, so it must be up to date."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_params_yaml_is_composed_from_conf():
    spec = importlib.util.spec_from_file_location("compose_params", ROOT / "scripts" / "compose_params.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.compose_params()
    assert (ROOT / "params.yaml").read_text() == expected, "params.yaml is stale: run scripts/compose_params.py"
