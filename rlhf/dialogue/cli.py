"""`rlhf dialogue`: multi-step offline RL on text games (rlhf.subcommands; the commands are in stage.py).

    rlhf dialogue data     --config configs/dialogue/data.yaml       # scripted trajectories (jsonl)
    rlhf dialogue train    --config configs/dialogue/train.yaml --algorithm bc --output_dir runs/dialogue/guess/bc
    rlhf dialogue evaluate --config configs/dialogue/evaluate.yaml --run runs/dialogue/guess/bc
    rlhf dialogue train --help                                       # every field with its help text
"""

from __future__ import annotations

from rlhf.subcommands import Command, dispatch

COMMANDS = {
    "data": Command("rlhf.dialogue.stage:DialogueDataConfig", "rlhf.dialogue.stage:make_data",
                    "Episodes of scripted behaviour policies (trajectories.jsonl, summary.json)."),
    "train": Command("rlhf.dialogue.stage:DialogueTrainConfig", "rlhf.dialogue.stage:train",
                     "Train bc, filtered_bc, mc, ilql, mc_iql or chai offline on the trajectories (lm/, heads/)."),
    "evaluate": Command("rlhf.dialogue.stage:DialogueEvalConfig", "rlhf.dialogue.stage:evaluate_run",
                        "Play fresh episodes with a trained agent (eval.json)."),
}


def main(argv: list[str] | None = None):
    return dispatch("dialogue", COMMANDS, argv)
