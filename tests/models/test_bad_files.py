"""Quantized checkpoint folders and PEFT adapter folders that lie are refused with ONE clear error.

Each case takes a folder our own savers wrote for a tiny Llama, tampers with it the way a disk or a
user's hands would (truncate, invalid JSON, deleted key, NaN/Inf tensor, wrong shape or dtype, missing
file, extra garbage), loads it as a user would, and checks the exception type and that the message
names the file and the key (or says what was expected).
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from qlora.config import ComputeDtype, LoRAConfig, ModelKind, QuantConfig
from qlora.models.bnb_checkpoint import (
    WEIGHTS_FILE,
    check_module_shapes,
    load_quantized_checkpoint,
    save_quantized_checkpoint,
)
from qlora.models.loading import adapter_weights, load_adapter_into, load_quantized_model
from qlora.models.peft_format import CONFIG_FILE, TaskType, load_peft_adapter, save_peft_adapter
from qlora.models.peft_format import WEIGHTS_FILE as ADAPTER_FILE
from qlora.models.surgery import prepare_model
from qlora.nn import QLoRALinear
from qlora.quant.dtypes import DataType
from qlora.readers import BadFileError
from tests.models.test_loading import tiny

QUANT = QuantConfig(compute_dtype=ComputeDtype.FP32)
LORA = LoRAConfig(rank=4, dropout=0.0)
K = "model.layers.0.mlp.up_proj.weight"  # a quantized weight: (128, 64), 128 blocks of 64
QS = f"{K}.quant_state.bitsandbytes__nf4"
ADAPTER_KEY = "base_model.model.model.layers.0.mlp.up_proj"


def _save(model, quant, folder):
    prepare_model(model, quant, LORA)
    quantized = {n: m.weight for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
    others = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in quantized and k != "lm_head.weight"}
    save_quantized_checkpoint(folder, model.config.to_dict(), quantized, others, compute_dtype=torch.float32)
    return model


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Folders written by our savers: nf4+DQ base ("dq"), nf4 without DQ ("plain"), int4 ("int4"), adapter."""
    root = tmp_path_factory.mktemp("pristine")
    model = _save(tiny(), QUANT, root / "dq")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QLoRALinear):
                m.lora_b.normal_(std=0.05)
    save_peft_adapter(root / "adapter", adapter_weights(model, LORA, TaskType.CAUSAL_LM))
    _save(tiny(), QuantConfig(double_quant=False, compute_dtype=ComputeDtype.FP32), root / "plain")
    _save(tiny(), QuantConfig(dtype=DataType.INT4, compute_dtype=ComputeDtype.FP32), root / "int4")
    return root


@pytest.fixture
def saved(pristine, tmp_path):
    for name in ("dq", "plain", "int4", "adapter"):
        shutil.copytree(pristine / name, tmp_path / name)
    return tmp_path


# ---- tampering, as a disk or a user's hands would -------------------------------------------------------


def edit_tensors(path, fn):
    state = load_file(path)
    fn(state)
    save_file(state, path)


def edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))  # json.dumps writes NaN / Infinity for non-finite floats, as a script would


def edit_quant_state(path, fn, key=QS):
    def inner(state):
        meta = json.loads(bytes(state[key].tolist()))
        fn(meta)
        state[key] = torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8)

    edit_tensors(path, inner)


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def qc(fn):
    return lambda d: edit_json(d / "config.json", lambda c: fn(c["quantization_config"]))


def setitem(key, value):
    return lambda d: d.__setitem__(key, value)


def delitem(key):
    return lambda d: d.pop(key)


def fill(key, value, index=None):
    def inner(state):
        if index is None:
            state[key] = torch.full_like(state[key], value)
        else:
            state[key].view(-1)[index] = value

    return inner


W = WEIGHTS_FILE
NAN, INF = float("nan"), float("inf")

