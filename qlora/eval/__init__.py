"""Evaluators, one file per task, each returning an `EvalResult`: a `Score` (task, metric, value, n,
95% interval), groups, and per-item scores keyed by stable ids (`qlora.eval.items`) for paired
comparisons between data types and methods.

They take an ordinary `torch.nn.Module` Hugging Face model and its tokenizer (our quantized models are
plain HF models after surgery) and never need the trainer.
"""
