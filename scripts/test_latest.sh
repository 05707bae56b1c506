#!/usr/bin/env bash
# The suite against the newest releases of every dependency, in a virtualenv of its own (.venv-latest), without
# the lock: how to find out whether the next `scripts/lock.py` refresh is safe. Not part of CI.
#     bash scripts/test_latest.sh                 # whole suite
#     bash scripts/test_latest.sh -m "not slow"   # extra arguments go to pytest
# torch stays the locked build (2.13.0 CPU) unless RLHF_TORCH names another; the rest is upgraded to the newest
# releases each run. Then `.venv-latest/bin/python scripts/lock.py --check` lists what moved.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
[ -x .venv-latest/bin/python ] || python3 -m venv .venv-latest
export VIRTUAL_ENV="$ROOT/.venv-latest" RLHF_LATEST=1
rm -f "$VIRTUAL_ENV/.rlhf-setup-stamp"   # always upgrade
exec bash scripts/test.sh "$@"