# (id, folder, tamper(folder path), exception, substrings the message must contain)
CHECKPOINT_CASES = [
    ("truncated-weights", "dq", lambda d: truncate(d / W), ValueError, [W, "not a readable safetensors file"]),
    ("garbage-after-weights", "dq", lambda d: (d / W).write_bytes((d / W).read_bytes() + b"\0garbage"), ValueError,
     [W, "truncated or corrupt"]),
    ("weights-file-missing", "dq", lambda d: (d / W).unlink(), FileNotFoundError, ["no *.safetensors", W]),
    ("config-missing", "dq", lambda d: (d / "config.json").unlink(), FileNotFoundError, ["config.json", "not found"]),
    ("config-invalid-json", "dq", lambda d: truncate(d / "config.json", 0.7), ValueError, ["config.json", "is not valid JSON: line"]),
    ("config-not-an-object", "dq", lambda d: (d / "config.json").write_text("[1, 2]"), ValueError,
     ["config.json", "must be a JSON object"]),
    ("config-nan-value", "dq", lambda d: edit_json(d / "config.json", setitem("rms_norm_eps", NAN)), ValueError,
     ["config.json", "rms_norm_eps", "not a finite number"]),
    ("quantization-config-deleted", "dq", lambda d: edit_json(d / "config.json", delitem("quantization_config")), ValueError,
     ["config.json", "quantization_config: missing"]),
    ("quant-type-disagrees", "dq", qc(setitem("bnb_4bit_quant_type", "fp4")), ValueError,
     ["config.json", "quantization_config.bnb_4bit_quant_type", "'fp4'", "'nf4'"]),
    ("double-quant-disagrees", "dq", qc(setitem("bnb_4bit_use_double_quant", False)), ValueError,
     ["config.json", "quantization_config.bnb_4bit_use_double_quant"]),
    ("double-quant-not-bool", "dq", qc(setitem("bnb_4bit_use_double_quant", "no")), ValueError,
     ["config.json", "quantization_config.bnb_4bit_use_double_quant", "expected true or false"]),
    ("compute-dtype-float99", "dq", qc(setitem("bnb_4bit_compute_dtype", "float99")), ValueError,
     ["config.json", "quantization_config.bnb_4bit_compute_dtype", "float99", "bfloat16"]),
    ("quant-method-unknown", "dq", qc(setitem("quant_method", "gptq")), ValueError,
     ["config.json", "quantization_config.quant_method", "'gptq'"]),
    ("quant-storage-bf16", "dq", qc(setitem("bnb_4bit_quant_storage", "bfloat16")), ValueError,
     ["quantization_config.bnb_4bit_quant_storage", "'uint8'"]),
    ("qlora-block-size-disagrees", "int4", qc(setitem("block_size", 128)), ValueError,
     ["config.json", "quantization_config.block_size", "128", "64"]),
    ("qlora-data-type-disagrees", "int4", qc(setitem("data_type", "fp4_e3m0")), ValueError,
     ["quantization_config.data_type", "'fp4_e3m0'", "'int4'"]),
    ("nested-absmax-inf", "dq", lambda d: edit_tensors(d / W, fill(f"{K}.nested_absmax", INF)), ValueError,
     [W, K, "nested_absmax must be finite"]),
    ("nested-absmax-nan", "dq", lambda d: edit_tensors(d / W, fill(f"{K}.nested_absmax", NAN, 0)), ValueError,
     [W, K, "nested_absmax must be finite", "1 of 1"]),
    ("nested-absmax-negative", "dq", lambda d: edit_tensors(d / W, fill(f"{K}.nested_absmax", -1.0)), ValueError,
     [W, K, "nested_absmax must be finite and >= 0"]),
    ("nested-quant-map-nan", "dq", lambda d: edit_tensors(d / W, fill(f"{K}.nested_quant_map", NAN, 3)), ValueError,
     [W, K, "nested_quant_map must be finite"]),
    ("nested-offset-nan", "dq", lambda d: edit_quant_state(d / W, setitem("nested_offset", NAN)), ValueError,
     [W, K, "'nested_offset'", "expected a finite number"]),
    ("nested-offset-missing", "dq", lambda d: edit_quant_state(d / W, delitem("nested_offset")), ValueError,
     [W, K, "'nested_offset' missing"]),
    ("nested-blocksize-zero", "dq", lambda d: edit_quant_state(d / W, setitem("nested_blocksize", 0)), ValueError,
     [W, K, "'nested_blocksize'", "positive integer"]),
    ("nested-quant-map-deleted", "dq", lambda d: edit_tensors(d / W, delitem(f"{K}.nested_quant_map")), ValueError,
     [W, K, "needs both", "nested_quant_map"]),
    ("absmax-inf", "plain", lambda d: edit_tensors(d / W, fill(f"{K}.absmax", INF, 5)), ValueError,
     [W, K, "absmax must be finite", "first at index 5"]),
    ("absmax-nan", "plain", lambda d: edit_tensors(d / W, fill(f"{K}.absmax", NAN)), ValueError, [W, K, "absmax must be finite"]),
    ("absmax-deleted", "plain", lambda d: edit_tensors(d / W, delitem(f"{K}.absmax")), ValueError, [W, K, "lacks 'absmax'"]),
    ("absmax-too-short", "plain", lambda d: edit_tensors(d / W, lambda s: s.__setitem__(f"{K}.absmax", s[f"{K}.absmax"][:-1])),
     ValueError, [W, K, "absmax: expected 128 float values"]),
    ("dq-absmax-float", "dq", lambda d: edit_tensors(d / W, lambda s: s.__setitem__(f"{K}.absmax", s[f"{K}.absmax"].float())),
     ValueError, [W, K, "absmax: expected 128 uint8 codes"]),
    ("quant-state-dtype-float99", "dq", lambda d: edit_quant_state(d / W, setitem("dtype", "float99")), ValueError,
     [W, K, "'dtype'", "'float99'", "bfloat16"]),
    ("quant-state-shape-numel", "dq", lambda d: edit_quant_state(d / W, setitem("shape", [128, 65])), ValueError,
     [W, K, "data for shape (128, 65)"]),
    ("quant-state-shape-not-ints", "dq", lambda d: edit_quant_state(d / W, setitem("shape", [128, "64"])), ValueError,
     [W, K, "'shape'", "list of positive integers"]),
    ("quant-state-blocksize-invalid", "dq", lambda d: edit_quant_state(d / W, setitem("blocksize", 100)), ValueError,
     [W, K, "'blocksize'", "power of two"]),
    ("quant-state-blocksize-disagrees", "dq", lambda d: edit_quant_state(d / W, setitem("blocksize", 128)), ValueError,
     [W, K, "absmax: expected 64 uint8 codes"]),
    ("quant-state-quant-type-unknown", "dq", lambda d: edit_quant_state(d / W, setitem("quant_type", "nf5")), ValueError,
     [W, K, "'quant_type'", "'nf5'", "nf4"]),
    ("quant-state-not-json", "dq", lambda d: edit_tensors(d / W, lambda s: s.__setitem__(QS, s[QS][:-3])), ValueError,
     [W, K, "not valid UTF-8 JSON"]),
    ("quant-state-deleted", "dq", lambda d: edit_tensors(d / W, delitem(QS)), ValueError,
     [W, K, "exactly one 'quant_state.*' entry, found none"]),
    ("quant-map-edited", "dq", lambda d: edit_tensors(d / W, fill(f"{K}.quant_map", 0.5, 0)), ValueError,
     [W, K, "quant_map does not match the nf4 codebook"]),
    ("packed-weight-truncated", "dq", lambda d: edit_tensors(d / W, lambda s: s.__setitem__(K, s[K][:-1])), ValueError,
     [W, K, "nf4 data for shape (128, 64) must be torch.uint8 of shape (4096, 1)"]),
    ("packed-weight-int8", "dq", lambda d: edit_tensors(d / W, lambda s: s.__setitem__(K, s[K].to(torch.int8))), ValueError,
     [W, K, "packed weight is torch.int8, expected torch.uint8"]),
    ("packed-weight-deleted", "dq", lambda d: edit_tensors(d / W, delitem(K)), ValueError, [W, K, "no packed weight"]),
    ("garbage-tensor-in-state", "dq", lambda d: edit_tensors(d / W, setitem(f"{K}.garbage", torch.zeros(3))), ValueError,
     [W, K, "unexpected entries ['garbage']"]),
    ("embedding-nan", "dq", lambda d: edit_tensors(d / W, fill("model.embed_tokens.weight", NAN, 7)), ValueError,
     [W, "model.embed_tokens.weight", "1 of 6144 values are not finite"]),
    ("norm-weight-inf", "plain", lambda d: edit_tensors(d / W, fill("model.norm.weight", -INF, 0)), ValueError,
     [W, "model.norm.weight", "not finite"]),
    ("norm-weight-deleted", "dq", lambda d: edit_tensors(d / W, delitem("model.norm.weight")), ValueError,
     ["dq", "missing ['model.norm.weight']"]),
    ("vocab-size-disagrees", "dq", lambda d: edit_json(d / "config.json", setitem("vocab_size", 97)), ValueError,
     ["dq", "tensors do not match the model's config", "model.embed_tokens.weight"]),
]  # fmt: skip


