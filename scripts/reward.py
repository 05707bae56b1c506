"""Stage 3, reward model: a thin entry point for one process or `accelerate launch`.

    python scripts/reward.py --config configs/tiny/reward.yaml
    accelerate launch --multi_gpu --num_processes 2 scripts/reward.py --config configs/tiny/reward.yaml
"""

import sys

from rlhf.cli import entry

if __name__ == "__main__":
    sys.exit(entry(["reward", *sys.argv[1:]]))
