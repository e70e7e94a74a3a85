"""benchmarks/source_noise.py: the grid step of GGUF blocks and the one-step perturbation."""

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from benchmarks.source_noise import noise_generator, perturb, source_steps

K_TYPES = (Q.Q4_K, Q.Q5_K, Q.Q6_K)
STEP_ELEMENTS = {Q.Q4_0: 32, Q.Q4_1: 32, Q.Q5_0: 32, Q.Q5_1: 32, Q.Q8_0: 32, Q.Q4_K: 32, Q.Q5_K: 32, Q.Q6_K: 16}
LEVELS = {Q.Q4_0: 16, Q.Q4_1: 16, Q.Q5_0: 32, Q.Q5_1: 32, Q.Q8_0: 256, Q.Q4_K: 16, Q.Q5_K: 32, Q.Q6_K: 64}


def test_q4_1_block_with_known_step():
    # 0.25 * (0..15) - 1: Q4_1 stores d = (max - min) / 15 = 0.25 and m = -1 exactly (fp16), codes 0..15
    block = (0.25 * np.arange(32) % 4.0 - 1.0).astype(np.float32).reshape(1, 32)
    raw = quantize(block, Q.Q4_1)
    assert raw.shape == (1, 20)
    np.testing.assert_array_equal(dequantize(raw, Q.Q4_1), block)
    np.testing.assert_array_equal(source_steps(Q.Q4_1, raw), np.full((1, 32), 0.25, dtype=np.float32))


def test_q8_0_and_q5_0_steps_are_their_scale():
    rows = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    for qtype, levels in ((Q.Q8_0, 127), (Q.Q5_0, -16)):
        raw = quantize(rows, qtype)
        steps = source_steps(qtype, raw)
        assert steps.shape == rows.shape
        # Q8_0: d = amax / 127; Q5_0: d = max / -16 (the signed extreme), both stored as fp16
        blocks = rows.reshape(-1, 32)
        extreme = np.abs(blocks).max(axis=1) if levels > 0 else np.abs(np.take_along_axis(blocks, np.abs(blocks).argmax(1)[:, None], 1))[:, 0]
        expected = (extreme / abs(levels)).astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(steps.reshape(-1, 32), np.repeat(expected[:, None], 32, axis=1))