@pytest.mark.parametrize("folder, tamper, exc, needles", [c[1:] for c in CHECKPOINT_CASES], ids=[c[0] for c in CHECKPOINT_CASES])
def test_tampered_checkpoint_is_refused(saved, folder, tamper, exc, needles):
    path = saved / folder
    tamper(path)
    with pytest.raises(exc) as info:
        load_quantized_model(path, ModelKind.CAUSAL_LM, lora=LORA)
    message = str(info.value)
    assert str(path) in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    assert "\n" not in message  # one line


def test_folder_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nope'}: checkpoint folder not found"):
        load_quantized_checkpoint(tmp_path / "nope")


def test_errors_carry_the_file_and_the_key(saved):
    edit_tensors(saved / "dq" / W, fill(f"{K}.nested_absmax", INF))
    with pytest.raises(BadFileError) as info:
        load_quantized_checkpoint(saved / "dq")
    assert info.value.path == saved / "dq" / W and info.value.key == K


def test_quant_state_shape_that_disagrees_with_the_config(saved):
    """Transposed shape: same element count, so the packed data agrees; the model built from config.json does not."""
    edit_quant_state(saved / "dq" / W, setitem("shape", [64, 128]))
    checkpoint = load_quantized_checkpoint(saved / "dq")
    model = tiny()  # what config.json builds
    with pytest.raises(ValueError) as info:
        check_module_shapes(saved / "dq", checkpoint.quantized, model)
    message = str(info.value)
    assert all(s in message for s in (str(saved / "dq" / W), K, "quant_state shape (64, 128)", "(128, 64)")), message
    check_module_shapes(saved / "plain", load_quantized_checkpoint(saved / "plain").quantized, tiny())  # a good one passes


