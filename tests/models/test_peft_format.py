"""Adapters move both ways between us and PEFT (a test dependency)."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from qlora.models.peft_format import AdapterWeights, TaskType, load_peft_adapter, save_peft_adapter
from tests.peers import peer

peft = peer("peft")


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()  # fmt: skip


def linear_names(model, skip=("lm_head", "classifier")):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] not in skip]


def random_adapter(model, rank=4, alpha=8.0):
    lora = {}
    for n in linear_names(model):
        w = model.get_submodule(n).weight
        lora[n] = (torch.randn(rank, w.shape[1]) * 0.1, torch.randn(w.shape[0], rank) * 0.1)
    return lora


def merged_logits(model, lora, scaling, ids):
    ref = LlamaForCausalLM(model.config).eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for n, (a, b) in lora.items():
            ref.get_submodule(n).weight += scaling * b @ a
        return ref(ids).logits


def test_our_adapter_loads_in_peft_with_the_same_logits(tmp_path):
    model = tiny_llama()
    lora = random_adapter(model)
    save_peft_adapter(tmp_path / "a", AdapterWeights(lora, rank=4, alpha=8.0, dropout=0.1, task_type=TaskType.CAUSAL_LM))
    peft_model = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "a").eval()
    ids = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        got = peft_model(ids).logits
    torch.testing.assert_close(got, merged_logits(model, lora, 8.0 / 4, ids), rtol=1e-4, atol=1e-5)


def test_peft_adapter_loads_here(tmp_path):
    model = tiny_llama()
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.05,
                                                            task_type="CAUSAL_LM"))  # fmt: skip
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    peft_model.save_pretrained(tmp_path / "p")
    a = load_peft_adapter(tmp_path / "p")
    assert a.rank == 4 and a.alpha == 8 and a.dropout == 0.05 and a.task_type is TaskType.CAUSAL_LM
    assert sorted(a.lora) == sorted(linear_names(tiny_llama()))
    q = peft_model.base_model.model.model.layers[1].mlp.up_proj
    assert torch.equal(a.lora["model.layers.1.mlp.up_proj"][0], q.lora_A["default"].weight)
    assert torch.equal(a.lora["model.layers.1.mlp.up_proj"][1], q.lora_B["default"].weight)


def test_classifier_head_round_trips_as_modules_to_save(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=3)
    bert = BertForSequenceClassification(config).eval()
    lora = {n: (torch.randn(2, bert.get_submodule(n).in_features), torch.randn(bert.get_submodule(n).out_features, 2))
            for n in linear_names(bert, skip=("classifier", "dense"))}  # fmt: skip
    extra = {"classifier.weight": torch.randn(3, 32), "classifier.bias": torch.randn(3)}
    adapter = AdapterWeights(lora, 2, 4.0, 0.0, TaskType.SEQ_CLS, extra=extra, modules_to_save=("classifier",))
    save_peft_adapter(tmp_path / "c", adapter)
    loaded = peft.PeftModel.from_pretrained(BertForSequenceClassification(config), tmp_path / "c").eval()
    head = loaded.base_model.model.classifier
    head_weight = head.modules_to_save["default"].weight if hasattr(head, "modules_to_save") else head.weight
    assert torch.equal(head_weight, extra["classifier.weight"])
    back = load_peft_adapter(tmp_path / "c")
    assert back.modules_to_save == ("classifier",) and torch.equal(back.extra["classifier.bias"], extra["classifier.bias"])


def test_bad_adapters_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"expected lora_A \(r=4, in\)"):
        AdapterWeights({"x": (torch.zeros(3, 8), torch.zeros(8, 4))}, 4, 8.0, 0.0, TaskType.CAUSAL_LM)
    model = tiny_llama()
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    peft_model.save_pretrained(tmp_path / "dora")
    with pytest.raises(ValueError, match="adapters with use_dora=true are not supported"):
        load_peft_adapter(tmp_path / "dora")
