"""PagedAdamW: torch.optim.AdamW parity (32-bit), a bound on the 8-bit trajectory, state memory, resume,
config errors, paging on CPU. The CUDA paging path needs a GPU and is not exercised here."""

import io
import math

import pytest
import torch

from qlora.optim import AdamWConfig, PagedAdamW, StateBits
from qlora.optim import paging, state8bit
from tests.conftest import TOLERANCES

F32 = TOLERANCES[torch.float32]  # rtol 1e-5, atol 1e-6

SHAPES = [(7,), (33, 17), (4, 5, 6), (70, 70)]  # (70, 70): 4900 >= MIN_8BIT_SIZE, not a multiple of 256
HYPER = [  # (lr, betas, weight_decay)
    (1e-3, (0.9, 0.999), 0.0),
    (1e-3, (0.9, 0.999), 0.1),
    (3e-2, (0.8, 0.95), 0.01),
    (1e-4, (0.0, 0.5), 0.0),
]


def _params(shapes, dtype=torch.float32):
    return [torch.nn.Parameter(torch.randn(shape, dtype=dtype)) for shape in shapes]


def _clone(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def _set_grads(grads_per_step, *param_lists):
    for params in param_lists:
        for p, g in zip(params, grads_per_step):
            p.grad = None if g is None else g.clone()


def _random_grads(params, scale=1.0):
    return [scale * torch.randn_like(p) for p in params]


@pytest.mark.parametrize("lr, betas, weight_decay", HYPER)
def test_32bit_matches_torch_adamw_over_100_steps(lr, betas, weight_decay):
    ours = _params(SHAPES)
    theirs = _clone(ours)
    opt = PagedAdamW(ours, config=AdamWConfig(lr=lr, betas=betas, weight_decay=weight_decay, eps=1e-8))
    ref = torch.optim.AdamW(theirs, lr=lr, betas=betas, weight_decay=weight_decay, eps=1e-8)
    for step in range(100):
        _set_grads(_random_grads(ours, scale=10.0 ** (step % 3 - 1)), ours, theirs)
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, **F32)
        torch.testing.assert_close(opt.state[p]["exp_avg"], ref.state[q]["exp_avg"], **F32)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"], **F32)
        assert opt.state[p]["step"].item() == ref.state[q]["step"].item() == 100.0


def test_32bit_param_groups_and_lr_scheduler_match_torch():
    ours = _params([(16, 8), (8,)])
    theirs = _clone(ours)
    second = {"lr": 5e-2, "weight_decay": 0.0}
    opt = PagedAdamW([{"params": ours[:1]}, {"params": ours[1:], **second}], config=AdamWConfig(lr=1e-2, weight_decay=0.05))
    ref = torch.optim.AdamW([{"params": theirs[:1]}, {"params": theirs[1:], **second}], lr=1e-2, weight_decay=0.05)
    sched_ours = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    sched_ref = torch.optim.lr_scheduler.LambdaLR(ref, lambda s: min(1.0, (s + 1) / 10))
    for _ in range(30):
        _set_grads(_random_grads(ours), ours, theirs)
        opt.step(), ref.step(), sched_ours.step(), sched_ref.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, **F32)


def test_closure_loss_is_returned_and_used():
    (w,) = _params([(5,)])
    opt = PagedAdamW([w], config=AdamWConfig(lr=0.1))
    before = w.detach().clone()

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx((before**2).sum().item())
    assert not torch.equal(w.detach(), before)


