"""The quantized LoRA linear: gradients, saved tensors, init, merge, every data type."""

import math

import pytest
import torch

import qlora
from qlora import DataType, DoubleQuant
from qlora.config import ComputeDtype, LoRAConfig, QuantConfig
from qlora.nn import QLoRALinear, QuantizedLoRAFunction
from tests.conftest import TOLERANCES

ALL_TYPES = list(DataType)


def layer(dtype=DataType.NF4, double_quant=True, rank=4, dropout=0.0, bias=True, in_f=70, out_f=33, compute=ComputeDtype.FP32):
    lin = torch.nn.Linear(in_f, out_f, bias=bias)
    q = QuantConfig(dtype=dtype, double_quant=double_quant and dtype.allows_double_quant, compute_dtype=compute)
    m = QLoRALinear.from_linear(lin, q, LoRAConfig(rank=rank, alpha=2.0 * rank, dropout=dropout) if rank else None)
    if rank:
        with torch.no_grad():
            m.lora_b.normal_()  # a trained-looking adapter, so every gradient path is exercised
    return m


def test_gradcheck_float64_reference_path():
    m = layer(rank=3, compute=ComputeDtype.FP32)
    w = m.weight
    x = torch.randn(4, 70, dtype=torch.float64, requires_grad=True)
    a = m.lora_a.detach().double().requires_grad_()
    b = m.lora_b.detach().double().requires_grad_()
    bias = m.bias.detach().double()
    f = lambda x, a, b: QuantizedLoRAFunction.apply(x, x, a, b, bias, 0.7, w, torch.float64)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, a, b), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ALL_TYPES)
def test_grads_equal_plain_linear_on_dequantized_weight_plus_plain_lora(dtype):
    m = layer(dtype)
    x = torch.randn(2, 5, 70, requires_grad=True)
    y = m(x)
    dy = torch.randn_like(y)
    y.backward(dy)

    w = qlora.dequantize(m.weight, torch.float32)
    x2 = x.detach().clone().requires_grad_()
    a = m.lora_a.detach().clone().requires_grad_()
    b = m.lora_b.detach().clone().requires_grad_()
    ref = torch.nn.functional.linear(x2, w, m.bias) + (x2 @ a.t() @ b.t()) * m.scaling
    ref.backward(dy)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.lora_a.grad, a.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.lora_b.grad, b.grad, rtol=1e-5, atol=1e-5)
    assert m.bias.grad is None and not m.qweight.requires_grad


@pytest.mark.parametrize("double_quant", [False, True])
def test_graph_saves_packed_codes_not_a_dequantized_weight(double_quant):
    m = layer(DataType.NF4, double_quant=double_quant, rank=4, in_f=256, out_f=128)
    saved = []
    x = torch.randn(3, 256, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = m(x)
    packed = [t for t in saved if t.dtype == torch.uint8]
    assert len(packed) == 1 and packed[0].numel() == 256 * 128 // 2  # the 4-bit codes, 2 per byte
    assert packed[0].data_ptr() == m.qweight.data_ptr()  # the module's own buffer, not a copy
    floats = sorted(tuple(t.shape) for t in saved if t.is_floating_point())
    # the input, the LoRA bottleneck X·Aᵀ (M, r), A and B: nothing of the weight's size
    assert floats == sorted([(3, 256), (3, 4), (4, 256), (128, 4)]), floats
    assert len(saved) == 5
    y.sum().backward()
    assert x.grad is not None and m.lora_a.grad is not None


def test_fresh_adapter_leaves_output_unchanged_and_init_is_kaiming():
    lin = torch.nn.Linear(64, 48)
    m = QLoRALinear.from_linear(lin, QuantConfig(compute_dtype=ComputeDtype.FP32), LoRAConfig(rank=8, alpha=16, dropout=0.0))
    no_adapter = QLoRALinear(m.weight, lin.bias, lora=None, compute_dtype=ComputeDtype.FP32)
    x = torch.randn(5, 64)
    assert torch.equal(m(x), no_adapter(x))
    assert torch.count_nonzero(m.lora_b) == 0
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)) on fan_in 64
    assert m.lora_a.abs().max() <= bound and m.lora_a.abs().max() > 0.8 * bound
    assert m.scaling == 2.0


