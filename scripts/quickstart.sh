#!/usr/bin/env bash
# The main job: set up (idempotent), then run every stage of the quickstart pipeline.
#     bash scripts/quickstart.sh           # SmolLM2-135M-Instruct: sft -> collect -> label -> reward -> policy -> evaluate
#     bash scripts/quickstart.sh --tiny    # the same pipeline on the tiny test model (about a minute)
# Further arguments go to `rlhf run` (--only STAGES, --set STAGE.KEY=VALUE, --output_dir DIR). Running it again
# skips the stages that completed with the same config and resumes an interrupted one.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
PIPELINE=configs/quickstart.yaml
if [ "${1:-}" = "--tiny" ]; then
  PIPELINE=configs/tiny/quickstart.yaml
  shift
fi
exec "$PY" -m rlhf.cli run "$PIPELINE" "$@"
