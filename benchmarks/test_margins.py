"""How much room the learning-curve tests leave: the tiny policy runs of tests/test_policy.py over many seeds.

    python benchmarks/test_margins.py                 # sampling seeds 0-9, the installed package versions
    python benchmarks/test_margins.py --seeds 0 1 2

tests/test_policy.py checks that the toy reward (frequency of "e") rises and the KL to the reference stays
bounded after 30 updates of the tiny model, for the leave-one-out baseline and for the value-head/GAE baseline.
Those bounds must hold on every seed and on every tested release of torch/transformers/accelerate, not only on
the one they were written on. This script runs both configurations on each seed (the stage's `seed`: sampling
and data order; the tiny model's weights are fixed) and prints, per seed, the first and last score, their ratio
and the last KL, then the minimum ratio and the maximum KL over seeds, which the test's bounds must clear. The
last line is one JSON object, also written to benchmarks/results/test_margins.json (with the versions and the
command), so a run on another release can be compared.

Seeds (benchmarks/README.md, "Protocol"): no setting is chosen here; the seeds are those the tests may run, and
the tests' bounds are read off these figures, so the default seeds 0-9 stay; the JSON records the split
(`seeds`, no selection seeds).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import finish, seed_record  # noqa: E402

CASES = {
    "loo": {},
    "gae": {"baseline": "gae", "lam": "1.0"},
    "grpo": {"baseline": "group", "scale_rewards": "group", "whiten_advantages": "false"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, as pytest runs)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/test_margins.json"))
    return parser.parse_args(argv)


def seed_split(args: argparse.Namespace) -> dict:
    """The seed split (benchmarks/README.md, "Protocol"): no selection seeds, every seed measured reported."""
    return seed_record(args.seeds, selection=[], note="No setting chosen on any seed: the tests' bounds are read "
                       "off these seeds' figures.")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from rlhf.config import load_config
    from rlhf.stages.policy import PolicyConfig, train

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            overrides = CASES[case]
            for seed in args.seeds:
                values = {"output_dir": f"{tmp}/{case}{seed}", "prompts": str(ROOT / "reward_data/prompts_train.jsonl"),
                          "seed": str(seed), **overrides}
                m = train(load_config(PolicyConfig, ROOT / "configs/tiny/policy.yaml", values))
                first, last = m["objective/scores_first"], m["objective/scores_last"]
                rows.append({"case": case, "seed": seed, "first": first, "last": last,
                             "ratio": last / max(first, 1e-9), "kl_last": m["objective/kl_last"]})
                print(f"{case:4s} seed {seed:2d}  first {first:.4f}  last {last:.4f}  "
                      f"ratio {rows[-1]['ratio']:6.2f}  kl_last {rows[-1]['kl_last']:.2f}", flush=True)
    summary = {}
    print("\n| case | seeds | max first | min last | min ratio | max kl_last |\n|---|---|---|---|---|---|")
    for case in args.cases:
        rs = [r for r in rows if r["case"] == case]
        s = {"max_first": max(r["first"] for r in rs), "min_last": min(r["last"] for r in rs),
             "min_ratio": min(r["ratio"] for r in rs), "max_kl_last": max(r["kl_last"] for r in rs)}
        summary[case] = s
        print(f"| {case} | {len(rs)} | {s['max_first']:.4f} | {s['min_last']:.4f} | {s['min_ratio']:.2f} | "
              f"{s['max_kl_last']:.2f} |")
    return finish({"seeds": seed_split(args), "threads": torch.get_num_threads(), "rows": rows, "summary": summary},
                  args.out, argv)


if __name__ == "__main__":
    main()
