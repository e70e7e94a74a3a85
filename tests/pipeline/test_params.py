"""params.yaml is generated from conf/: plain `dvc repro` reads it, so it must be up to date."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_params_yaml_is_composed_from_conf():
    spec = importlib.util.spec_from_file_location("compose_params", ROOT / "scripts" / "compose_params.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path, overrides in module.PROFILES.items():
        expected = module.compose_params(overrides)
        assert (ROOT / path).read_text() == expected, f"{path} is stale: run scripts/compose_params.py"


def test_dvc_hydra_composition_writes_the_committed_params(tmp_path):
    """`dvc exp run` (hydra.enabled) rewrites params.yaml with DVC's own composer: it must produce the
    committed file byte for byte, or every experiment would show a spurious params diff."""
    from dvc.utils.hydra import compose_and_dump

    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(ROOT / "conf"), None, "config", str(tmp_path / "plugins"), [])
    assert out.read_text() == (ROOT / "params.yaml").read_text()
    compose_and_dump(out, str(ROOT / "conf"), None, "config", str(tmp_path / "plugins"), ["quant=fp4"])
    main_quant = out.read_text().split("\nquant:\n")[1].split("\nquants:")[0]
    assert "dtype: FP4\n" in main_quant and "double_quant: false" in main_quant, main_quant
