"""Stage 2, label: a thin entry point for one process or `accelerate launch`.

    python scripts/label.py --config configs/tiny/label.yaml
    accelerate launch --multi_gpu --num_processes 2 scripts/label.py --config configs/tiny/label.yaml
"""

import sys

from rlhf.cli import entry

if __name__ == "__main__":
    sys.exit(entry(["label", *sys.argv[1:]]))
