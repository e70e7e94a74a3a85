"""The user's own instruction data: a JSON Lines file or a `datasets` dataset of Alpaca or chat records.

Alpaca records are `{"instruction", "input" (optional), "output"}` (the Stanford Alpaca / Dolly shape);
chat records are `{"messages": [{"role", "content"}, ...]}` (the conversational shape of OpenAI's and
TRL's datasets). Both become conversations: an Alpaca record is one user turn (the instruction, a blank
line, the input: the prompt format of the embedded instruction tasks) and one assistant turn. They
are tokenized with the model's chat template when it has one, with the loss on the assistant turns only
(`qlora.data.tokenization.encode_chat`).

Every bad record is an error that names the file (or the dataset and split), the line (or record
number) and the field, e.g. `my.jsonl: line 7: missing field 'output' (an ALPACA record has
instruction, input (optional), output)`.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from qlora.config import DataConfig, DataSource, RecordFormat
from qlora.data.tokenization import ROLES, TokenizedDataset, encode_chat
from qlora.readers import BadFileError

_ALPACA_FIELDS = "instruction, input (optional), output"


@dataclasses.dataclass(frozen=True)
class Conversation:
    """One record of the user's data as turns.

    Attributes:
        messages: (role, content) pairs, roles in `ROLES`, at least one assistant turn.
        where: the record's place, for messages ("my.jsonl: line 7").
    """

    messages: tuple[tuple[str, str], ...]
    where: str

    @property
    def prompt(self) -> str:
        """The context before the last reply as one user prompt (for generation: RougeL)."""
        last = max(i for i, (r, _) in enumerate(self.messages) if r == "assistant")
        return "\n\n".join(c for r, c in self.messages[:last] if r != "assistant")

    @property
    def reference(self) -> str:
        """The last reply (the RougeL reference)."""
        return [c for r, c in self.messages if r == "assistant"][-1]


@dataclasses.dataclass(frozen=True)
class UserData:
    """The user's records and what they were read from."""

    conversations: list[Conversation]
    format: RecordFormat  # ALPACA or CHAT (AUTO resolved)
    origin: str  # the file, or "<dataset>[<split>]"


def _string(raw: Mapping, field: str, where: Where, fmt: RecordFormat, *, required: bool = True, nonempty: bool = True) -> str:
    if raw.get(field) is None:  # absent (JSONL) or null (a dataset column missing from this row)
        if not required:
            return ""
        fields = _ALPACA_FIELDS if fmt is RecordFormat.ALPACA else "messages"
        raise BadFileError(*where, f"missing field {field!r} (an {fmt.name} record has {fields}; it has {', '.join(map(repr, raw)) or 'no field'})")
    value = raw[field]
    if not isinstance(value, str):
        raise BadFileError(*where, f"field {field!r} is a {type(value).__name__}, expected a string")
    if nonempty and not value.strip():
        raise BadFileError(*where, f"field {field!r} is empty")
    return value


def _detect(raw: Mapping, where: Where) -> RecordFormat:
    if "messages" in raw:
        return RecordFormat.CHAT
    if "instruction" in raw:
        return RecordFormat.ALPACA
    raise BadFileError(*where, f"cannot tell the record format from its fields ({', '.join(map(repr, raw)) or 'none'}): "
                       f"expected 'messages' (CHAT) or {_ALPACA_FIELDS} (ALPACA); or set data.format")  # fmt: skip


Where = tuple[str, str]  # (file or dataset, "line N" / "record N")


def parse_record(raw: Any, where: Where, fmt: RecordFormat) -> Conversation:
    """One raw record (a JSON object / dataset row) as a Conversation.

    Raises:
        BadFileError: naming `where` and the field: not an object, a missing or empty field, a wrong type,
            an unknown role, a conversation without a reply.
    """
    if not isinstance(raw, Mapping):
        raise BadFileError(*where, f"expected a JSON object (a record), got {type(raw).__name__}")
    if fmt is RecordFormat.AUTO:
        fmt = _detect(raw, where)
    if fmt is RecordFormat.ALPACA:
        instruction = _string(raw, "instruction", where, fmt)
        extra = _string(raw, "input", where, fmt, required=False, nonempty=False)
        output = _string(raw, "output", where, fmt)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return Conversation((("user", prompt), ("assistant", output)), ": ".join(where))
    if "messages" not in raw:
        raise BadFileError(*where, f"missing field 'messages' (a CHAT record has messages: [{{role, content}}, ...]; "
                           f"it has {', '.join(map(repr, raw)) or 'no field'})")  # fmt: skip
    messages = raw["messages"]
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise BadFileError(*where, "field 'messages' must be a non-empty list of {role, content} objects")
    turns = []
    for i, m in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(m, Mapping):
            raise BadFileError(*where, f"field {at!r} is a {type(m).__name__}, expected an object with role and content")
        for field in ("role", "content"):
            if field not in m:
                raise BadFileError(*where, f"missing field '{at}.{field}'")
            if not isinstance(m[field], str):
                raise BadFileError(*where, f"field '{at}.{field}' is a {type(m[field]).__name__}, expected a string")
        if m["role"] not in ROLES:
            raise BadFileError(*where, f"field '{at}.role' is {m['role']!r}, expected one of {', '.join(ROLES)}")
        turns.append((m["role"], m["content"]))
    if not any(r == "assistant" and c.strip() for r, c in turns):
        raise BadFileError(*where, "field 'messages' has no non-empty assistant turn to train on")
    return Conversation(tuple(turns), ": ".join(where))


