"""The pipeline layer: what a DVC stage, the Hydra sweep or a `qlora` command does, one function each.

Entry points (`stages/*.py`, the command line) read params or arguments, call one function here and
write the outputs it returns; this package holds the pipeline's configs (runs, ablation, the whole of
params.yaml), their validation at the door, the artifact layout, and MLflow logging. Below it, the
library (`qlora.quant`, `qlora.nn`, `qlora.models`, `qlora.train`, `qlora.eval`, `qlora.report`) takes
typed arguments and returns numbers. Nothing is imported eagerly here: a stage pulls in only what it
uses (the dependency test in tests/pipeline checks dvc.yaml against those imports).
"""
