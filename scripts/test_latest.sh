#!/usr/bin/env bash
# The suite against the newest releases of every dependency, in a virtualenv of its own (.venv-latest), without
# the lock: how to find out whether the next `scripts/lock.py` refresh is safe. Not part of CI.
#     bash scripts/test_latest.sh                 # whole suite
#     bash scripts/test_latest.sh -m "not slow"   # extra arguments go to pytest
# Everything is upgraded to the newest releases each run, torch included (on the project's CPU machines pip caps
# it at the 2.14.1 build that lies on disk, a CUDA build). Then `.venv-latest/bin/python scripts/lock.py --check`
# lists what moved.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
[ -x .venv-latest/bin/python ] || python3 -m venv .venv-latest
export VIRTUAL_ENV="$ROOT/.venv-latest" RLHF_LATEST=1
rm -f "$VIRTUAL_ENV/.rlhf-setup-stamp"   # always upgrade
exec bash scripts/test.sh "$@"