@pytest.mark.parametrize("folder, expected", [("dq", torch.float32), ("int4", torch.float32)])
def test_compute_dtype_round_trips(saved, folder, expected):
    checkpoint = load_quantized_checkpoint(saved / folder)
    assert checkpoint.compute_dtype == expected
    config, quantized, tensors = checkpoint  # still unpacks as three
    assert quantized and tensors and config["quantization_config"]


def test_compute_dtype_bf16_and_unset(tmp_path, saved):
    model = tiny()
    prepare_model(model, QUANT, None)
    quantized = {n: m.weight for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
    save_quantized_checkpoint(tmp_path / "bf", model.config.to_dict(), quantized, {}, compute_dtype=torch.bfloat16)
    assert load_quantized_checkpoint(tmp_path / "bf").compute_dtype == torch.bfloat16
    edit_json(saved / "int4" / "config.json", lambda c: c["quantization_config"].pop("compute_dtype"))  # folders of earlier versions
    assert load_quantized_checkpoint(saved / "int4").compute_dtype is None
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        save_quantized_checkpoint(tmp_path / "f64", model.config.to_dict(), quantized, {}, compute_dtype=torch.float64)
    assert not (tmp_path / "f64").exists()


def test_untampered_folders_load_and_agree(saved):
    model = load_quantized_model(saved / "dq", ModelKind.CAUSAL_LM, lora=LORA, compute_dtype=ComputeDtype.FP32)
    load_adapter_into(model, load_peft_adapter(saved / "adapter"))
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 96, (1, 7))).logits).all()


# ---- PEFT adapter folders --------------------------------------------------------------------------------

A = ADAPTER_FILE
C = CONFIG_FILE


def adapter_json(fn):
    return lambda d: edit_json(d / C, fn)


def adapter_tensors(fn):
    return lambda d: edit_tensors(d / A, fn)


def full_name_targets(d):
    """target_modules as every adapted module's full name (the file's keys) instead of PEFT's suffixes."""
    names = sorted({k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in load_file(d / A)})
    edit_json(d / C, lambda c: c.__setitem__("target_modules", names))


