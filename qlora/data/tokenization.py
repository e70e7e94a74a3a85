"""Examples to token ids for training, and token files on disk (safetensors: no pickle).

Instruction tuning computes the loss on the response only (artidoro/qlora's default
`train_on_source=False`): prompt positions get label -100. When the tokenizer has a chat template the
prompt is a user turn and the response the assistant turn (with its end-of-turn token, so the model
learns to stop); otherwise the prompt is plain text and the response ends with EOS.

An example is a dict of 1-D LongTensors, the shape `qlora.train.batching.collate` takes: causal LM
{"input_ids", "labels"}, classification {"input_ids", "label"} (label 0-d).
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save

from qlora.atomic import write_bytes
from qlora.readers import BadFileError, check_tensor, read_safetensors_with_metadata

IGNORE_INDEX = -100
_FORMAT = "qlora-tokens/1"
CAUSAL, CLASSIFICATION = "causal", "classification"


def canonical_safetensors(data: bytes) -> bytes:
    """`data` (a serialized safetensors file) with its JSON header written with sorted keys.

    safetensors writes `__metadata__` from a hash map whose order changes from process to process, so
    the same tensors and metadata gave different bytes (and DVC re-ran every stage downstream). The
    header is re-serialized canonically (sorted keys, no spaces, padded with spaces to 8 bytes as the
    format requires); tensor offsets are relative to the data section and do not change.
    """
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + size :]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _eos_ids(tokenizer) -> list[int]:
    return [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]


def _chat_texts(tokenizer, prompt: str, response: str | None) -> tuple[str, str]:
    user = [{"role": "user", "content": prompt}]
    prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    if response is None:
        return prompt_text, ""
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prompt_text):
        raise ValueError("the tokenizer's chat template does not render the prompt as a prefix of the dialogue")
    return prompt_text, full[len(prompt_text) :]


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The ids a model is given to answer `prompt` (chat template with generation prompt, if any)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if has_chat_template(tokenizer):
        return tokenizer(_chat_texts(tokenizer, prompt, None)[0], add_special_tokens=False).input_ids
    return tokenizer(prompt).input_ids  # plain text: the tokenizer's own BOS, if it adds one


def response_tail_tokens(tokenizer, prompt: str, response: str) -> int:
    """How many of the last label tokens of `encode_instruction(prompt, response)` are the template's, not the
    response's: the end-of-turn token and what follows it (SmolLM2's "<|im_end|>" + "\n"), or the EOS of a
    plain-text prompt. Held-out NLL is reported with and without them (a model learns them in a few steps).
    """
    if has_chat_template(tokenizer):
        _, response_text = _chat_texts(tokenizer, prompt, response)
        end = response_text.rfind(response) + len(response) if response and response in response_text else 0
        full = tokenizer(response_text, add_special_tokens=False).input_ids
        head = tokenizer(response_text[:end], add_special_tokens=False).input_ids if end else []
        return max(0, len(full) - len(head))
    return len(_eos_ids(tokenizer))


def encode_instruction(tokenizer, prompt: str, response: str, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """One training sequence: prompt + response ids, labels -100 on the prompt.

    Args:
        tokenizer: a Hugging Face tokenizer.
        prompt: the user's text (instruction and input).
        response: the target text.
        max_length: truncate the sequence to this many tokens (the response's tail is cut first; a
            prompt longer than max_length leaves no response and is an error).

    Returns:
        {"input_ids": (T,) long, "labels": (T,) long}.

    Raises:
        ValueError: the prompt alone fills `max_length`.
    """
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    if has_chat_template(tokenizer):
        prompt_text, response_text = _chat_texts(tokenizer, prompt, response)
        p = tokenizer(prompt_text, add_special_tokens=False).input_ids
        r = tokenizer(response_text, add_special_tokens=False).input_ids
    else:
        p = tokenizer(prompt).input_ids
        r = tokenizer(response, add_special_tokens=False).input_ids + _eos_ids(tokenizer)
    if max_length is not None:
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        if len(p) >= max_length:
            raise ValueError(f"prompt of {len(p)} tokens leaves no room for a response in max_length={max_length}")
        r = r[: max_length - len(p)]
    ids = torch.tensor(p + r, dtype=torch.long)
    labels = ids.clone()
    labels[: len(p)] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels}


ROLES = ("system", "user", "assistant")


def encode_chat(tokenizer, messages: Sequence[tuple[str, str]], max_length: int | None = None) -> dict[str, torch.Tensor]:
    """A conversation as one training sequence: every assistant turn is trained, the rest is context.

    With a chat template, each assistant turn is what the template adds after the conversation so far
    plus the generation prompt (its end-of-turn token included); without one, context turns are plain
    text joined by blank lines (the first with the tokenizer's BOS) and each reply ends with EOS. A
    single user turn and reply encode exactly as `encode_instruction(prompt, response)`. Turns after
    the last reply teach nothing and are dropped.

    Args:
        messages: (role, content) pairs; roles in `ROLES`; at least one assistant turn.
        max_length: longest sequence; a longer conversation is an error (the caller decides to skip).

    Returns:
        {"input_ids": (T,) long, "labels": (T,) long} with -100 outside the assistant turns.

    Raises:
        ValueError: an unknown role, no assistant turn, a template that does not render turns as prefixes
            of the dialogue, or a sequence longer than `max_length`.
    """
    messages = [(str(r), str(c)) for r, c in messages]
    bad = [r for r, _ in messages if r not in ROLES]
    if bad:
        raise ValueError(f"role {bad[0]!r} is not one of {', '.join(ROLES)}")
    last = max((i for i, (r, _) in enumerate(messages) if r == "assistant"), default=None)
    if last is None:
        raise ValueError("a conversation needs at least one assistant turn to train on")
    messages = messages[: last + 1]
    segments: list[tuple[list[int], bool]] = []  # (ids, trained)
    if has_chat_template(tokenizer):
        dicts = [{"role": r, "content": c} for r, c in messages]
        done = ""
        for i, (role, _) in enumerate(messages):
            if role != "assistant":
                continue
            prefix = tokenizer.apply_chat_template(dicts[:i], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(dicts[: i + 1], tokenize=False)
            if not prefix.startswith(done) or not full.startswith(prefix):
                raise ValueError("the tokenizer's chat template does not render the prompt as a prefix of the dialogue")
            segments.append((tokenizer(prefix[len(done) :], add_special_tokens=False).input_ids, False))
            segments.append((tokenizer(full[len(prefix) :], add_special_tokens=False).input_ids, True))
            done = full
    else:
        context: list[str] = []
        for role, content in messages:
            if role != "assistant":
                context.append(content)
                continue
            text = "\n\n".join(context)
            context = []
            first = not segments
            if not first:
                text = "\n\n" + text if text else ""
            ids = tokenizer(text).input_ids if first else (tokenizer(text, add_special_tokens=False).input_ids if text else [])
            segments.append((ids, False))
            segments.append((tokenizer(content, add_special_tokens=False).input_ids + _eos_ids(tokenizer), True))
    ids = [t for seg, _ in segments for t in seg]
    labels = [t if trained else IGNORE_INDEX for seg, trained in segments for t in seg]
    if max_length is not None and len(ids) > max_length:
        raise ValueError(f"the conversation has {len(ids)} tokens, more than max_length={max_length}")
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}


def encode_classification(tokenizer, text: str, label: int, text_pair: str | None = None,
                          max_length: int | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """{"input_ids": (T,) long, "label": () long}, with the tokenizer's special tokens (e.g. [CLS] .. [SEP])."""
    if not isinstance(label, int) or label < 0:
        raise ValueError(f"label must be a non-negative int, got {label!r}")
    enc = tokenizer(text, text_pair, truncation=max_length is not None, max_length=max_length)
    return {"input_ids": torch.tensor(enc.input_ids, dtype=torch.long), "label": torch.tensor(label)}


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizedDataset(Sequence):
    """Ragged token sequences stored flat, indexable as example dicts.

    Attributes:
        kind: "causal" (per-token `labels`) or "classification" (one `label` per example).
        input_ids: (total_tokens,) int32, all sequences concatenated.
        offsets: (n + 1,) int64; sequence i is input_ids[offsets[i]:offsets[i + 1]].
        labels: (total_tokens,) int32 for causal, (n,) int64 for classification.
    """

    kind: str
    input_ids: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.kind not in (CAUSAL, CLASSIFICATION):
            raise ValueError(f"kind must be {CAUSAL!r} or {CLASSIFICATION!r}, got {self.kind!r}")
        for name in ("input_ids", "offsets", "labels"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must be a 1-D integer tensor, got {got}")
        n_tok, n = self.input_ids.numel(), self.offsets.numel() - 1
        if n < 0 or int(self.offsets[0]) != 0 or int(self.offsets[-1]) != n_tok:
            first = self.offsets[:1].tolist()
            last = self.offsets[-1:].tolist()
            raise ValueError(f"offsets must start at 0 and end at the number of tokens ({n_tok}), got {first} .. {last}")
        if n and bool((self.offsets[1:] < self.offsets[:-1]).any()):
            raise ValueError("offsets must be non-decreasing (sequence i is input_ids[offsets[i]:offsets[i + 1]])")
        expected = n_tok if self.kind == CAUSAL else n
        if self.labels.numel() != expected:
            per = "one per token" if self.kind == CAUSAL else "one per example"
            raise ValueError(f"{self.kind} labels must have {expected} entries ({per}), got {self.labels.numel()}")
        if n_tok and int(self.input_ids.min()) < 0:
            raise ValueError(f"input_ids must be >= 0, got {int(self.input_ids.min())}")
        if self.labels.numel():
            low = IGNORE_INDEX if self.kind == CAUSAL else 0
            bad = (self.labels < 0) & (self.labels != low)
            if bool(bad.any()):
                allowed = f"token ids >= 0 or {IGNORE_INDEX}" if self.kind == CAUSAL else "class indices >= 0"
                raise ValueError(f"labels must be {allowed}, got {int(self.labels[bad][0])}")

    @classmethod
    def from_examples(cls, examples: Sequence[dict[str, torch.Tensor]]) -> "TokenizedDataset":
        if not examples:
            raise ValueError("no examples to store")
        kind = CAUSAL if "labels" in examples[0] else CLASSIFICATION
        lengths = torch.tensor([e["input_ids"].numel() for e in examples], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        ids = torch.cat([e["input_ids"] for e in examples]).to(torch.int32)
        if kind == CAUSAL:
            labels = torch.cat([e["labels"] for e in examples]).to(torch.int32)
        else:
            labels = torch.stack([torch.as_tensor(e["label"]) for e in examples]).to(torch.long)
        return cls(kind, ids, offsets, labels)

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} examples")
        i %= len(self)
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        out = {"input_ids": self.input_ids[a:b].long()}
        if self.kind == CAUSAL:
            out["labels"] = self.labels[a:b].long()
        else:
            out["label"] = self.labels[i].clone()
        return out

    def lengths(self) -> list[int]:
        return (self.offsets[1:] - self.offsets[:-1]).tolist()

    def save(self, path: str | Path) -> None:
        """One .safetensors file (tensors + a format tag and the kind in its metadata), written atomically."""
        tensors = {"input_ids": self.input_ids.contiguous(), "offsets": self.offsets.contiguous(),
                   "labels": self.labels.contiguous()}  # fmt: skip
        write_bytes(path, canonical_safetensors(save(tensors, metadata={"format": _FORMAT, "kind": self.kind})))

    @classmethod
    def load(cls, path: str | Path) -> "TokenizedDataset":
        """Reads a token file written by `save`, checking its format tag, tensors and their consistency.

        Raises:
            FileNotFoundError: no such file.
            BadFileError (ValueError): naming the file and the key: not a token file, a truncated file,
                a missing or extra tensor, a wrong dtype, offsets or labels that disagree with the tokens.
        """
        tensors, meta = read_safetensors_with_metadata(path, "token file")
        if meta.get("format") != _FORMAT:
            raise BadFileError(path, "format", f"not a token file: the metadata's format is {meta.get('format')!r}, expected {_FORMAT!r}")
        kind = meta.get("kind")
        if kind not in (CAUSAL, CLASSIFICATION):
            raise BadFileError(path, "kind", f"metadata says {kind!r}; expected {CAUSAL!r} or {CLASSIFICATION!r}")
        expected = {"input_ids": (torch.int32,), "offsets": (torch.int64,),
                    "labels": (torch.int32,) if kind == CAUSAL else (torch.int64,)}  # fmt: skip
        for key in sorted(set(tensors) - set(expected)):
            raise BadFileError(path, key, f"unexpected tensor; a token file holds {sorted(expected)}")
        for key, dtypes in expected.items():
            if key not in tensors:
                raise BadFileError(path, key, f"missing; a token file holds {sorted(expected)}")
            check_tensor(tensors[key], path, key, dtypes=dtypes)
        try:
            return cls(kind, tensors["input_ids"], tensors["offsets"], tensors["labels"])
        except ValueError as e:
            key = str(e).split(" ", 1)[0]
            raise BadFileError(path, key if key in expected else None, str(e)) from None


def tokenize_instructions(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int | None = None) -> TokenizedDataset:
    """(prompt, response) pairs to a causal-LM TokenizedDataset (loss on the responses only)."""
    return TokenizedDataset.from_examples([encode_instruction(tokenizer, p, r, max_length) for p, r in pairs])


def tokenize_classification(tokenizer, examples: Sequence, max_length: int | None = None) -> TokenizedDataset:
    """Objects with `text`, `label` and optional `text_pair` (e.g. ClassificationExample) to tokens."""
    return TokenizedDataset.from_examples(
        [encode_classification(tokenizer, e.text, e.label, getattr(e, "text_pair", None), max_length) for e in examples]
    )
