#!/usr/bin/env bash
# Create .venv/ at the repository root and install towerlite into it (idempotent: reinstalls
# only when pyproject.toml changed). CPU torch by default; set TORCH_INDEX_URL to pick another
# torch build index (e.g. PyTorch's CPU-only index on machines where PyPI's torch is the CUDA one).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 13), \
    f"towerlite needs Python 3.10-3.13, found {sys.version.split()[0]}"'
  echo "setup: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.towerlite-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing towerlite and its pinned dependencies into .venv (a minute or two)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  torch_index=()
  if [ -n "${TORCH_INDEX_URL:-}" ]; then torch_index=(--index-url "$TORCH_INDEX_URL"); fi
  .venv/bin/python -m pip install -q --disable-pip-version-check "${torch_index[@]}" "torch==2.13.0"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
  touch "$stamp"
fi
