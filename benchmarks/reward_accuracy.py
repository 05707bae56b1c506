"""Held-out accuracy of the reward model on the built-in task's test pairs, over several seeds.

    python benchmarks/reward_accuracy.py                        # embedded SmolLM2-135M backbone, seeds 0 1 2
    python benchmarks/reward_accuracy.py --model tiny-llama     # the tiny test backbone, for comparison

Trains the reward stage (frozen backbone, cached features, linear head; configs/reward.yaml) once per seed
(the seed sets the head's initialisation and the data order), scores reward_data/pairs_test.jsonl (prompts
disjoint from the training pairs), and prints the accuracy overall and by kind of pair, as mean and standard
deviation over seeds. Features are extracted on the first seed and read from the cache afterwards. The last
line of output is one JSON object with every figure, also written to benchmarks/results/reward_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pair_kind(row: dict) -> str:
    """Which quality difference a test pair tests, from the styles make_data.py records."""
    wrong = {"wrong", "hedging", "evasive"}
    c, r = row.get("chosen_style", ""), row.get("rejected_style", "")
    if r in wrong and c not in wrong:
        return "correct vs wrong"
    if c not in wrong and r not in wrong:
        return "concise vs verbose"
    return "between wrong answers"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Backbone (alias, local dir or hub id).")
    parser.add_argument("--config", default=str(ROOT / "configs/reward.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/reward_accuracy.json"))
    args = parser.parse_args(argv)

    import torch
    import transformers

    from rlhf.config import load_config
    from rlhf.reward import RewardModel
    from rlhf.stages.reward import RewardConfig, train

    test_rows = [json.loads(x) for x in (ROOT / "reward_data/pairs_test.jsonl").read_text().splitlines() if x]
    kinds = sorted({pair_kind(r) for r in test_rows})
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            cfg = load_config(RewardConfig, args.config, {
                "model_name_or_path": args.model, "seed": str(seed), "output_dir": f"{tmp}/seed{seed}",
                "train_pairs": str(ROOT / "reward_data/pairs_train.jsonl"),
                "eval_pairs": str(ROOT / "reward_data/pairs_test.jsonl")})
            started = time.time()
            metrics = train(cfg)
            rm = RewardModel.load(Path(cfg.output_dir) / "model")
            prompts = [r["prompt"] for r in test_rows]
            rc = rm.score(prompts, [r["chosen"] for r in test_rows], batch_size=32)
            rr = rm.score(prompts, [r["rejected"] for r in test_rows], batch_size=32)
            by_kind = {}
            for kind in kinds:
                sel = [i for i, r in enumerate(test_rows) if pair_kind(r) == kind]
                by_kind[kind] = sum(rc[i] > rr[i] for i in sel) / len(sel)
            runs.append({"seed": seed, "eval_accuracy": metrics["eval/accuracy"],
                         "train_accuracy": metrics["train/accuracy"], "eval_ece": metrics["eval/ece"],
                         "by_kind": by_kind, "seconds": time.time() - started,
                         "features_computed": metrics["reward/features_computed"]})

    def spread(values: list[float]) -> tuple[float, float]:
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    counts = {k: sum(pair_kind(r) == k for r in test_rows) for k in kinds}
    rows = [("held-out accuracy (all)", spread([r["eval_accuracy"] for r in runs]), len(test_rows)),
            ("train accuracy", spread([r["train_accuracy"] for r in runs]), None),
            ("held-out ECE", spread([r["eval_ece"] for r in runs]), None)]
    rows += [(f"held-out: {k}", spread([r["by_kind"][k] for r in runs]), counts[k]) for k in kinds]
    print(f"\nReward model on the built-in task, backbone {args.model}, seeds {args.seeds}")
    print(f"{'metric':<36} {'mean':>8} {'std':>8} {'pairs':>6}")
    for name, (mean, std), n in rows:
        print(f"{name:<36} {mean:>8.3f} {std:>8.3f} {n if n is not None else '':>6}")
    per_seed = ", ".join(f"{r['seconds']:.0f}" for r in runs)
    print(f"wall time per seed (s): {per_seed} (the first includes feature extraction)")
    result = {"benchmark": "reward_accuracy", "backbone": args.model, "config": args.config, "seeds": args.seeds,
              "test_pairs": len(test_rows), "pairs_by_kind": counts,
              "eval_accuracy_mean": rows[0][1][0], "eval_accuracy_std": rows[0][1][1],
              "runs": runs, "machine": {"platform": platform.platform(), "python": platform.python_version(),
                                        "torch": torch.__version__, "transformers": transformers.__version__,
                                        "threads": torch.get_num_threads()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
