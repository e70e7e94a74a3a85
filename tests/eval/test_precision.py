"""Scores from fp32 logits: the head's matmul in float32 under bf16 autocast, and nothing else changed."""

import torch
from torch import nn

from qlora.eval.precision import fp32_head, fp32_scoring
from tests.tiny_text import tiny_llama


def test_causal_head_in_fp32_under_autocast():
    model = tiny_llama(64).eval()
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(input_ids=ids).logits
        with fp32_head(model) as layers:
            assert layers == [model.lm_head]
            fp32 = model(input_ids=ids, output_hidden_states=True)
        hidden = fp32.hidden_states[-1]
    assert plain.dtype == torch.bfloat16 and fp32.logits.dtype == torch.float32
    expected = hidden.float() @ model.lm_head.weight.float().T  # the final norm's output, times the fp32 weight
    torch.testing.assert_close(fp32.logits, expected, rtol=1e-6, atol=1e-6)
    assert (fp32.logits - plain.float()).abs().max() > 0  # bf16 rounding is gone
    assert "forward" not in model.lm_head.__dict__  # restored


def test_exact_bf16_ties_are_resolved():
    """Two head rows that differ below bf16's resolution give equal bf16 logits and different fp32 ones."""
    head = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.001]]))
    model = nn.Sequential()
    model.add_module("classifier", head)
    x = torch.ones(1, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tied = model(x)
        with fp32_head(model):
            split = model(x)
    assert tied[0, 0] == tied[0, 1] and split[0, 1] > split[0, 0]


def test_decorator_and_no_head():
    calls = []

    @fp32_scoring
    def evaluate(model, x):
        calls.append("forward" in model.classifier.__dict__)
        return model(x)

    model = nn.Sequential()
    model.add_module("classifier", nn.Linear(3, 2))
    assert evaluate(model, torch.ones(1, 3)).dtype == torch.float32 and calls == [True]
    assert "forward" not in model.classifier.__dict__
    with fp32_head(nn.Sequential(nn.ReLU())) as layers:  # nothing to patch: nothing changes
        assert layers == []
