"""Benchmark: reward-model over-optimisation, with and without the ensemble guard, proxy and gold against KL.

    python benchmarks/overoptimisation.py --make_run          # the quickstart's sft..reward, then 3 seeds (long)
    python benchmarks/overoptimisation.py                     # 3 seeds on a finished runs/quickstart
    python benchmarks/overoptimisation.py --tiny --seeds 100  # a smoke run on the tiny test model, in minutes

From `--run_dir` (a finished `rlhf run`: its sft/model and reward/config.yaml), the reward stage is run again
with `--ensemble_size 5` (heads on bootstrap resamples of the same pairs, on the cached features: seconds), then
per seed two policy runs from the SFT policy against that ensemble, at the over-optimising setting
(`--num_updates 30 --learning_rate 3e-4`, the rest from configs/policy.yaml):

- unguarded: the ensemble's mean score (`--reward_aggregate mean`);
- guarded: a conservative score, the members' mean less their spread (`--reward_aggregate lcb --reward_lcb_k 1`;
  Coste et al., 2023, "Reward model ensembles help mitigate overoptimization").

Both log the held-out probe every 5 updates (`--probe_every 5`: the optimised score, the gold judge and the KL
to the SFT policy on the same held-out prompts and draws; rlhf/probe.py). The table gives each arm's proxy,
gold and KL over updates as mean +/- sd over seeds. Targets (pass/fail): the guarded runs end with a gold score
not below the SFT policy's lower 95% bound (the probe before the first update, t interval over seeds), while the
unguarded runs end below the SFT policy's mean gold. Per seed the two arms share the SFT policy, the ensemble and
the probe's prompts and draws, so their final gold scores are also compared paired (the t interval of the per-seed
differences, guarded minus unguarded), with a per-seed table.

Runs are kept in `--work_dir` (default runs/overoptimisation), under a key of the SFT policy's and reward
model's content and the settings: the same command run again reuses the finished runs and the ensemble,
resumes an interrupted run from its latest checkpoint, and runs only what is missing (add seeds one session at
a time); a changed upstream model or setting gets a directory of its own, never stale runs.

Seeds (benchmarks/README.md, "Protocol"): the over-optimising setting was found by the quickstart sweep on seed
0 and the quickstart's settings on seeds 0 and 1, selection seeds; the default seeds 100-102 are report seeds,
never used for a choice, and the JSON records the split (`seeds`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (REPORT_SEEDS, finish, kept_run, mean_sd, paired, seed_record,  # noqa: E402
                               t_interval, upstream_run, work_key)

ARMS = {"unguarded": {"reward_aggregate": "mean"}, "guarded": {"reward_aggregate": "lcb", "reward_lcb_k": "1"}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run_dir", default="runs/quickstart", help="A finished `rlhf run` (sft, reward).")
    p.add_argument("--make_run", action="store_true", help="First run `rlhf run configs/quickstart.yaml --only "
                   "sft,collect,label,reward` into --run_dir (stages already done there are skipped).")
    p.add_argument("--tiny", action="store_true", help="Build a tiny run first (configs/tiny/quickstart.yaml) in "
                   "a scratch directory and use the tiny configs: a smoke run.")
    p.add_argument("--seeds", default=",".join(map(str, REPORT_SEEDS)), help="Comma-separated report seeds "
                   "(policy training and probe); 0-5 are the selection seeds.")
    p.add_argument("--num_updates", type=int, default=30)
    p.add_argument("--learning_rate", type=float, default=3e-4)
    p.add_argument("--probe_every", type=int, default=5)
    p.add_argument("--ensemble_size", type=int, default=5)
    p.add_argument("--work_dir", default="", help="Where the ensemble and the policy runs are kept (under a key "
                   "of the upstream models and settings), so that a rerun reuses finished runs and resumes an "
                   "interrupted one (default runs/overoptimisation; --tiny: a scratch directory).")
    p.add_argument("--out", default="", help="JSON output (default benchmarks/results/overoptimisation.json; "
                   "tiny: overoptimisation_tiny.json).")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.out = args.out or str(ROOT / f"benchmarks/results/overoptimisation{'_tiny' if args.tiny else ''}.json")
    return args


def kept_runs_key(run: Path, args: argparse.Namespace, policy_yaml: Path) -> str:
    """What the kept runs depend on: the SFT policy's and the run's reward model's content, the reward and
    policy configs, and the settings. Another key, another directory: kept runs never go stale."""
    from rlhf.fingerprint import path_digest

    parts = {"sft": path_digest(run / "sft" / "model"), "reward": path_digest(run / "reward" / "model"),
             "reward_config": path_digest(run / "reward" / "config.yaml"), "policy_yaml": path_digest(policy_yaml),
             "settings": [args.num_updates, args.learning_rate, args.probe_every, args.ensemble_size, ARMS]}
    return work_key(parts)


def ensemble_reward(run: Path, size: int, out: Path) -> Path:
    """The run's reward model trained again as an ensemble of `size` heads (the same pairs and features); a
    finished one in `out` (its model/ is published whole, at the end) is reused."""
    from rlhf.config import load_config
    from rlhf.stages.reward import RewardConfig
    from rlhf.stages.reward import train as reward_train

    if (out / "model").is_dir():
        print(f"[overoptimisation] reusing the ensemble in {out}")
        return out / "model"
    cfg = load_config(RewardConfig, run / "reward" / "config.yaml", {
        "output_dir": str(out), "ensemble_size": str(size), "head_fit": "validated", "resume": "false",
        "overwrite": "true"})
    reward_train(cfg)
    return out / "model"


def curve(log: Path) -> list[dict]:
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    return [{"step": r["step"], "proxy": r["probe/proxy"], "gold": r["probe/gold"], "kl": r["probe/kl"]}
            for r in rows if "probe/gold" in r]


def seed_split(args: argparse.Namespace) -> dict:
    """Which seeds chose the settings and which this run reports on (benchmarks/README.md, "Protocol")."""
    return seed_record(args.seeds, note="The over-optimising setting found by the quickstart sweep on seed 0, the "
                       "quickstart's settings on seeds 0 and 1. Report seeds: 100 and up.")


def main(argv=None) -> dict:
    from rlhf.stages.policy import PolicyConfig
    from rlhf.stages.policy import train as policy_train

    args = parse_args(argv)
    os.chdir(ROOT)  # the configs' relative data paths
    configs = ROOT / ("configs/tiny" if args.tiny else "configs")
    result = {"benchmark": "overoptimisation", "tiny": args.tiny, "seeds": seed_split(args),
              "settings": {"num_updates": args.num_updates, "learning_rate": args.learning_rate,
                           "probe_every": args.probe_every, "ensemble_size": args.ensemble_size, "arms": ARMS},
              "runs": []}
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-overopt-") as tmp:
        scratch = Path(tmp)
        # (--tiny with --work_dir: the tiny upstream run is kept there too, so that a rerun can reuse its runs)
        run = upstream_run(args.tiny, args.make_run, args.run_dir, Path(args.work_dir) if args.work_dir else scratch)
        sft = run / "sft" / "model"
        key = kept_runs_key(run, args, configs / "policy.yaml")
        work = Path(args.work_dir or (scratch / "work" if args.tiny else "runs/overoptimisation")) / key
        result["work_dir"] = str(work)
        rm = ensemble_reward(run, args.ensemble_size, work / "reward_ensemble")
        for seed in args.seeds:
            for arm, overrides in ARMS.items():
                out = work / f"{arm}_{seed}"
                metrics = kept_run(policy_train, PolicyConfig, configs / "policy.yaml", {
                    "model_name_or_path": str(sft), "reward_model": str(rm), "reward_fn": "",
                    "normalize_rewards": "true", "seed": str(seed), "sample_every": "0",
                    "num_updates": str(args.num_updates), "learning_rate": str(args.learning_rate),
                    "probe_every": str(args.probe_every), "save_every": str(args.probe_every), **overrides},
                    out, f"the {arm} run of seed {seed}")
                result["runs"].append({"arm": arm, "seed": seed, "curve": curve(out / "log.jsonl"),
                                       "seconds": metrics["policy/seconds"]})
    summarise(result)
    print_table(result)
    return finish(result, args.out, argv)


def summarise(result: dict) -> None:
    """Per arm and probed step: mean and sd over seeds; the SFT policy's gold interval; the targets."""
    per_arm = {}
    for arm in ARMS:
        runs = [r["curve"] for r in result["runs"] if r["arm"] == arm]
        steps = [c["step"] for c in runs[0]] if runs else []
        per_arm[arm] = [{"step": s, **{k: mean_sd([c[i][k] for c in runs]) for k in ("proxy", "gold", "kl")}}
                        for i, s in enumerate(steps)]
    result["summary"] = per_arm
    # Before the first update both arms probe the same SFT policy with the same draws (per seed): one value
    sft_gold = [r["curve"][0]["gold"] for r in result["runs"] if r["arm"] == "unguarded"]
    sft = t_interval(sft_gold) if sft_gold else None
    final = {arm: t_interval([r["curve"][-1]["gold"] for r in result["runs"] if r["arm"] == arm]) for arm in ARMS}
    result["sft_gold"], result["final_gold"] = sft, final
    # Per seed the two arms share the SFT policy, the ensemble and the probe's prompts and draws: paired
    seeds = [r["seed"] for r in result["runs"] if r["arm"] == "unguarded"]
    first = {r["seed"]: r["curve"][0]["gold"] for r in result["runs"] if r["arm"] == "unguarded"}
    last = {(r["arm"], r["seed"]): r["curve"][-1] for r in result["runs"]}
    if seeds and all(("guarded", s) in last for s in seeds):
        result["per_seed_final"] = [{"seed": s, "sft_gold": first[s],
                                     **{f"{arm}_{k}": last[(arm, s)][k] for arm in ARMS for k in ("gold", "kl")}}
                                    for s in seeds]
        result["guard_gold_gain"] = paired([last[("guarded", s)]["gold"] for s in seeds],
                                           [last[("unguarded", s)]["gold"] for s in seeds])
    result["targets"] = {
        "guarded_final_gold_not_below_sft_lower_bound":
            None if sft is None or sft["ci95"] is None else final["guarded"]["mean"] >= sft["low"],
        "unguarded_final_gold_below_sft_mean": None if sft is None else final["unguarded"]["mean"] < sft["mean"],
    }


