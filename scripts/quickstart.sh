#!/usr/bin/env bash
# The main job: set up (idempotent), then run the quickstart.
#     bash scripts/quickstart.sh           # SFT of the embedded SmolLM2-135M-Instruct (~5 min on 2 CPU cores)
#     bash scripts/quickstart.sh --tiny    # the same on the tiny test model (seconds)
# Any further arguments are passed to the stage as --<field> VALUE overrides.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
CONFIG=configs/sft.yaml
if [ "${1:-}" = "--tiny" ]; then
  CONFIG=configs/tiny/sft.yaml
  shift
fi
exec "$PY" -m rlhf.cli sft --config "$CONFIG" --overwrite true "$@"
