"""Held-out accuracy of the reward stage, its defaults against the earlier configuration, over several seeds.

    python benchmarks/reward_accuracy.py                  # built-in task, SmolLM2-135M backbone, seeds 100-102
    python benchmarks/reward_accuracy.py --task hh        # real HH-RLHF pairs: first 1400 train, last 400 held out
    python benchmarks/reward_accuracy.py --model tiny-llama --seeds 100   # a smoke run

Variants, trained one after the other in the same run on the same pairs:

- **default**: the reward stage as a user gets it now (`head_fit: validated`: every third layer's last-token and
  response-mean states and the response's log-prob statistics, extracted once; feature set and L2 strength chosen
  on a validation part of the training pairs, then refitted on all of them);
- **current**: the earlier configuration (`head_fit: sgd`, final layer, last token, no log-probs: a linear head
  trained by AdamW for `num_epochs`).

Built-in task: `configs/reward.yaml` (max_length 256, lr 3e-3, 10 epochs for the SGD head) with
reward_data/pairs_train.jsonl, held out reward_data/pairs_test.jsonl (prompts disjoint). `--task hh`: the
dataclass defaults (as `rlhf reward` without a config: lr 1e-3, 3 epochs for the SGD head), max_length 192,
`benchmarks/data/hh_harmless_dev.jsonl` (first 1400 pairs train, last 400 held out, invalid pairs skipped). The
held-out pairs are only scored, never used for a choice. The seed sets the validation split (default) or the
head's initialisation and data order (current). Features are extracted once (the default variant's superset);
the current variant's features are a subset, read from that cache. The last line of output is one JSON object
with every figure and the command, also written to benchmarks/results/reward_accuracy[_hh].json. The two
variants share each seed's split and pairs: their difference is a paired 95% t interval over seeds.

Seeds (benchmarks/README.md, "Protocol"): the default variant's features and regularisation grid were chosen
while looking at seeds 0-2, selection seeds; the default seeds 100-102 are report seeds, never used for a
choice, and the JSON records the split (`seeds`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import REPORT_SEEDS, finish, mean_sd, paired, seed_record  # noqa: E402

CURRENT = {"head_fit": "sgd", "layers": "final", "pooling": "last", "logprob_features": "false"}


def pair_kind(row: dict) -> str:
    """Which quality difference a test pair tests, from the styles make_data.py records."""
    wrong = {"wrong", "hedging", "evasive"}
    c, r = row.get("chosen_style", ""), row.get("rejected_style", "")
    if r in wrong and c not in wrong:
        return "correct vs wrong"
    if c not in wrong and r not in wrong:
        return "concise vs verbose"
    return "between wrong answers"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="builtin", choices=("builtin", "hh"))
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Backbone (alias, local dir or hub id).")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(REPORT_SEEDS),
                        help="Report seeds; 0-5 are the selection seeds.")
    parser.add_argument("--variants", nargs="+", default=["default", "current"], choices=("default", "current"))
    parser.add_argument("--hh_data", default=str(ROOT / "benchmarks/data/hh_harmless_dev.jsonl"))
    parser.add_argument("--out", default="", help="Results JSON (default benchmarks/results/reward_accuracy.json; "
                        "reward_accuracy_hh.json with --task hh).")
    args = parser.parse_args(argv)
    args.out = args.out or str(ROOT / "benchmarks/results" / ("reward_accuracy.json" if args.task == "builtin"
                                                              else "reward_accuracy_hh.json"))
    return args


def seed_split(args: argparse.Namespace) -> dict:
    """Which seeds chose the settings and which this run reports on (benchmarks/README.md, "Protocol")."""
    return seed_record(args.seeds, note="The default variant's feature sets and L2 grid chosen while looking at "
                       "seeds 0-2. Report seeds: 100 and up.")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)

    from rlhf.config import load_config
    from rlhf.stages.reward import RewardConfig, train

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.task == "builtin":
            config, train_file = str(ROOT / "configs/reward.yaml"), str(ROOT / "reward_data/pairs_train.jsonl")
            eval_file = str(ROOT / "reward_data/pairs_test.jsonl")
            base = {}
            test_rows = [json.loads(x) for x in Path(eval_file).read_text().splitlines() if x]
            kinds = sorted({pair_kind(r) for r in test_rows})
        else:
            lines = [x for x in Path(args.hh_data).read_text().splitlines() if x.strip()]
            train_file, eval_file = f"{tmp}/hh_train.jsonl", f"{tmp}/hh_eval.jsonl"
            Path(train_file).write_text("\n".join(lines[:1400]) + "\n")
            Path(eval_file).write_text("\n".join(lines[-400:]) + "\n")
            config, base, test_rows, kinds = None, {"max_length": "192", "skip_invalid": "true"}, None, []
        for variant in args.variants:
            for seed in args.seeds:
                values = {**base, "model_name_or_path": args.model, "seed": str(seed),
                          "output_dir": f"{tmp}/{variant}-seed{seed}", "train_pairs": train_file,
                          "eval_pairs": eval_file, **(CURRENT if variant == "current" else {})}
                cfg = load_config(RewardConfig, config, values)
                started = time.time()
                metrics = train(cfg)
                run = {"variant": variant, "seed": seed, "eval_accuracy": metrics["eval/accuracy"],
                       "train_accuracy": metrics["train/accuracy"], "eval_ece": metrics["eval/ece"],
                       "eval_pairs": metrics["eval/pairs"], "seconds": time.time() - started,
                       "features_computed": metrics["reward/features_computed"],
                       "extract_seconds": metrics["reward/extract_seconds"]}
                if variant == "default":
                    run.update(chosen_features=metrics["reward/head_features"], chosen_l2=metrics["reward/head_l2"],
                               val_accuracy=metrics["reward/val_accuracy"])
                if test_rows is not None:
                    margins = json.loads((Path(cfg.output_dir) / "eval_margins.json").read_text())
                    run["by_kind"] = {k: statistics.mean(m > 0 for m, r in zip(margins, test_rows, strict=True)
                                                         if pair_kind(r) == k) for k in kinds}
                runs.append(run)

    summary = {}
    for variant in args.variants:
        mine = [r for r in runs if r["variant"] == variant]
        summary[variant] = {"eval_accuracy": mean_sd([r["eval_accuracy"] for r in mine]),
                            "train_accuracy": mean_sd([r["train_accuracy"] for r in mine]),
                            "eval_ece": mean_sd([r["eval_ece"] for r in mine])}
        if variant == "default":
            summary[variant]["val_accuracy"] = mean_sd([r["val_accuracy"] for r in mine])
        for k in kinds:
            summary[variant][f"held-out: {k}"] = mean_sd([r["by_kind"][k] for r in mine])
    if {"default", "current"} <= set(args.variants):  # the same seeds, splits and pairs: paired over seeds
        acc = {v: {r["seed"]: r["eval_accuracy"] for r in runs if r["variant"] == v} for v in ("default", "current")}
        summary["default_minus_current"] = paired([acc["default"][s] for s in args.seeds],
                                                  [acc["current"][s] for s in args.seeds])
    name = "built-in task" if args.task == "builtin" else "HH-RLHF harmless (first 1400 train, last 400 held out)"
    print(f"\nReward model on the {name}, backbone {args.model}, seeds {args.seeds}")
    print(f"{'metric':<36}" + "".join(f" {v + ' mean':>14} {'std':>6}" for v in args.variants))
    if "default_minus_current" in summary:
        d = summary["default_minus_current"]
        half = "(one seed)" if d["ci95"] is None else f"± {d['ci95']:.3f}"
        print(f"held-out accuracy, default - current: {d['mean']:+.3f} {half} (paired 95% t over seeds)")
    for metric in summary[args.variants[0]]:
        cells = "".join(f" {summary[v][metric][0]:>14.3f} {summary[v][metric][1]:>6.3f}" if metric in summary[v]
                        else f" {'':>14} {'':>6}" for v in args.variants)
        print(f"{metric:<36}{cells}")
    for r in runs:
        if r["variant"] == "default":
            print(f"seed {r['seed']}: chose {r['chosen_features']} at l2 {r['chosen_l2']:g} "
                  f"(validation {r['val_accuracy']:.3f}) -> held-out {r['eval_accuracy']:.3f}")
    print("wall time per run (s): " + ", ".join(f"{r['variant']}/{r['seed']} {r['seconds']:.0f}" for r in runs))
    result = {"benchmark": "reward_accuracy", "task": args.task, "backbone": args.model, "seeds": seed_split(args),
              "config": config, "held_out_pairs": runs[0]["eval_pairs"],
              **{f"{v}_eval_accuracy_mean": summary[v]["eval_accuracy"][0] for v in args.variants},
              **{f"{v}_eval_accuracy_std": summary[v]["eval_accuracy"][1] for v in args.variants},
              "summary": summary, "runs": runs}
    return finish(result, args.out, argv)


if __name__ == "__main__":
    main()
