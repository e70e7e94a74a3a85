"""Optimizer state that would turn every later update into NaN is refused when it is loaded."""

import pytest
import torch

from qlora.optim import AdamWConfig, PagedAdamW, StateBits


def trained(bits: StateBits):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(70, 70)), torch.nn.Parameter(torch.randn(5))]
    opt = PagedAdamW(params, config=AdamWConfig(lr=1e-2, bits=bits))
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    return params, opt.state_dict()


def poke(key, index, value, bits=StateBits.BITS_32, param=0):
    def build():
        params, state = trained(bits)
        state["state"][param][key].view(-1)[index] = value
        return params, state

    return build


CASES = [
    ("exp-avg-nan", poke("exp_avg", 7, float("nan")), "'exp_avg' for parameter 0: 1 of 4900 values are not finite (e.g. nan)"),
    ("exp-avg-inf", poke("exp_avg", 0, float("-inf"), param=1), "'exp_avg' for parameter 1: 1 of 5 values are not finite"),
    ("exp-avg-sq-nan", poke("exp_avg_sq", 3, float("nan")), "'exp_avg_sq' for parameter 0: 1 of 4900 values are not finite and >= 0"),
    ("exp-avg-sq-negative", poke("exp_avg_sq", 3, -1.0), "'exp_avg_sq' for parameter 0: 1 of 4900 values are not finite and >= 0 (e.g. -1.0)"),
    ("step-nan", poke("step", 0, float("nan")), "'step' for parameter 0: 1 of 1 values"),
    ("step-negative", poke("step", 0, -3.0), "'step' for parameter 0"),
    ("8bit-absmax-inf", poke("exp_avg_absmax", 2, float("inf"), StateBits.BITS_8), "'exp_avg_absmax' for parameter 0: 1 of 20 values"),
    ("8bit-absmax-negative", poke("exp_avg_sq_absmax", 0, -0.5, StateBits.BITS_8), "'exp_avg_sq_absmax' for parameter 0"),
    ("8bit-small-param-moment-nan", poke("exp_avg", 1, float("nan"), StateBits.BITS_8, param=1), "'exp_avg' for parameter 1"),
]


@pytest.mark.parametrize("build, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_nonfinite_or_negative_state_is_refused(build, needle):
    params, state = build()
    bits = StateBits.BITS_8 if any("codes" in k for k in state["state"][0]) else StateBits.BITS_32
    fresh = PagedAdamW([torch.nn.Parameter(p.detach().clone()) for p in params], config=AdamWConfig(lr=1e-2, bits=bits))
    with pytest.raises(ValueError) as info:
        fresh.load_state_dict(state)
    assert needle in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "mangle, needle",
    [
        (lambda s: s.pop("state"), "must be a dict with 'state' (dict) and 'param_groups' (list), got ['param_groups']"),
        (lambda s: s.__setitem__("param_groups", {}), "'param_groups' (list)"),
        (lambda s: s["state"].__setitem__(0, [1, 2]), "optimizer state for parameter 0 must be a dict, got list"),
    ],
    ids=["state-missing", "groups-not-a-list", "param-state-not-a-dict"],
)
def test_state_dict_of_the_wrong_structure_is_refused(mangle, needle):
    params, state = trained(StateBits.BITS_32)
    mangle(state)
    fresh = PagedAdamW([torch.nn.Parameter(p.detach().clone()) for p in params], config=AdamWConfig(lr=1e-2))
    with pytest.raises(ValueError) as info:
        fresh.load_state_dict(state)
    assert needle in str(info.value), str(info.value)


def test_untampered_state_loads():
    params, state = trained(StateBits.BITS_8)
    fresh = PagedAdamW([torch.nn.Parameter(p.detach().clone()) for p in params], config=AdamWConfig(lr=1e-2, bits=StateBits.BITS_8))
    fresh.load_state_dict(state)
    assert fresh.state_dict()["state"][0]["step"].item() == 1.0
