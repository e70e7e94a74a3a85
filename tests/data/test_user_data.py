"""The user's own instruction data: JSONL and `datasets` sources, Alpaca and chat records, response-only
loss with and without a chat template, and errors that name the file, the line and the field."""

import json
from pathlib import Path

import pytest
import torch

from qlora.checks import ConfigError
from qlora.config import DataConfig, DataSource, RecordFormat
from qlora.data.tokenization import IGNORE_INDEX, encode_chat, encode_instruction
from qlora.data.user import load_user_data, tokenize_user_data
from qlora.readers import BadFileError
from tests.tiny_text import tiny_tokenizer
from tests.peers import peer

FIXTURES = Path(__file__).parent / "fixtures"


def _config(path, source=DataSource.JSONL, **kw) -> DataConfig:
    return DataConfig(source=source, path=str(path), **kw)


def _write(tmp_path, lines) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_data_config_path_goes_with_the_source():
    with pytest.raises(ConfigError, match=r"path='x.jsonl': expected empty for source EMBEDDED"):
        DataConfig(path="x.jsonl")
    with pytest.raises(ConfigError, match=r"path='': expected a JSONL file, dataset folder or hub id for source JSONL"):
        DataConfig(source="jsonl")
    with pytest.raises(ConfigError, match=r"format='xml': expected one of AUTO, ALPACA, CHAT"):
        DataConfig(source="jsonl", path="a.jsonl", format="xml")
    assert DataConfig(source="hf_dataset", path="org/name").source is DataSource.HF_DATASET


def test_alpaca_jsonl_is_read_in_order_with_input_joined_to_the_instruction():
    data = load_user_data(_config(FIXTURES / "alpaca20.jsonl"))
    assert data.format is RecordFormat.ALPACA and len(data.conversations) == 20
    first = data.conversations[0]
    assert first.messages == (("user", "Give the opposite of the word.\n\nhot"), ("assistant", "cold"))
    assert first.where.endswith("alpaca20.jsonl: line 1")
    no_input = data.conversations[15]
    assert no_input.messages[0] == ("user", "Write a one-sentence greeting for a new colleague.")