def test_dropout_only_on_the_lora_path():
    """In training, y = x deq(W)ᵀ + b + s · dropout(x) Aᵀ Bᵀ: the frozen path sees x itself.

    Checked two ways, each failing when dropout also reaches the base path (a mutation that feeds
    dropout(x) to the quantized matmul was run and made both fail): with B = 0 the training output is
    exactly the base's, and with a trained B it equals the formula with the mask drawn from the same seed.
    """
    m = layer(rank=4, dropout=0.5)
    x = torch.randn(8, 70)
    base = torch.nn.functional.linear(x, qlora.dequantize(m.weight, torch.float32), m.bias)
    m.train()
    saved_b = m.lora_b.detach().clone()
    with torch.no_grad():
        m.lora_b.zero_()
    torch.manual_seed(1)
    torch.testing.assert_close(m(x), base, rtol=0, atol=0)  # dropout on the base path would zero half its inputs
    with torch.no_grad():
        m.lora_b.copy_(saved_b)
    m.eval()
    eval_out = m(x)
    torch.testing.assert_close(eval_out, base + m.scaling * (x @ m.lora_a.t() @ m.lora_b.t()), **TOLERANCES[torch.float32])
    m.train()
    torch.manual_seed(1)
    train_out = m(x)
    torch.manual_seed(1)
    dropped = torch.nn.functional.dropout(x, 0.5, training=True)  # the mask the layer drew
    assert 0.3 < float((dropped == 0).float().mean()) < 0.7
    expected = base + m.scaling * (dropped @ m.lora_a.t() @ m.lora_b.t())
    torch.testing.assert_close(train_out, expected, **TOLERANCES[torch.float32])
    assert not torch.allclose(train_out, eval_out)  # the adapter path did get dropout


