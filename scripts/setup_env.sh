#!/usr/bin/env bash
# Creates .venv with the pinned torch (CUDA build; runs on CPU too) and installs metala-vision with dev extras.
# Usage: bash scripts/setup_env.sh        (idempotent: reuses .venv if it is already complete)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned here, not in setup.cfg: this pair lies on the CPU machines' local disk.
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e '.[dev]'