def _random_blocks(qtype: Q, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes with sane fp16 scales (d, dmin in [1e-3, 1e-2]) at the type's scale positions."""
    _, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    halves = rng.uniform(1e-3, 1e-2, size=(n, 2)).astype(np.float16).view(np.uint8)  # (n, 4) bytes: two fp16
    if qtype is Q.Q6_K:
        raw[:, 208:210] = halves[:, :2]
    else:
        raw[:, :4] = halves  # d (and m / dmin where the type has one)
    return raw


@pytest.mark.parametrize("qtype", list(STEP_ELEMENTS), ids=lambda q: q.name)
def test_step_is_the_spacing_of_the_dequantized_grid(qtype):
    """Against gguf-py's own de-quantization: within each step group, every value is an integer number of
    steps from the group's minimum, and random codes reach adjacent levels (the smallest gap is one step)."""
    rng = np.random.default_rng(1)
    raw = _random_blocks(qtype, 40, rng).reshape(4, -1)  # 4 rows of 10 blocks
    w = dequantize(raw, qtype).astype(np.float64)
    steps = source_steps(qtype, raw).astype(np.float64)
    assert steps.shape == w.shape
    g = STEP_ELEMENTS[qtype]
    w, steps = w.reshape(-1, g), steps.reshape(-1, g)
    assert (steps == steps[:, :1]).all()  # one step per group
    live = steps[:, 0] > 0
    assert live.mean() > 0.9  # random 6-/8-bit sub-scales are rarely 0
    w, steps = w[live], steps[live, 0:1]
    k = (w - w.min(axis=1, keepdims=True)) / steps
    np.testing.assert_allclose(k, np.round(k), atol=1e-3)
    assert np.round(k).max() <= LEVELS[qtype] - 1
    gaps = np.diff(np.sort(np.round(k), axis=1), axis=1)
    assert np.median(np.where(gaps > 0, gaps, np.inf).min(axis=1)) == 1  # adjacent codes present: the step is not a multiple


def test_float_tensors_have_zero_step_and_unknown_types_are_refused():
    np.testing.assert_array_equal(source_steps(Q.F32, np.ones((2, 3), np.float32)), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="no step rule for GGUF type Q2_K"):
        source_steps(Q.Q2_K, np.zeros((1, GGML_QUANT_SIZES[Q.Q2_K][1]), np.uint8))
    with pytest.raises(ValueError, match="whole 20-byte blocks"):
        source_steps(Q.Q4_1, np.zeros((1, 30), np.uint8))


def _q4_1_weight():
    rows = torch.randn(8, 64)
    raw = quantize(rows.numpy(), Q.Q4_1)
    return torch.from_numpy(dequantize(raw, Q.Q4_1)), torch.from_numpy(source_steps(Q.Q4_1, raw))


def test_noise_is_bounded_by_half_a_step_and_fills_the_cell():
    w, step = _q4_1_weight()
    out = perturb(w, step, noise_generator(0, "layer"))
    change = (out.double() - w.double()).abs()
    ulp = torch.finfo(torch.float32).eps * w.abs().double()
    assert bool((change <= step.double() / 2 + ulp).all())
    u = (out.double() - w.double()) / step.double()  # ~ Uniform[-1/2, 1/2): mean 0, variance 1/12
    assert abs(u.mean().item()) < 0.05 and abs(u.var().item() - 1 / 12) < 0.015
    assert u.min().item() < -0.45 and u.max().item() > 0.45
    wide = perturb(w, step, noise_generator(0, "layer"), width=2.0)
    torch.testing.assert_close(wide - w, 2 * (out - w), rtol=0, atol=2e-6)  # same draw, twice as wide


def test_zero_width_reproduces_the_weights_exactly_and_zero_steps_do_nothing():
    w, step = _q4_1_weight()
    out = perturb(w, step, noise_generator(0, "layer"), width=0.0)
    assert torch.equal(out, w) and out.data_ptr() != w.data_ptr()
    assert torch.equal(perturb(w, torch.zeros_like(step), noise_generator(3, "layer")), w)


def test_seeded_draws_are_reproducible_and_differ_by_seed_and_name():
    w, step = _q4_1_weight()
    a = perturb(w, step, noise_generator(1, "model.layers.0.mlp.up_proj.weight"))
    assert torch.equal(a, perturb(w, step, noise_generator(1, "model.layers.0.mlp.up_proj.weight")))
    assert not torch.equal(a, perturb(w, step, noise_generator(2, "model.layers.0.mlp.up_proj.weight")))
    assert not torch.equal(a, perturb(w, step, noise_generator(1, "model.layers.1.mlp.up_proj.weight")))


def test_perturb_refuses_bad_input():
    w, step = _q4_1_weight()
    with pytest.raises(ValueError, match="differs from the weight"):
        perturb(w, step[:, :32], noise_generator(0, "x"))
    with pytest.raises(ValueError, match="width must be"):
        perturb(w, step, noise_generator(0, "x"), width=-1.0)
    with pytest.raises(ValueError, match="steps must be finite"):
        perturb(w, -step, noise_generator(0, "x"))


@pytest.mark.slow
def test_smollm2_steps_follow_the_un_permuted_rows(smollm2_dir):
    """On the real Q4_1 file: every linear weight gets its steps in the HF layout (transformers un-permutes
    Llama's q/k rows; the steps must move with them): each 32-weight block of the loaded model is a whole
    number of its step from the block's minimum, at most 15 steps wide."""
    from benchmarks.source_noise import hf_source_steps
    from qlora.data.offline import smollm2_gguf_path
    from qlora.models.loading import load_base
    from qlora.config import ModelKind
    from qlora.models.surgery import linear_modules

    model = load_base(smollm2_dir, ModelKind.CAUSAL_LM)
    names = [f"{m}.weight" for m in linear_modules(model)]
    steps = hf_source_steps(smollm2_gguf_path(), model, names)
    assert len(names) == 30 * 7 and set(steps) == set(names)
    for name in names:
        w, s = model.get_parameter(name).detach().double(), steps[name].double()
        assert s.shape == w.shape and bool((s > 0).all())
        w, s = w.reshape(-1, 32), s.reshape(-1, 32)
        k = (w - w.min(dim=1, keepdim=True).values) / s
        assert bool((k - k.round()).abs().max() < 1e-3), name
        assert int(k.round().max()) <= 15


def test_grid_residual_is_zero_on_the_grid_and_about_half_off_it():
    from benchmarks.source_noise import grid_residual

    w, step = _q4_1_weight()
    assert grid_residual(w, step) < 1e-4
    assert grid_residual(perturb(w, step, noise_generator(0, "x")), step) > 0.4  # off the grid
    assert grid_residual(w, step.roll(32, dims=1)) > 0.1  # steps of other blocks
    assert grid_residual(w, torch.zeros_like(step)) == 0.0
