"""Policy settings against the quickstart's own SFT and reward models: how far each moves the gold judge.

    python benchmarks/quickstart_sweep.py --base runs/quickstart                 # after `rlhf run configs/quickstart.yaml`
    python benchmarks/quickstart_sweep.py --run_base                             # the quickstart first, then the sweep
    python benchmarks/quickstart_sweep.py --base runs/tiny/quickstart --pipeline configs/tiny/quickstart.yaml

Each variant copies the finished pipeline directory `--base` (SFT, collection, labels, reward model), then
reruns only the stages it changes with `rlhf run <pipeline> --only ... --set ...` — exactly the commands a user
would type — and evaluates on `--eval_prompts` held-out prompts x `--eval_samples` samples. Prints, per variant,
the reward-model score, the gold-judge score (sampled and greedy, 95% bootstrap intervals over prompts), the
gold win rate against the SFT policy and the KL it cost. The over-optimisation table of benchmarks/notes.md
came from these variants on one GPU (`benchmarks/results/quickstart_gpu_sweep.json`; about 6 minutes there, hours
on 2 CPU cores). `--run_base` first runs the pipeline into `--base` (`rlhf run <pipeline> --output_dir <base>`;
stages already done there are skipped), so one command makes the whole results file.
The last line is one JSON object, also written to benchmarks/results/quickstart_sweep.json (or `--out`).

Seeds (benchmarks/README.md, "Protocol"): a sweep is a selection study, run on the pipeline's own seed (the
configs' seed 0, a selection seed); what it finds is reported by other scripts on report seeds
(benchmarks/overoptimisation.py). The JSON records the split (`seeds`: selection [0], no report seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import finish, seed_record  # noqa: E402

# name -> (stages to rerun, --set overrides)
VARIANTS = {
    "quickstart": ("evaluate", []),
    "u30_lr3e-4": ("policy,evaluate", ["policy.num_updates=30", "policy.learning_rate=3e-4"]),
    "u30_lr3e-4_p16_e2": ("policy,evaluate", ["policy.num_updates=30", "policy.learning_rate=3e-4",
                                               "policy.prompts_per_update=16", "policy.ppo_epochs=2"]),
    "gold_reward_u30_lr3e-4": ("policy,evaluate", ["policy.num_updates=30", "policy.learning_rate=3e-4",
                                                    "policy.reward_fn=rlhf.tasks.rewards:gold_judge"]),
}


def ci(m: dict) -> list[float]:
    return [round(m[k], 3) for k in ("mean", "ci_low", "ci_high")]


def summarise(name: str, report: dict, seconds: float) -> dict:
    ck = report["checkpoints"]
    row = {"variant": name, "seconds": round(seconds, 1)}
    for mode in ("sampled", "greedy"):
        for who in ("sft", "policy"):
            row[f"{mode}_{who}_gold"] = ci(ck[who][mode]["gold"])
            row[f"{mode}_{who}_reward"] = round(ck[who][mode]["reward"]["mean"], 3)
        for key in ("win_rate_gold", "win_rate_reward", "kl_k1"):
            if key in ck["policy"][mode]:
                row[f"{mode}_{key}"] = ci(ck["policy"][mode][key])
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="runs/quickstart", help="A finished `rlhf run` output directory.")
    parser.add_argument("--pipeline", default="configs/quickstart.yaml", help="The pipeline that made --base.")
    parser.add_argument("--run_base", action="store_true", help="First run the pipeline into --base (stages "
                        "already done there are skipped).")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--eval_prompts", type=int, default=123, help="Held-out prompts (123: all of the task's).")
    parser.add_argument("--eval_samples", type=int, default=4, help="Sampled completions per prompt.")
    parser.add_argument("--eval_max_new_tokens", type=int, default=32)
    parser.add_argument("--work_dir", default=str(ROOT / "runs/quickstart_sweep"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/quickstart_sweep.json"))
    return parser.parse_args(argv)


def seed_split(args: argparse.Namespace) -> dict:
    """The seed split (benchmarks/README.md, "Protocol"): a selection study on the configs' seed 0."""
    return seed_record([], selection=[0], note="A selection study on the configs' seed 0: nothing here is a report "
                       "figure.")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    base = Path(args.base).resolve()  # the commands below run from the repository root
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if args.run_base:
        cmd = [sys.executable, "-m", "rlhf.cli", "run", args.pipeline, "--output_dir", str(base)]
        print("$ " + " ".join(cmd), flush=True)
        if subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0:
            raise SystemExit(f"rlhf run {args.pipeline} failed")
    if not (base / "reward" / "DONE.json").is_file() or not (base / "sft" / "DONE.json").is_file():
        raise SystemExit(f"{base}: not a finished pipeline run (no sft/ and reward/ DONE.json); run "
                         f"`rlhf run {args.pipeline}` first")
    evaluation = [f"evaluate.max_prompts={args.eval_prompts}", f"evaluate.num_samples={args.eval_samples}",
                  f"evaluate.max_new_tokens={args.eval_max_new_tokens}"]
    rows = []
    for name in args.variants:
        only, sets = VARIANTS[name]
        out = Path(args.work_dir) / name
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(base, out)
        cmd = [sys.executable, "-m", "rlhf.cli", "run", args.pipeline, "--output_dir", str(out), "--only", only]
        for s in evaluation + sets:
            cmd += ["--set", s]
        print("$ " + " ".join(cmd), flush=True)
        started = time.time()
        if subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0:
            raise SystemExit(f"variant {name} failed")
        report = json.loads((out / "evaluate" / "report.json").read_text())
        rows.append(summarise(name, report, time.time() - started))

    print(f"\n{args.eval_prompts} held-out prompts x {args.eval_samples} samples; 95% bootstrap intervals over prompts")
    print(f"{'variant':<24} {'reward':>7} {'gold sampled':>22} {'gold greedy':>22} {'win rate (gold)':>22} {'KL k1':>7}")
    first = rows[0]
    print(f"{'SFT policy':<24} {first['sampled_sft_reward']:>7.3f} {str(first['sampled_sft_gold']):>22} "
          f"{str(first['greedy_sft_gold']):>22} {'-':>22} {'-':>7}")
    for r in rows:
        print(f"{r['variant']:<24} {r['sampled_policy_reward']:>7.3f} {str(r['sampled_policy_gold']):>22} "
              f"{str(r['greedy_policy_gold']):>22} {str(r['sampled_win_rate_gold']):>22} "
              f"{r['sampled_kl_k1'][0]:>7.2f}")
    result = {"benchmark": "quickstart_sweep", "seeds": seed_split(args), "base": str(base), "pipeline": args.pipeline,
              "eval_prompts": args.eval_prompts, "eval_samples": args.eval_samples, "variants": rows}
    return finish(result, args.out, argv)


if __name__ == "__main__":
    main()
