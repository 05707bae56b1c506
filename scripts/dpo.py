"""DPO on preference pairs: a thin entry point for one process or `accelerate launch`.

    python scripts/dpo.py --config configs/tiny/dpo.yaml
    accelerate launch --multi_gpu --num_processes 2 scripts/dpo.py --config configs/dpo.yaml
"""

import sys

from rlhf.cli import entry

if __name__ == "__main__":
    sys.exit(entry(["dpo", *sys.argv[1:]]))
