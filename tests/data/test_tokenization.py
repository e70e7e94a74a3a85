import dataclasses

import pytest
import torch

from qlora.data.tokenization import (IGNORE_INDEX, TokenizedDataset, encode_classification, encode_instruction,
                                     prompt_ids, tokenize_classification, tokenize_instructions)  # fmt: skip
from qlora.train.batching import collate
from tests.tiny_text import tiny_tokenizer


@pytest.fixture(scope="module")
def chat_tok():
    return tiny_tokenizer(chat_template=True)


@pytest.fixture(scope="module")
def plain_tok():
    return tiny_tokenizer(chat_template=False)


def test_chat_template_masks_the_prompt(chat_tok):
    e = encode_instruction(chat_tok, "Say hi.", "Hello world!")
    text = chat_tok.decode(e["input_ids"])
    assert text == "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\nHello world!<|im_end|>\n"
    n_prompt = len(prompt_ids(chat_tok, "Say hi."))
    assert (e["labels"][:n_prompt] == IGNORE_INDEX).all()
    assert torch.equal(e["labels"][n_prompt:], e["input_ids"][n_prompt:])
    assert chat_tok.decode(e["labels"][n_prompt:]) == "Hello world!<|im_end|>\n"
    assert e["input_ids"][:n_prompt].tolist() == prompt_ids(chat_tok, "Say hi.")  # train and eval prompts agree


def test_plain_text_ends_with_eos(plain_tok):
    e = encode_instruction(plain_tok, "Say hi.", "Hello world!")
    kept = e["labels"][e["labels"] != IGNORE_INDEX]
    assert plain_tok.decode(kept[:-1]) == "Hello world!" and kept[-1] == plain_tok.eos_token_id
    assert plain_tok.decode(e["input_ids"][: (e["labels"] == IGNORE_INDEX).sum()]) == "Say hi."


def test_truncation(chat_tok):
    full = encode_instruction(chat_tok, "Say hi.", "Hello world! " * 5)
    n_prompt = int((full["labels"] == IGNORE_INDEX).sum())
    cut = encode_instruction(chat_tok, "Say hi.", "Hello world! " * 5, max_length=n_prompt + 3)
    assert cut["input_ids"].tolist() == full["input_ids"][: n_prompt + 3].tolist()
    with pytest.raises(ValueError, match="no room"):
        encode_instruction(chat_tok, "Say hi.", "x", max_length=n_prompt)
    with pytest.raises(TypeError):
        encode_instruction(chat_tok, "Say hi.", ["x"])


@dataclasses.dataclass
class Ex:
    text: str
    label: int
    text_pair: str | None = None


def test_classification_encoding(plain_tok):
    e = encode_classification(plain_tok, "the cat", 2)
    assert e["input_ids"].tolist() == plain_tok("the cat").input_ids and e["label"].item() == 2
    with pytest.raises(ValueError, match="-1"):
        encode_classification(plain_tok, "the cat", -1)


def test_token_file_roundtrip(tmp_path, chat_tok):
    ds = tokenize_instructions(chat_tok, [("a", "b"), ("the cat", "sat on the mat")])
    ds.save(tmp_path / "t.safetensors")
    back = TokenizedDataset.load(tmp_path / "t.safetensors")
    assert back.kind == "causal" and len(back) == 2 and back.lengths() == ds.lengths()
    for a, b in zip(ds, back):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert back[-1]["input_ids"].dtype == torch.long
    batch = collate(list(back), pad_token_id=0)  # what the trainer consumes
    assert batch["labels"].shape == batch["input_ids"].shape

    cls = tokenize_classification(chat_tok, [Ex("x", 1), Ex("y z", 0, "w")])
    cls.save(tmp_path / "c.safetensors")
    back = TokenizedDataset.load(tmp_path / "c.safetensors")
    assert back.kind == "classification" and [int(e["label"]) for e in back] == [1, 0]
    with pytest.raises(IndexError):
        back[2]


def test_token_file_rejects_foreign_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a token file"):
        TokenizedDataset.load(tmp_path / "x.safetensors")
