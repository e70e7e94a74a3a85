"""The embedded models by name wherever a model path is accepted (`qlora.model_dir`, `qlora.from_pretrained`,
`qlora quantize smollm2`), materialised once; a path that does not exist is a missing folder, a hub-id miss
names the embedded models, a near miss is answered with the right name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import qlora
from qlora.config import ModelSource
from qlora.data.embedded import EMBEDDED_MODELS, model_dir

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = {ModelSource.SMOLLM2, ModelSource.MINILM, ModelSource.GEMMA3_270M, ModelSource.QWEN25_CODER_05B}


def test_the_names_are_the_conf_model_options_with_embedded_sources():
    options = {f.stem: yaml.safe_load(f.read_text()) for f in (ROOT / "conf" / "model").glob("*.yaml")}
    from_conf = {name: (o["name"], o["source"], o["kind"]) for name, o in options.items() if o["source"] != "PRETRAINED"}
    assert {n: (m.name, m.source.name, m.kind.name) for n, m in EMBEDDED_MODELS.items()} == from_conf
    assert {m.source for m in EMBEDDED_MODELS.values()} == PACKAGED  # none offered that fails
    # the findings profile's optional Qwen2.5-Coder-1.5B (not installed by the default set-up) is a source, not a name
    assert set(ModelSource) - {ModelSource.PRETRAINED} == PACKAGED | {ModelSource.QWEN25_CODER_15B}


@pytest.fixture
def fake_materialise(monkeypatch, tiny_model_dir):
    """Materialising copies the tiny model (the real one is tested below); records the calls."""
    import shutil

    import qlora.data.sources

    calls = []

    def materialise(config, out_dir, *, gguf_cache_dir=None):
        calls.append((config.source, Path(out_dir)))
        shutil.copytree(tiny_model_dir, out_dir)
        return Path(out_dir)

    monkeypatch.setattr(qlora.data.sources, "materialise", materialise)
    return calls


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tests.tiny_text import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def test_a_name_is_materialised_once_into_the_cache(fake_materialise, tmp_path):
    folder = model_dir("smollm2", cache_dir=tmp_path)
    assert folder == tmp_path / "models" / "smollm2" and (folder / "config.json").is_file()
    assert model_dir("smollm2", cache_dir=tmp_path) == folder
    assert fake_materialise == [(ModelSource.SMOLLM2, folder)]


def test_from_pretrained_takes_a_name(fake_materialise, tmp_path):
    from qlora.nn.linear import QLoRALinear

    model = qlora.from_pretrained("smollm2", cache_dir=tmp_path, quant=qlora.QuantConfig("fp4", False))
    layers = [m for m in model.modules() if isinstance(m, QLoRALinear)]
    assert len(layers) == 14 and {m.weight.dtype.value for m in layers} == {"fp4"}


def test_a_folder_is_taken_as_it_is(tiny_model_dir):
    assert model_dir(tiny_model_dir) == tiny_model_dir and model_dir(str(tiny_model_dir)) == tiny_model_dir


@pytest.mark.parametrize(
    "given, message",
    [
        ("../nonexistent/model", "../nonexistent/model: no such model folder"),
        ("/no/such/dir", "/no/such/dir: no such model folder"),
        ("a/b/c", "a/b/c: no such model folder"),
        ("org/not-cached", "org/not-cached: no such model folder, and no hub id available here (offline); the embedded models load offline "
                           "by name: smollm2, gemma3_270m, qwen25_coder_05b, minilm"),
        ("smolm2", "smolm2: no such model folder, and no hub id available here (offline); did you mean smollm2?"),
        ("tiny_llama", "tiny_llama: no such model folder, and no hub id available here (offline); the embedded models"),
    ],
)
def test_misses_say_what_is_missing(given, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as caught:
        model_dir(given, cache_dir=tmp_path)
    assert str(caught.value).startswith(message) and "Repo id must" not in str(caught.value), str(caught.value)
    assert not (tmp_path / "models").exists()


def test_a_file_is_not_a_model_folder(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({}))
    with pytest.raises(FileNotFoundError, match=r"x.json: no such model folder$"):
        model_dir(tmp_path / "x.json")


@pytest.mark.slow
def test_the_real_smollm2_by_name_in_the_library_and_the_command_line(tmp_path, monkeypatch, capsys):
    """~30 s to materialise once, then both read the same folder of the cache."""
    from tests.peers import peer

    peer("gguf")
    from qlora.cli.main import main
    from qlora.nn.linear import QLoRALinear

    cache = tmp_path / "cache"
    model = qlora.from_pretrained("smollm2", cache_dir=cache)
    assert sum(isinstance(m, QLoRALinear) for m in model.modules()) == 210 and model.config.num_hidden_layers == 30
    assert (cache / "models" / "smollm2" / "tokenizer.json").is_file()
    monkeypatch.setenv("QLORA_CACHE", str(cache))
    monkeypatch.setattr("qlora.data.sources.materialise", lambda *a, **k: pytest.fail("materialised again"))
    code = main(["quantize", "smollm2", "--out", str(tmp_path / "q"), "--quiet", "--no-mlflow"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "SmolLM2-135M-Instruct as nf4_dq (block 64), 4.127 bits/param, 210 quantized layers" in out.out