def test_merge_unmerge_and_requantized_merge():
    m = layer(DataType.NF4, rank=4)
    merged = m.merge(torch.float32)
    x = torch.randn(6, 70)
    torch.testing.assert_close(torch.nn.functional.linear(x, merged, m.bias), m(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.unmerge(merged), qlora.dequantize(m.weight, torch.float32), rtol=0, atol=1e-6)
    plain = m.to_linear(torch.float32)
    torch.testing.assert_close(plain(x), m(x), rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning, match="re-quantizing a merged weight to nf4 adds rounding error: relative"):
        q, err = m.merge_requantized()
    assert 0 < err < 0.2 and q.dtype is DataType.NF4


def test_bf16_passthrough_is_plain_lora():
    m = layer(DataType.BF16, double_quant=False)
    x = torch.randn(4, 70)
    w = m.weight.data.float()
    ref = torch.nn.functional.linear(x, w, m.bias) + (x @ m.lora_a.t() @ m.lora_b.t()) * m.scaling
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("compute", [ComputeDtype.BF16, ComputeDtype.FP32])
def test_compute_dtype_and_backward_dtypes(compute):
    m = layer(compute=compute)
    x = torch.randn(3, 70, requires_grad=True)
    y = m(x)
    assert y.dtype == compute.resolve("cpu")
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and m.lora_a.grad.dtype == torch.float32 and m.lora_b.grad.dtype == torch.float32


def test_no_adapter_is_inference_only():
    m = layer(rank=0)
    assert m.lora_a is None and list(m.parameters()) == [m.qweight, m.nested_codes, m.bias]
    assert not any(p.requires_grad for p in m.parameters())
    x = torch.randn(2, 70)
    torch.testing.assert_close(m(x), torch.nn.functional.linear(x, qlora.dequantize(m.weight, torch.float32), m.bias))


def test_bad_arguments():
    with pytest.raises(TypeError, match="QuantizedTensor"):
        QLoRALinear(torch.randn(3, 3))
    with pytest.raises(ValueError, match="2-D"):
        QLoRALinear(qlora.quantize(torch.randn(64), "nf4"))
    with pytest.raises(ValueError, match=r"rank=-1: expected an integer >= 0"):
        LoRAConfig(rank=-1)
    with pytest.raises(ValueError, match=r"dropout=1.5: expected a finite number in \[0, 1\)"):
        LoRAConfig(dropout=1.5)
    with pytest.raises(ValueError, match=r"dtype='nf3': expected one of BF16"):
        QuantConfig(dtype="nf3")


# `# Note: sharded storage`: row layout, integer bit patterns, the flat bitsandbytes layout at export
@pytest.mark.parametrize("dtype, double_quant", [(d, dq) for d in ALL_TYPES for dq in (False, True, DoubleQuant.E4M4)
                                                  if d.allows_double_quant or not dq])  # fmt: skip
def test_storage_is_rows_of_integers_and_weight_is_the_flat_layout(dtype, double_quant):
    lin = torch.nn.Linear(128, 6)
    q = qlora.quantize(lin.weight.detach(), dtype, None, double_quant)
    m = QLoRALinear(q, lin.bias, lora=LoRAConfig(rank=2))
    assert m.row_shardable
    width = 64 if dtype.is_4bit else 128
    assert tuple(m.qweight.shape) == (6, width) and not m.qweight.is_floating_point()
    for p in m.quantized_parameters():
        assert p.shape[0] == 6 and not p.is_floating_point() and not p.requires_grad
    for b in m.buffers():
        assert not b.is_floating_point()
    w = m.weight  # the flat layout, as quantize returns it, byte for byte
    assert w.data.shape == q.data.shape and torch.equal(w.data.view(torch.uint8), q.data.view(torch.uint8))
    assert w.data.data_ptr() == m.qweight.data_ptr()  # a view, not a copy
    if q.absmax is not None:
        assert torch.equal(w.absmax.view(torch.int32), q.absmax.view(torch.int32))
    if q.nested is not None:
        for field in ("codes", "absmax", "offset", "code"):
            assert torch.equal(getattr(w.nested, field), getattr(q.nested, field)), field
        assert w.nested.format is q.nested.format
    if q.scales is not None:  # NVFP4 / MXFP4: the 8-bit scale codes in rows, the tensor scale as int32 bits
        assert tuple(m.scale_codes.shape) == (6, 128 // q.block_size)
        assert torch.equal(w.scales.codes, q.scales.codes) and w.scales.format is q.scales.format
        assert (q.scales.tensor_scale is None) == (m.tensor_scale is None)
        if q.scales.tensor_scale is not None:
            assert torch.equal(w.scales.tensor_scale.view(torch.int32), q.scales.tensor_scale.view(torch.int32))
    assert torch.equal(qlora.dequantize(w, torch.float32), qlora.dequantize(q, torch.float32))


@pytest.mark.parametrize("cast", [torch.bfloat16, torch.float16])
def test_casting_the_module_leaves_the_quantized_state_bit_exact(cast):
    for double_quant in (False, True):
        m = layer(DataType.NF4, double_quant=double_quant, in_f=128, out_f=8)
        before = qlora.dequantize(m.weight, torch.float32)
        m.to(cast)  # what a mixed-precision policy does to floating parameters
        assert m.lora_a.dtype == cast
        assert torch.equal(qlora.dequantize(m.weight, torch.float32), before)


def test_rows_that_split_blocks_keep_the_flat_layout_and_are_not_row_shardable():
    m = layer(DataType.NF4, double_quant=True, in_f=70, out_f=33)  # 70 % 64 != 0: blocks straddle rows
    assert not m.row_shardable and "shards=replicated" in repr(m)
    assert tuple(m.qweight.shape) == ((70 * 33 + 1) // 2, 1) and m.nested_codes.dim() == 1
    assert layer(DataType.INT8, in_f=96, out_f=4).row_shardable is False  # int8 has blocks too
    assert layer(DataType.BF16, in_f=70, out_f=4).row_shardable  # no blocks
    assert layer(DataType.FP4, double_quant=False, in_f=192, out_f=3).absmax.shape == (3, 3)


def test_state_dict_round_trip_is_byte_exact():
    m = layer(DataType.NF4, double_quant=True, in_f=128, out_f=16)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    fresh = layer(DataType.NF4, double_quant=True, in_f=128, out_f=16)
    fresh.load_state_dict(state)
    for k, v in fresh.state_dict().items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k]), k
    x = torch.randn(3, 128)
    assert torch.equal(fresh(x), m(x))


def test_adapter_init_is_seeded_per_layer_name():
    """The same seed and layer name give the same A whatever the global RNG consumed before; other names differ."""
    from qlora.nn.lora import layer_generator, lora_parameters, reset_lora_parameters

    a1, b1 = lora_parameters(16, 8, 4)
    a2, b2 = lora_parameters(16, 8, 4)
    reset_lora_parameters(a1, b1, layer_generator(0, "model.layers.0.q_proj"))
    torch.rand(1000)  # another loader path draws from the global RNG in between
    reset_lora_parameters(a2, b2, layer_generator(0, "model.layers.0.q_proj"))
    assert torch.equal(a1, a2) and torch.count_nonzero(b1) == 0
    reset_lora_parameters(a2, b2, layer_generator(0, "model.layers.0.k_proj"))
    assert not torch.equal(a1, a2)
    reset_lora_parameters(a2, b2, layer_generator(1, "model.layers.0.q_proj"))
    assert not torch.equal(a1, a2)
    bound = 1 / 16**0.5  # Kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))
    assert a1.abs().max() <= bound and a1.abs().max() > 0.5 * bound