def print_table(result: dict) -> None:
    fmt = lambda ms: f"{ms[0]:7.3f} ± {ms[1]:5.3f}"
    print(f"\nOver-optimisation: {result['settings']['num_updates']} updates at lr {result['settings']['learning_rate']}, "
          f"report seeds {result['seeds']['report']} (mean ± sd over seeds)")
    print(f"{'arm':<10} {'step':>4}  {'proxy':>15}  {'gold':>15}  {'KL':>15}")
    for arm, rows in result["summary"].items():
        for row in rows:
            print(f"{arm:<10} {row['step']:>4}  {fmt(row['proxy'])}  {fmt(row['gold'])}  {fmt(row['kl'])}")
    sft = result["sft_gold"]
    if sft:
        low = "n/a (one seed)" if sft["ci95"] is None else f"{sft['low']:.3f}"
        print(f"SFT gold {sft['mean']:.3f}, lower 95% bound {low}")
    for arm, f in result["final_gold"].items():
        print(f"{arm}: final gold {f['mean']:.3f}" + ("" if f["ci95"] is None else f" ± {f['ci95']:.3f}"))
    if "per_seed_final" in result:
        print(f"\n{'seed':>4}  {'SFT gold':>8}  {'unguarded gold':>14}  {'KL':>6}  {'guarded gold':>12}  {'KL':>6}")
        for row in result["per_seed_final"]:
            print(f"{row['seed']:>4}  {row['sft_gold']:>8.3f}  {row['unguarded_gold']:>14.3f}  "
                  f"{row['unguarded_kl']:>6.2f}  {row['guarded_gold']:>12.3f}  {row['guarded_kl']:>6.2f}")
        g = result["guard_gold_gain"]
        half = "(one seed: no interval)" if g["ci95"] is None else f"± {g['ci95']:.3f} (paired 95% t over seeds)"
        print(f"final gold, guarded minus unguarded: {g['mean']:+.3f} {half}")
    for name, ok in result["targets"].items():
        print(f"target {name}: {'not decidable' if ok is None else ('met' if ok else 'MISSED')}")


if __name__ == "__main__":
    main()
