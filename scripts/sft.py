"""Stage 1, supervised fine-tuning: a thin entry point for one process or `accelerate launch`.

    python scripts/sft.py --config configs/tiny/sft.yaml
    accelerate launch --multi_gpu --num_processes 2 scripts/sft.py --config configs/tiny/sft.yaml
"""

import sys

from rlhf.cli import entry

if __name__ == "__main__":
    sys.exit(entry(["sft", *sys.argv[1:]]))