def _regression(bits, lr, weight_decay, seed, steps=100):
    """Least squares Y = X W + b, W (64, 128) = 8192 elements (8-bit state), b (128,) (32-bit state)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 64, generator=gen)
    y = x @ (torch.randn(64, 128, generator=gen) / 8) + 0.01 * torch.randn(512, 128, generator=gen)
    w = torch.nn.Parameter(torch.zeros(64, 128))
    b = torch.nn.Parameter(torch.zeros(128))
    opt = PagedAdamW([w, b], config=AdamWConfig(lr=lr, weight_decay=weight_decay, bits=bits))
    trajectory, losses = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((x @ w + b - y) ** 2).mean()
        loss.backward()
        opt.step()
        trajectory.append(w.detach().clone())
        losses.append(loss.item())
    return trajectory, losses, opt


# Measured over seeds 0-4 and these three settings: max relative deviation 0.012-0.042, final loss ratio
# 8-bit / 32-bit 0.91-1.009. The bounds below leave ~1.5x headroom.
TRAJECTORY_BOUND = 0.06
LOSS_RATIO_BOUND = 1.05


@pytest.mark.parametrize("lr, weight_decay", [(1e-2, 0.0), (1e-3, 0.1), (3e-2, 0.01)])
def test_8bit_stays_within_bound_of_32bit_trajectory(lr, weight_decay):
    traj32, loss32, opt32 = _regression(StateBits.BITS_32, lr, weight_decay, seed=0)
    traj8, loss8, opt8 = _regression(StateBits.BITS_8, lr, weight_decay, seed=0)
    # Step 1 starts from zero moments in both: identical.
    torch.testing.assert_close(traj8[0], traj32[0], **F32)
    deviation = max(((a - b).norm() / a.norm()).item() for a, b in zip(traj32, traj8))
    assert deviation <= TRAJECTORY_BOUND, f"8-bit trajectory deviates by {deviation:.4f} (relative L2)"
    assert loss8[-1] <= LOSS_RATIO_BOUND * loss32[-1], (loss8[-1], loss32[-1])
    assert loss8[-1] < 0.5 * loss8[0]  # it does optimise
    w8 = opt8.param_groups[0]["params"][0]
    assert set(opt8.state[w8]) == {"step", "exp_avg_codes", "exp_avg_absmax", "exp_avg_sq_codes", "exp_avg_sq_absmax"}


def test_8bit_state_is_about_a_quarter_of_32bit():
    big, small = (256, 300), (10, 20)  # 76800 elements (8-bit), 200 (< MIN_8BIT_SIZE: stays 32-bit)
    sizes = {}
    for bits in StateBits:
        params = _params([big, small])
        opt = PagedAdamW(params, config=AdamWConfig(bits=bits))
        _set_grads(_random_grads(params), params)
        opt.step()
        sizes[bits] = {i: sum(t.numel() * t.element_size() for t in opt.state[p].values()) for i, p in enumerate(params)}
        assert opt.state_bytes() == sum(sizes[bits].values())
    n = math.prod(big)
    assert sizes[StateBits.BITS_32][0] == 2 * 4 * n + 4
    assert sizes[StateBits.BITS_8][0] == 2 * (n + 4 * math.ceil(n / 256)) + 4  # codes + absmax per moment
    ratio = sizes[StateBits.BITS_8][0] / sizes[StateBits.BITS_32][0]
    assert 0.25 < ratio < 0.26, ratio
    assert sizes[StateBits.BITS_8][1] == sizes[StateBits.BITS_32][1]  # small tensor: 32-bit state


def test_8bit_all_zero_gradient_block_stays_exact():
    (w,) = _params([(8, 1024)])
    before = w.detach().clone()
    opt = PagedAdamW([w], config=AdamWConfig(lr=1e-2, weight_decay=0.0, bits=StateBits.BITS_8))
    for _ in range(5):
        g = torch.randn_like(w)
        g[0] = 0.0  # row 0 = blocks 0-3: never any gradient
        w.grad = g
        opt.step()
    assert torch.equal(w.detach()[0], before[0])
    assert torch.isfinite(w).all()
    assert torch.equal(opt.state[w]["exp_avg_sq_absmax"][:4], torch.zeros(4))


def _train(opt, params, grads):
    for step_grads in grads:
        _set_grads(step_grads, params)
        opt.step()


@pytest.mark.parametrize("bits", list(StateBits))
@pytest.mark.parametrize("paged", [False, True])
def test_state_dict_round_trip_continues_bit_identically(bits, paged):
    config = AdamWConfig(lr=1e-2, weight_decay=0.01, bits=bits, paged=paged)
    shapes = [(70, 70), (13,), (3, 4)]
    params = _params(shapes)
    opt = PagedAdamW(params, config=config)
    grads = [[torch.randn(s) for s in shapes] for _ in range(20)]
    grads[3][2] = None  # a parameter missing its grad on one step
    _train(opt, params, grads[:10])

    buffer = io.BytesIO()  # what the trainer's checkpoint does: serialise, then load in a fresh optimizer
    torch.save({"params": [p.detach() for p in params], "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(p.clone()) for p in checkpoint["params"]]
    opt_resumed = PagedAdamW(resumed, config=config)
    opt_resumed.load_state_dict(checkpoint["optimizer"])

    _train(opt, params, grads[10:])
    _train(opt_resumed, resumed, grads[10:])
    for p, q in zip(params, resumed):
        assert torch.equal(p, q)
        assert opt.state[p].keys() == opt_resumed.state[q].keys()
        for key in opt.state[p]:
            assert torch.equal(opt.state[p][key], opt_resumed.state[q][key]), key
    if bits is StateBits.BITS_8:
        saved = checkpoint["optimizer"]["state"][0]
        assert saved["exp_avg_codes"].dtype == torch.uint8 and saved["exp_avg_absmax"].dtype == torch.float32


def test_torch_adamw_state_dict_loads_into_32bit():
    """A checkpoint of torch.optim.AdamW resumes in PagedAdamW (32-bit state) and continues identically."""
    params = _params([(6, 5), (4,)])
    ref = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    _train(ref, params, [_random_grads(params) for _ in range(5)])
    twins = _clone(params)
    opt = PagedAdamW(twins, config=AdamWConfig(lr=1e-2, weight_decay=0.1))
    opt.load_state_dict(ref.state_dict())
    grads = [_random_grads(params) for _ in range(5)]
    _train(ref, params, grads)
    _train(opt, twins, grads)
    for p, q in zip(params, twins):
        torch.testing.assert_close(q, p, **F32)


def test_load_state_dict_of_the_wrong_form_raises():
    params = _params([(70, 70)])
    opt8 = PagedAdamW(params, config=AdamWConfig(bits=StateBits.BITS_8))
    _train(opt8, params, [_random_grads(params)])
    opt32 = PagedAdamW(_clone(params), config=AdamWConfig(bits=StateBits.BITS_32))
    with pytest.raises(ValueError, match="exp_avg_codes"):
        opt32.load_state_dict(opt8.state_dict())
    other_shape = PagedAdamW(_params([(10, 490)]), config=AdamWConfig(bits=StateBits.BITS_8))
    state = opt8.state_dict()
    state["state"][0]["exp_avg_absmax"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"exp_avg_absmax.*\(3,\)"):
        other_shape.load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs, error, named",
    [
        (dict(lr=-1e-3), ValueError, "-0.001"),
        (dict(lr=float("nan")), ValueError, "nan"),
        (dict(betas=(1.0, 0.999)), ValueError, "1.0"),
        (dict(betas=(0.9, -0.1)), ValueError, "-0.1"),
        (dict(betas=(0.9,)), ValueError, r"\(0.9,\)"),
        (dict(eps=-1e-8), ValueError, "-1e-08"),
        (dict(weight_decay=-0.1), ValueError, "-0.1"),
        (dict(bits=16), ValueError, "16"),
        (dict(bits=True), ValueError, "True"),
        (dict(bits="8"), ValueError, "'8'"),
        (dict(lr="1e-3"), TypeError, "'1e-3'"),
        (dict(paged="yes"), TypeError, "'yes'"),
    ],
)
def test_bad_config_raises_naming_the_value(kwargs, error, named):
    with pytest.raises(error, match=named):
        AdamWConfig(**kwargs)


def test_bits_accepts_the_enum_values():
    assert AdamWConfig(bits=8).bits is StateBits.BITS_8
    assert AdamWConfig(bits=32).bits is StateBits.BITS_32


def test_bad_param_group_and_param_raise():
    with pytest.raises(ValueError, match="-0.5"):
        PagedAdamW([{"params": _params([(3,)]), "lr": -0.5}])
    with pytest.raises(TypeError, match="torch.int64"):
        PagedAdamW([torch.zeros(3, dtype=torch.long)])
    with pytest.raises(TypeError, match="AdamWConfig"):
        PagedAdamW(_params([(3,)]), config={"lr": 1e-3})


def test_params_without_grad_are_skipped():
    with_grad, without_grad, frozen = _params([(4, 4), (4,), (2,)])
    frozen.requires_grad_(False)
    before = [t.detach().clone() for t in (with_grad, without_grad, frozen)]
    opt = PagedAdamW([with_grad, without_grad, frozen], config=AdamWConfig(lr=0.1, weight_decay=0.5))
    for _ in range(3):
        with_grad.grad = torch.randn(4, 4)
        opt.step()
    assert not torch.equal(with_grad.detach(), before[0])
    assert torch.equal(without_grad.detach(), before[1])  # not even weight decay
    assert torch.equal(frozen.detach(), before[2])
    assert without_grad not in opt.state and frozen not in opt.state
    assert opt.state[with_grad]["step"].item() == 3.0


@pytest.mark.parametrize("bits", list(StateBits))
def test_paged_on_cpu_is_ordinary_memory_and_same_numbers(bits):
    results = {}
    for paged in (False, True):
        torch.manual_seed(1)
        params = _params([(70, 70), (5,)])
        opt = PagedAdamW(params, config=AdamWConfig(lr=1e-2, bits=bits, paged=paged))
        torch.manual_seed(2)
        _train(opt, params, [_random_grads(params) for _ in range(10)])
        for state in opt.state.values():
            assert all(t.device.type == "cpu" for t in state.values())
        results[paged] = [p.detach().clone() for p in params]
    assert not paging.paging_supported(torch.device("cpu"))
    for a, b in zip(results[False], results[True]):
        assert torch.equal(a, b)


def test_bf16_params_update_in_float32_and_round_once():
    w16 = torch.nn.Parameter(torch.randn(32, 32).to(torch.bfloat16))
    opt16 = PagedAdamW([w16], config=AdamWConfig(lr=1e-2, weight_decay=0.1))
    for _ in range(5):
        twin = torch.nn.Parameter(w16.detach().float())
        opt32 = PagedAdamW([twin], config=AdamWConfig(lr=1e-2, weight_decay=0.1))
        if opt16.state:
            opt32.load_state_dict(opt16.state_dict())
        g = torch.randn(32, 32).to(torch.bfloat16)
        w16.grad, twin.grad = g, g.float()
        opt16.step()
        opt32.step()
        assert torch.equal(w16.detach(), twin.detach().to(torch.bfloat16))
    assert w16.dtype == torch.bfloat16 and opt16.state[w16]["exp_avg"].dtype == torch.float32


def test_8bit_threshold_follows_min_8bit_size():
    below, at = _params([(state8bit.MIN_8BIT_SIZE - 1,), (state8bit.MIN_8BIT_SIZE,)])
    opt = PagedAdamW([below, at], config=AdamWConfig(bits=StateBits.BITS_8))
    _train(opt, [below, at], [_random_grads([below, at])])
    assert "exp_avg" in opt.state[below] and "exp_avg_codes" in opt.state[at]


@pytest.mark.parametrize("bits", list(StateBits))
def test_float64_params(bits):
    (w,) = _params([(70, 70)], dtype=torch.float64)
    (twin,) = _clone([w])
    opt = PagedAdamW([w], config=AdamWConfig(lr=1e-2, bits=bits))
    ref = torch.optim.AdamW([twin], lr=1e-2)
    for _ in range(10):
        _set_grads(_random_grads([w]), [w], [twin])
        opt.step()
        ref.step()
    assert w.dtype == torch.float64
    if bits is StateBits.BITS_32:
        torch.testing.assert_close(w, twin, **TOLERANCES[torch.float64])
    else:
        assert (w - twin).abs().max() < 10 * 1e-2 * 0.05  # ten steps of lr 1e-2, within 5% of a step each
