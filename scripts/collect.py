"""Stage 2, collect: a thin entry point for one process or `accelerate launch`.

    python scripts/collect.py --config configs/tiny/collect.yaml
    accelerate launch --multi_gpu --num_processes 2 scripts/collect.py --config configs/tiny/collect.yaml
"""

import sys

from rlhf.cli import entry

if __name__ == "__main__":
    sys.exit(entry(["collect", *sys.argv[1:]]))
