"""GGUF tokenizer metadata of a sentencepiece-style BPE (byte fallback, `▁` for spaces): Gemma's and
Llama 2's kind. (Byte-level BPE is covered by the round trips in test_gguf_export.py.)"""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from qlora.models.gguf_vocab import TokenizerKind, read_vocab, tokenizer_kind
from tests.peers import peer

gguf = peer("gguf")


@pytest.fixture
def spm_folder(tmp_path):
    # ids: 0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, 4..259 bytes, then pieces (a run of two spaces among them)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    pieces = ["▁", "a", "b", "▁a", "▁▁", "ab", "▁ab"]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)] + pieces)}
    merges = [("▁", "a"), ("▁", "▁"), ("a", "b"), ("▁", "ab")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(tmp_path)
    return tmp_path


def test_sentencepiece_style_vocabulary(spm_folder):
    assert tokenizer_kind(spm_folder) is TokenizerKind.SENTENCEPIECE_BPE
    v = read_vocab(spm_folder, 270, space_runs_user_defined=True)
    T = gguf.TokenType
    assert v.kind.value == "llama" and v.pre == "default" and len(v.tokens) == 270
    assert v.tokens[:4] == ("<pad>", "<eos>", "<bos>", "<unk>") and set(v.token_types[:4]) == {T.CONTROL}
    assert v.token_types[4:260] == (T.BYTE,) * 256 and v.tokens[4] == "<0x00>" and v.scores[4:260] == (0.0,) * 256
    assert v.tokens[260:267] == ("▁", "a", "b", "▁a", "  ", "ab", "▁ab")  # the run of spaces spelled as spaces
    assert v.token_types[260:267] == (T.NORMAL,) * 4 + (T.USER_DEFINED,) + (T.NORMAL,) * 2
    assert v.scores[260:267] == (-0.0, -1.0, -2.0, -3.0, -1000.0, -4.0, -5.0)  # minus the rank among normal pieces
    assert v.tokens[267:] == ("[PAD267]", "[PAD268]", "[PAD269]") and set(v.token_types[267:]) == {T.UNUSED}
    assert v.space_prefix is True  # Metaspace prepends "▁" to the first word
    assert read_vocab(spm_folder, 270).tokens[264] == "▁▁"  # without the Gemma rule: as the vocabulary spells it
    with pytest.raises(ValueError, match="does not fit the model's vocab_size 100"):
        read_vocab(spm_folder, 100)
