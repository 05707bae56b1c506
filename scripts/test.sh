#!/usr/bin/env bash
# The test command: set up (idempotent), then run the whole suite. Extra arguments go to pytest.
#     bash scripts/test.sh                 # everything, as CI runs it
#     bash scripts/test.sh -m "not slow"   # skip the embedded-model and multi-process tests
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec "$PY" -m pytest -q -rs "$@"