ADAPTER_CASES = [
    ("config-missing", lambda d: (d / C).unlink(), FileNotFoundError, [C, "not found"]),
    ("weights-missing", lambda d: (d / A).unlink(), FileNotFoundError, [A, "not found"]),
    ("config-invalid-json", lambda d: truncate(d / C, 0.6), ValueError, [C, "is not valid JSON: line"]),
    ("config-a-list", lambda d: (d / C).write_text("[]"), ValueError, [C, "must be a JSON object"]),
    ("config-not-utf8", lambda d: (d / C).write_bytes(b"\xff\xfe{}"), ValueError, [C, "is not UTF-8 text"]),
    ("weights-truncated", lambda d: truncate(d / A), ValueError, [A, "not a readable safetensors file"]),
    ("weights-zeroed", lambda d: (d / A).write_bytes(b"\0" * 64), ValueError, [A, "not a readable safetensors file"]),
    ("r-missing", adapter_json(delitem("r")), ValueError, [C, "r: missing; expected an integer"]),
    ("r-not-a-number", adapter_json(setitem("r", "abc")), ValueError, [C, "r: expected an integer, got 'abc'"]),
    ("r-float", adapter_json(setitem("r", 4.5)), ValueError, [C, "r: expected an integer, got 4.5"]),
    ("r-zero", adapter_json(setitem("r", 0)), ValueError, [C, "r: got 0; expected an integer >= 1"]),
    ("r-disagrees-with-tensors", adapter_json(setitem("r", 8)), ValueError,
     [A, "base_model.model.", "expected (", "with r=8 from adapter_config.json"]),
    ("alpha-not-a-number", adapter_json(setitem("lora_alpha", "abc")), ValueError, [C, "lora_alpha: expected a number, got 'abc'"]),
    ("alpha-nan", adapter_json(setitem("lora_alpha", NAN)), ValueError, [C, "lora_alpha", "not a finite number"]),
    ("alpha-missing", adapter_json(delitem("lora_alpha")), ValueError, [C, "lora_alpha: missing"]),
    ("alpha-negative", adapter_json(setitem("lora_alpha", -2)), ValueError, [C, "lora_alpha: got -2.0; expected a number > 0"]),
    ("dropout-out-of-range", adapter_json(setitem("lora_dropout", 1.5)), ValueError, [C, "lora_dropout", "[0, 1)"]),
    ("peft-type-other", adapter_json(setitem("peft_type", "PREFIX_TUNING")), ValueError, [C, "peft_type", "'LORA'"]),
    ("task-type-unknown", adapter_json(setitem("task_type", "TRANSLATION")), ValueError, [C, "task_type", "'CAUSAL_LM'"]),
    ("target-modules-wrong-type", adapter_json(setitem("target_modules", 5)), ValueError, [C, "target_modules", "a list or a string"]),
    ("use-dora", adapter_json(setitem("use_dora", True)), ValueError, [C, "use_dora=true are not supported"]),
    ("bias-all", adapter_json(setitem("bias", "all")), ValueError, [C, "bias", "'none'"]),
    ("lora-a-nan", adapter_tensors(fill(f"{ADAPTER_KEY}.lora_A.weight", NAN, 3)), ValueError,
     [A, f"{ADAPTER_KEY}.lora_A.weight", "1 of 256 values are not finite"]),
    ("lora-b-inf", adapter_tensors(fill(f"{ADAPTER_KEY}.lora_B.weight", INF)), ValueError,
     [A, f"{ADAPTER_KEY}.lora_B.weight", "not finite"]),
    ("lora-b-missing", adapter_tensors(delitem(f"{ADAPTER_KEY}.lora_B.weight")), ValueError,
     [A, f"{ADAPTER_KEY}.lora_B.weight: missing"]),
    # target_modules as full names (older adapters, hand-made ones): a module they name must have its weights
    ("module-missing", lambda d: (full_name_targets(d), adapter_tensors(lambda s: [s.pop(f"{ADAPTER_KEY}.lora_{x}.weight") for x in "AB"])(d)),
     ValueError, [A, f"{ADAPTER_KEY}.lora_A.weight: missing", "target_modules"]),
    ("lora-a-transposed", adapter_tensors(lambda s: s.__setitem__(f"{ADAPTER_KEY}.lora_A.weight", s[f"{ADAPTER_KEY}.lora_A.weight"].t().contiguous())),
     ValueError, [A, f"{ADAPTER_KEY}.lora_A.weight", "shape (64, 4)", "r=4"]),
    ("lora-a-int", adapter_tensors(lambda s: s.__setitem__(f"{ADAPTER_KEY}.lora_A.weight", s[f"{ADAPTER_KEY}.lora_A.weight"].to(torch.int32))),
     ValueError, [A, f"{ADAPTER_KEY}.lora_A.weight", "dtype int32, expected float32"]),
    ("lora-b-1d", adapter_tensors(lambda s: s.__setitem__(f"{ADAPTER_KEY}.lora_B.weight", torch.zeros(4))), ValueError,
     [A, f"{ADAPTER_KEY}.lora_B.weight", "expected (out_features, r)"]),
    ("garbage-tensor", adapter_tensors(setitem("base_model.model.foo.weight", torch.zeros(2))), ValueError,
     [A, "base_model.model.foo.weight", "neither a lora_A/lora_B weight nor in modules_to_save"]),
    ("key-without-prefix", adapter_tensors(setitem("foo.weight", torch.zeros(2))), ValueError,
     [A, "foo.weight", "expected the prefix 'base_model.model.'"]),
    ("module-not-a-target", adapter_json(lambda c: c["target_modules"].remove("up_proj")), ValueError,  # PEFT's suffixes, as saved
     [A, "model.layers.0.mlp.up_proj is not among target_modules"]),
    ("module-not-a-full-name-target", lambda d: (full_name_targets(d), adapter_json(lambda c: c["target_modules"].remove("model.layers.0.mlp.up_proj"))(d)),
     ValueError, [A, "model.layers.0.mlp.up_proj is not among target_modules"]),
]  # fmt: skip


