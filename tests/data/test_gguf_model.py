"""SmolLM2 from its GGUF package to a plain safetensors folder (slow: the GGUF load takes ~20-30 s)."""

import json

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    from qlora.data.gguf_model import materialise_smollm2

    return materialise_smollm2(tmp_path_factory.mktemp("smollm2") / "model")


def test_folder_is_plain_llama(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert (smollm2_dir / "model.safetensors").is_file() and (smollm2_dir / "tokenizer.json").is_file()
    assert not [p for p in smollm2_dir.parent.iterdir() if p.name.startswith(".")]  # temp dir renamed away


def test_reload_matches_gguf_weights(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora.data.offline import smollm2_gguf_path

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    gguf = smollm2_gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for name, tensor in ref.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.chat_template and tok("Answer: A", add_special_tokens=False).input_ids[-1] == tok(" A", add_special_tokens=False).input_ids[0]


def test_refuses_to_overwrite(smollm2_dir, tmp_path):
    from qlora.data.gguf_model import materialise_gguf
    from qlora.data.offline import smollm2_gguf_path

    with pytest.raises(FileExistsError):
        materialise_gguf(smollm2_gguf_path(), smollm2_dir)  # checked before the slow load
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        materialise_gguf(tmp_path / "missing.gguf", tmp_path / "out")
