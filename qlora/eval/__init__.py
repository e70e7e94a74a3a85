"""Evaluators, one file per task, each returning an `EvalResult` (score, n, 95% interval, groups).

They take an ordinary `torch.nn.Module` Hugging Face model and its tokenizer (our quantized models are
plain HF models after surgery) and never need the trainer.
"""
