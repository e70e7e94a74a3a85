"""Tiny transformers models saved to a folder (offline), for the loading and saving tests."""

import torch
from transformers import (BertConfig, BertForSequenceClassification, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)  # fmt: skip


def llama(tied=False):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                                        tie_word_embeddings=tied))  # fmt: skip


def llama_tied():
    return llama(tied=True)


def qwen2():
    """Biases on q/k/v and an untied head, as Qwen2.5."""
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                                        tie_word_embeddings=False))  # fmt: skip


def gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                                      eos_token_id=0, initializer_range=0.2))  # fmt: skip


def bert_config():
    return BertConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, num_labels=3)


def bert_classifier():
    torch.manual_seed(0)
    return BertForSequenceClassification(bert_config())


def bert_base():
    torch.manual_seed(0)
    return BertModel(bert_config())


def save(model, directory):
    model.save_pretrained(directory)
    return directory
