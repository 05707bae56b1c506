"""`rlhf dt`: Decision Transformer subcommands.

    rlhf dt data     --config configs/dt/data_cartpole.yaml     # offline data set of mixed quality
    rlhf dt train    --config configs/dt/train_cartpole.yaml    # DT, or --method bc / filtered_bc
    rlhf dt evaluate --config configs/dt/eval_cartpole.yaml     # achieved return per target return
    rlhf dt <command> --help                                    # every field with its help text
"""

from __future__ import annotations

import importlib

COMMANDS = {
    "data": ("rlhf.dt.data", "Generate an offline data set of mixed quality (dataset.npz)."),
    "train": ("rlhf.dt.train", "Train a Decision Transformer, or BC / filtered BC in the same network."),
    "evaluate": ("rlhf.dt.evaluate", "Roll out a trained policy at several target returns (eval.json)."),
}


def usage() -> str:
    lines = ["usage: rlhf dt <command> [--config FILE.yaml] [--<field> VALUE ...]", "", "commands:"]
    lines += [f"  {name:<9} {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None):
    from rlhf.config import ConfigError

    argv = list(argv or [])
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return None
    if argv[0] not in COMMANDS:
        raise ConfigError(f"unknown dt command '{argv[0]}'; one of: {', '.join(COMMANDS)}")
    return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])
