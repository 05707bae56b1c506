"""Stage 5, evaluation of checkpoints side by side: a thin entry point for one process or `accelerate launch`.

    python scripts/evaluate.py --config configs/tiny/evaluate.yaml
    accelerate launch --multi_gpu --num_processes 2 scripts/evaluate.py --config configs/tiny/evaluate.yaml
"""

import sys

from rlhf.cli import entry

if __name__ == "__main__":
    sys.exit(entry(["evaluate", *sys.argv[1:]]))
