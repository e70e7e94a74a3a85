"""The `qlora` command line: quantize, finetune, eval, merge, info and pipeline (see `qlora --help`).

An entry point like stages/: it reads arguments (Hydra overrides of conf/) and calls qlora/pipeline.
"""
