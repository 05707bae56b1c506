"""`rlhf dt`: Decision Transformer commands (rlhf.subcommands).

    rlhf dt data     --config configs/dt/data_cartpole.yaml       # offline data set of mixed quality
    rlhf dt train    --config configs/dt/train_cartpole.yaml      # DT, or --method bc / filtered_bc
    rlhf dt evaluate --config configs/dt/evaluate_cartpole.yaml   # achieved return per target return
    rlhf dt train --help                                          # every field with its help text

Each command writes the output contract of `rlhf.runs` (config.yaml, log.jsonl, metrics.json) to its output_dir;
`--resume true` continues `train` from its latest checkpoint (`--save_every`) and redoes `data` and `evaluate`
(both are deterministic in their config); `--report_to` sends each run's config and logs to the trackers.
"""

from __future__ import annotations

from rlhf.subcommands import Command, dispatch

COMMANDS = {
    "data": Command("rlhf.dt.data:DTDataConfig", "rlhf.dt.data:make_data",
                    "Generate an offline data set of mixed quality (dataset.npz)."),
    "train": Command("rlhf.dt.train:DTTrainConfig", "rlhf.dt.train:train",
                     "Train a Decision Transformer, or BC / filtered BC in the same network."),
    "evaluate": Command("rlhf.dt.evaluate:DTEvalConfig", "rlhf.dt.evaluate:evaluate",
                        "Roll out a trained policy at several target returns (eval.json)."),
}


def main(argv: list[str] | None = None):
    return dispatch("dt", COMMANDS, argv)
