"""Token files that lie are refused with one error naming the file and the key (no `assert`)."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from qlora.data.tokenization import IGNORE_INDEX, TokenizedDataset


def causal():
    examples = []
    for n in (5, 3, 7):
        ids = torch.arange(1, n + 1)
        labels = ids.clone()
        labels[: n // 2] = IGNORE_INDEX
        examples.append({"input_ids": ids, "labels": labels})
    return TokenizedDataset.from_examples(examples)


def classification():
    return TokenizedDataset.from_examples([{"input_ids": torch.arange(1, 4), "label": torch.tensor(i % 2)} for i in range(4)])


@pytest.fixture(params=["causal", "classification"])
def token_file(request, tmp_path):
    path = tmp_path / f"{request.param}.safetensors"
    (causal() if request.param == "causal" else classification()).save(path)
    return path


def edit(path, fn, meta_fn=None):
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
    tensors = load_file(path)
    fn(tensors)
    if meta_fn is not None:
        meta_fn(meta)
    save_file(tensors, path, metadata=meta)


def set_tensor(key, make):
    return lambda p: edit(p, lambda t: t.__setitem__(key, make(t)))


CASES = [
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[:-9]), ValueError, ["not a readable safetensors file"]),
    ("garbage-appended", lambda p: p.write_bytes(p.read_bytes() + b"junk"), ValueError, ["truncated or corrupt"]),
    ("deleted", lambda p: p.unlink(), FileNotFoundError, ["token file not found"]),
    ("format-tag-removed", lambda p: edit(p, lambda t: None, lambda m: m.pop("format")), ValueError, ["format: not a token file"]),
    ("kind-unknown", lambda p: edit(p, lambda t: None, lambda m: m.__setitem__("kind", "regression")), ValueError,
     ["kind: metadata says 'regression'"]),
    ("labels-deleted", lambda p: edit(p, lambda t: t.pop("labels")), ValueError, ["labels: missing"]),
    ("offsets-deleted", lambda p: edit(p, lambda t: t.pop("offsets")), ValueError, ["offsets: missing"]),
    ("extra-tensor", lambda p: edit(p, lambda t: t.__setitem__("attention_mask", torch.ones(3))), ValueError,
     ["attention_mask: unexpected tensor"]),
    ("input-ids-float", set_tensor("input_ids", lambda t: t["input_ids"].float()), ValueError, ["input_ids: dtype float32, expected int32"]),
    ("offsets-int32", set_tensor("offsets", lambda t: t["offsets"].int()), ValueError, ["offsets: dtype int32, expected int64"]),
    ("offsets-end-wrong", set_tensor("offsets", lambda t: torch.cat([t["offsets"][:-1], t["offsets"][-1:] + 1])), ValueError,
     ["offsets: offsets must start at 0 and end at the number of tokens"]),
    ("offsets-start-wrong", set_tensor("offsets", lambda t: torch.cat([t["offsets"][:1] + 1, t["offsets"][1:]])), ValueError,
     ["offsets", "start at 0"]),
    ("offsets-decreasing", set_tensor("offsets", lambda t: t["offsets"].index_put((torch.tensor([1]),), torch.tensor(100))), ValueError,
     ["offsets must be non-decreasing"]),
    ("offsets-2d", set_tensor("offsets", lambda t: t["offsets"].reshape(1, -1)), ValueError, ["offsets must be a 1-D integer tensor"]),
    ("labels-too-short", set_tensor("labels", lambda t: t["labels"][:-1]), ValueError, ["labels", "entries"]),
    ("labels-negative", set_tensor("labels", lambda t: t["labels"].index_put((torch.tensor([0]),), torch.tensor(-5, dtype=t["labels"].dtype))),
     ValueError, ["labels must be", "got -5"]),
    ("input-ids-negative", set_tensor("input_ids", lambda t: t["input_ids"].index_put((torch.tensor([1]),), torch.tensor(-2, dtype=torch.int32))),
     ValueError, ["input_ids must be >= 0, got -2"]),
    ("input-ids-too-short", set_tensor("input_ids", lambda t: t["input_ids"][:-2]), ValueError, ["end at the number of tokens"]),
]  # fmt: skip


@pytest.mark.parametrize("tamper, exc, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tampered_token_file_is_refused(token_file, tamper, exc, needles):
    tamper(token_file)
    with pytest.raises(exc) as info:
        TokenizedDataset.load(token_file)
    message = str(info.value)
    assert str(token_file) in message, message
    for needle in needles:
        assert needle in message, (needle, message)


def test_good_file_round_trips_and_the_write_is_atomic(token_file, monkeypatch):
    data = TokenizedDataset.load(token_file)
    assert len(data) in (3, 4)
    import qlora.data.tokenization as tokenization

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    before = token_file.read_bytes()
    monkeypatch.setattr(tokenization, "save", disk_full)
    with pytest.raises(OSError):
        data.save(token_file)
    assert token_file.read_bytes() == before and [p.name for p in token_file.parent.iterdir()] == [token_file.name]


def test_construction_errors_are_value_errors_not_asserts():
    with pytest.raises(ValueError, match=r"causal labels must have 3 entries \(one per token\), got 2"):
        TokenizedDataset("causal", torch.arange(3, dtype=torch.int32), torch.tensor([0, 3]), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"offsets must start at 0"):
        TokenizedDataset("classification", torch.arange(3, dtype=torch.int32), torch.tensor([1, 3]), torch.zeros(1, dtype=torch.long))