def _jsonl_rows(path: Path) -> Iterator[tuple[Where, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the data file (data.path) does not exist")
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = (str(path), f"line {number}")
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise BadFileError(*where, f"not valid JSON ({e.msg} at column {e.colno})") from None


def _dataset_rows(path: str, split: str) -> Iterator[tuple[Where, Any]]:
    import datasets

    folder = Path(path)
    if folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(folder))  # a `save_to_disk` folder
    else:
        try:
            loaded = datasets.load_dataset(path)  # a folder of data files, or a hub id
        except FileNotFoundError:
            raise
        except Exception as e:  # offline misses, unknown ids and bad folders all end here
            raise FileNotFoundError(f"data.path={path!r}: not a dataset available here ({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            from qlora.checks import ConfigError

            raise ConfigError("data.split", split, f"one of the splits of {path}: {', '.join(sorted(loaded))}")
        loaded = loaded[split]
    for i, row in enumerate(loaded, start=1):
        yield (f"{path}[{split}]", f"record {i}"), row


def load_user_data(config: DataConfig) -> UserData:
    """The records of `config.path` (source JSONL or HF_DATASET), in file order.

    Raises:
        ValueError: source EMBEDDED; no record.
        FileNotFoundError: no such file or dataset.
        BadFileError: a bad record, naming the file, the line and the field.
    """
    if config.source is DataSource.EMBEDDED:
        raise ValueError("data.source is EMBEDDED: there is no user data to load (set data.source=JSONL or HF_DATASET and data.path)")
    rows = _jsonl_rows(Path(config.path)) if config.source is DataSource.JSONL else _dataset_rows(config.path, config.split)
    fmt, conversations = config.format, []
    for where, raw in rows:
        if fmt is RecordFormat.AUTO and isinstance(raw, Mapping):
            fmt = _detect(raw, where)  # the first record decides; later records must follow it
        conversations.append(parse_record(raw, where, fmt))
    origin = config.path if config.source is DataSource.JSONL else f"{config.path}[{config.split}]"
    if not conversations:
        raise ValueError(f"{origin}: no records")
    return UserData(conversations, fmt, origin)


@dataclasses.dataclass(frozen=True)
class TokenizedUserData:
    dataset: TokenizedDataset
    records: int  # records read
    used: int  # sequences in `dataset`
    too_long: int  # records skipped: longer than max_length


def tokenize_user_data(tokenizer, data: UserData, *, max_length: int, limit: int | None = None, seed: int = 0) -> TokenizedUserData:
    """Token sequences of the user's conversations (loss on the replies), shuffled with `seed`.

    Conversations longer than `max_length` are skipped, not truncated (a cut reply teaches to stop
    mid-sentence), as for the embedded data; at most `limit` are kept.

    Raises:
        ValueError: every record is longer than `max_length` (names data.max_length), or a record the
            chat template cannot render (names the record).
    """
    order = list(range(len(data.conversations)))
    random.Random(seed).shuffle(order)
    examples, too_long = [], 0
    for i in order:
        c = data.conversations[i]
        if limit is not None and len(examples) == limit:
            break
        try:
            example = encode_chat(tokenizer, c.messages)
        except ValueError as e:
            raise BadFileError(c.where, None, str(e)) from None  # where: "file: line N"
        if example["input_ids"].numel() > max_length:
            too_long += 1
            continue
        examples.append(example)
    if not examples:
        raise ValueError(f"{data.origin}: all {len(data.conversations)} records are longer than data.max_length={max_length} tokens")
    return TokenizedUserData(TokenizedDataset.from_examples(examples), len(data.conversations), len(examples), too_long)
