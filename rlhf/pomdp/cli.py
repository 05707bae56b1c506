"""`rlhf pomdp`: POMDP baselines (rlhf.subcommands).

    rlhf pomdp train --config configs/pomdp/train_tiny.yaml --output_dir runs/try/pomdp   # seconds
    rlhf pomdp evaluate --output_dir runs/try/pomdp --final_eval_episodes 100
    rlhf pomdp train --help                                    # every field with its help text

`train` writes the output contract of `rlhf.runs`; `evaluate` reads a run and writes eval.json into it. Runs keep
no checkpoint, so `--resume true` is refused; `--report_to` sends the run's config, logs and evaluation to the
trackers (rlhf/pomdp/train.py).
"""

from __future__ import annotations

from rlhf.subcommands import Command, dispatch

COMMANDS = {
    "train": Command("rlhf.pomdp.train:PomdpConfig", "rlhf.pomdp.train:train_command",
                     "Train any agent on any environment (agent.pt, best.pt, metrics.json)."),
    "evaluate": Command("rlhf.pomdp.train:PomdpConfig", "rlhf.pomdp.train:evaluate_command",
                        "Evaluate a run on fresh episodes (eval.json in the run); its config.yaml is the base.",
                        base="rlhf.pomdp.train:run_config_first"),
}


def main(argv: list[str] | None = None):
    return dispatch("pomdp", COMMANDS, argv)
