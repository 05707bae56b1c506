"""Stage 4, policy optimisation: a thin entry point for one process or `accelerate launch`.

    python scripts/policy.py --config configs/tiny/policy.yaml
    accelerate launch --multi_gpu --num_processes 2 scripts/policy.py --config configs/tiny/policy.yaml
"""

import sys

from rlhf.cli import entry

if __name__ == "__main__":
    sys.exit(entry(["policy", *sys.argv[1:]]))