@pytest.mark.parametrize("tamper, exc, needles", [c[1:] for c in ADAPTER_CASES], ids=[c[0] for c in ADAPTER_CASES])
def test_tampered_adapter_is_refused(saved, tamper, exc, needles):
    path = saved / "adapter"
    tamper(path)
    with pytest.raises(exc) as info:
        load_peft_adapter(path)
    message = str(info.value)
    assert str(path) in message, message
    for needle in needles:
        assert needle in message, (needle, message)


def test_adapter_folder_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter folder not found"):
        load_peft_adapter(tmp_path / "nope")


def test_adapter_for_a_different_base(saved):
    model = load_quantized_model(saved / "dq", ModelKind.CAUSAL_LM, lora=LoRAConfig(rank=8, dropout=0.0))
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.down_proj: adapter shapes \(4, 128\), \(64, 4\) do not match"):
        load_adapter_into(model, load_peft_adapter(saved / "adapter"))
    adapter = load_peft_adapter(saved / "adapter")
    adapter.lora["model.layers.7.mlp.up_proj"] = adapter.lora.pop("model.layers.0.mlp.up_proj")
    model4 = load_quantized_model(saved / "dq", ModelKind.CAUSAL_LM, lora=LORA)
    with pytest.raises(ValueError, match="targets 'model.layers.7.mlp.up_proj', which this model does not have"):
        load_adapter_into(model4, adapter)


# ---- writing --------------------------------------------------------------------------------------------


def test_failed_save_leaves_nothing(tmp_path):
    model = tiny()
    prepare_model(model, QUANT, LORA)
    quantized = {n: m.weight for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
    with pytest.raises(ValueError, match="collides"):
        save_quantized_checkpoint(tmp_path / "x", model.config.to_dict(), quantized, {"model.layers.0.mlp.up_proj.weight": torch.zeros(1)})
    assert list(tmp_path.iterdir()) == []


def test_a_crash_while_writing_keeps_the_old_folders(saved, monkeypatch):
    import qlora.models.bnb_checkpoint as bnb_checkpoint
    import qlora.models.peft_format as peft_format

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    before = {p.name: p.read_bytes() for p in (saved / "dq").iterdir()}
    checkpoint = load_quantized_checkpoint(saved / "dq")
    adapter = load_peft_adapter(saved / "adapter")
    for module in (bnb_checkpoint, peft_format):
        monkeypatch.setattr(module, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_quantized_checkpoint(saved / "dq", checkpoint.config, checkpoint.quantized, checkpoint.tensors)
    with pytest.raises(OSError, match="No space left"):
        save_peft_adapter(saved / "adapter", adapter)
    assert {p.name: p.read_bytes() for p in (saved / "dq").iterdir()} == before
    assert sorted(p.name for p in saved.iterdir()) == ["adapter", "dq", "int4", "plain"]  # no temporary folders
