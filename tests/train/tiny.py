"""A tiny causal LM and data, built offline, for the trainer tests (also run as a subprocess script)."""

from __future__ import annotations

import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(seed: int = 0, trainable: tuple[str, ...] = ("q_proj", "v_proj")) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attention_dropout=0.1,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    for name, p in model.named_parameters():
        p.requires_grad = any(t in name for t in trainable)
    return model


def tiny_examples(n: int = 24, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        length = 6 + int(torch.randint(0, 10, (1,), generator=g))
        ids = torch.randint(1, 64, (length,), generator=g)
        labels = ids.clone()
        labels[: length // 2] = -100  # loss on the "response" half only
        examples.append({"input_ids": ids, "labels": labels})
    return examples


if __name__ == "__main__":
    # usage: tiny.py CHECKPOINT_DIR OUT_FILE STEPS — trains, printing "step N" after each step
    from safetensors.torch import save_file

    from qlora.train import TrainConfig, train

    ckpt, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = tiny_llama()
    config = TrainConfig(max_steps=steps, micro_batch_size=4, grad_accum=2, lr=1e-2, save_every=1, warmup_ratio=0.1)
    train(model, tiny_examples(), config, checkpoint_dir=ckpt, progress=False,
          on_step=lambda m: print(f"step {m.step}", flush=True))  # fmt: skip
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}, out)