def test_chat_records_keep_every_turn():
    data = load_user_data(_config(FIXTURES / "chat4.jsonl"))
    assert data.format is RecordFormat.CHAT and len(data.conversations) == 4
    multi = data.conversations[1]
    assert [r for r, _ in multi.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert multi.reference == "A pear." and multi.prompt == "You answer briefly.\n\nName a fruit.\n\nAnother one?"


@pytest.mark.parametrize(
    "lines, fmt, message",
    [
        ([{"instruction": "a", "output": "b"}, {"instruction": "c"}], RecordFormat.AUTO,
         r"data.jsonl: line 2: missing field 'output' \(an ALPACA record has instruction, input \(optional\), output; it has 'instruction'\)"),
        ([{"instruction": "a", "output": 3}], RecordFormat.AUTO, r"data.jsonl: line 1: field 'output' is a int, expected a string"),
        ([{"instruction": "a", "output": "b"}, "{not json"], RecordFormat.AUTO, r"data.jsonl: line 2: not valid JSON"),
        ([{"prompt": "a", "completion": "b"}], RecordFormat.AUTO, r"line 1: cannot tell the record format from its fields \('prompt', 'completion'\)"),
        ([{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}], RecordFormat.AUTO,
         r"line 1: field 'messages\[1\].role' is 'bot', expected one of system, user, assistant"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], RecordFormat.CHAT, r"line 1: field 'messages' has no non-empty assistant turn"),
        ([{"messages": [{"role": "user"}]}], RecordFormat.CHAT, r"line 1: missing field 'messages\[0\].content'"),
        ([{"instruction": "a", "output": "b"}], RecordFormat.CHAT, r"line 1: missing field 'messages'"),
        (["[1, 2]"], RecordFormat.AUTO, r"line 1: expected a JSON object \(a record\), got list"),
        (["", "  "], RecordFormat.AUTO, r"no records"),
    ],
)
def test_bad_records_name_the_file_line_and_field(tmp_path, lines, fmt, message):
    with pytest.raises(ValueError, match=message) as info:
        load_user_data(_config(_write(tmp_path, lines), format=fmt))
    if isinstance(info.value, BadFileError):
        assert info.value.path == tmp_path / "data.jsonl"


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.jsonl: the data file \(data.path\) does not exist"):
        load_user_data(_config(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize("chat_template", [True, False])
def test_a_single_turn_encodes_as_an_instruction(chat_template):
    tok = tiny_tokenizer(chat_template=chat_template)
    chat = encode_chat(tok, [("user", "Say hi."), ("assistant", "Hello world!")])
    plain = encode_instruction(tok, "Say hi.", "Hello world!")
    assert torch.equal(chat["input_ids"], plain["input_ids"]) and torch.equal(chat["labels"], plain["labels"])


@pytest.mark.parametrize("chat_template", [True, False])
def test_only_assistant_turns_are_trained(chat_template):
    tok = tiny_tokenizer(chat_template=chat_template)
    turns = [("system", "Be brief."), ("user", "Say hi."), ("assistant", "Hello"), ("user", "Again?"), ("assistant", "world"),
             ("user", "ignored trailing turn")]  # fmt: skip
    out = encode_chat(tok, turns)
    trained = out["labels"] != IGNORE_INDEX
    assert torch.equal(out["labels"][trained], out["input_ids"][trained])
    text = tok.decode(out["input_ids"][trained])
    end = "<|im_end|>"  # the chat template's end of turn; the plain format's EOS is the same token here
    assert text.replace(end, "").replace("\n", "") == "Helloworld", text
    assert text.count(end) == 2  # each reply learns to stop
    assert "ignored" not in tok.decode(out["input_ids"])
    context = tok.decode(out["input_ids"][~trained])
    assert "Be brief." in context and "Again?" in context and "Hello" not in context


def test_the_chat_template_renders_the_turns():
    tok = tiny_tokenizer(chat_template=True)
    out = encode_chat(tok, [("user", "Say hi."), ("assistant", "Hello")])
    assert tok.decode(out["input_ids"]) == "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"


def test_tokenize_skips_long_records_and_counts_them(tmp_path):
    tok = tiny_tokenizer()
    long = {"instruction": "Say hi. " * 40, "output": "Hello"}
    path = _write(tmp_path, [{"instruction": "Say hi.", "output": "Hello"}] * 3 + [long])
    out = tokenize_user_data(tok, load_user_data(_config(path)), max_length=64)
    assert (out.records, out.used, out.too_long, len(out.dataset)) == (4, 3, 1, 3)
    assert all((ex["labels"] != IGNORE_INDEX).any() for ex in out.dataset)
    limited = tokenize_user_data(tok, load_user_data(_config(path)), max_length=512, limit=2)
    assert len(limited.dataset) == 2
    with pytest.raises(ValueError, match=r"all 4 records are longer than data.max_length=8 tokens"):
        tokenize_user_data(tok, load_user_data(_config(path)), max_length=8)


def test_hf_dataset_folder_and_splits(tmp_path):
    datasets = peer("datasets")
    rows = [json.loads(line) for line in (FIXTURES / "chat4.jsonl").read_text().splitlines()]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:3]), "test": datasets.Dataset.from_list(rows[3:])})
    dd.save_to_disk(str(tmp_path / "ds"))
    data = load_user_data(_config(tmp_path / "ds", DataSource.HF_DATASET, split="test"))
    assert data.format is RecordFormat.CHAT and [c.reference for c in data.conversations] == ["Yes, ice is cold."]
    assert data.conversations[0].where == f"{tmp_path / 'ds'}[test]: record 1"
    with pytest.raises(ConfigError, match=r"data.split='dev': expected one of the splits of .*: test, train"):
        load_user_data(_config(tmp_path / "ds", DataSource.HF_DATASET, split="dev"))
    # a folder of data files (load_dataset's json builder): Alpaca rows missing "input" get None there
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "train.jsonl").write_text((FIXTURES / "alpaca20.jsonl").read_text())
    files = load_user_data(_config(tmp_path / "files", DataSource.HF_DATASET))
    assert len(files.conversations) == 20 and files.conversations[15].messages[0][1].startswith("Write a one-sentence")
