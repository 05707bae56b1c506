"""Decision Transformer results: achieved vs target return, against BC and filtered BC, over several seeds.

    python benchmarks/dt_results.py                       # CartPole-v1, Pendulum-v1, pomdp/tmaze; seeds 100-102
    python benchmarks/dt_results.py --keep_runs           # the same, spread over sessions (finished units kept)
    python benchmarks/dt_results.py --envs pomdp/tmaze --seeds 100 --steps_scale 0.2   # a smoke run

For every task and seed: 1. generate the mixed-quality data set with that seed (`rlhf.dt.data.generate`),
2. train three policies with the same network, context, optimiser and number of steps (`rlhf.dt.train.train`):
the return-conditioned DT, BC on all episodes and filtered BC on the top 10% of episodes by return, 3. roll
out the DT at each target return of a fixed list spanning the data set's range and the two BC policies, all from
the same evaluation seeds (`rlhf.dt.evaluate.rollout`; discrete actions sampled from the predicted
distribution for all three methods, continuous actions the predicted mean).

Reported per task (means over seeds of each seed's mean over episodes, ± the standard deviation over seeds;
the comparisons with BC also as paired 95% t intervals of the per-seed differences): achieved return per
target; the Spearman rank correlation of achieved with target return (per seed, then averaged); the DT at the
highest target (fixed in advance: the top of the data set's range, no selection on results) and at its best
target, chosen on validation episodes (the target with the highest mean over seeds on `--val_episodes` episodes
of their own seeds, disjoint from the reported ones) against BC and filtered BC; "matches BC" allows 2% of the
data set's return range, "close to filtered BC" means a gap of at most 10% of that range. The plot goes to
benchmarks/results/dt_results.png, the JSON (last line of stdout) to benchmarks/results/dt_results.json.

Seeds (benchmarks/README.md, "Protocol"): the task settings were chosen on seeds 0-2, selection seeds; the
default seeds 100-102 are report seeds, never used for a choice, and the JSON records the split (`seeds`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import REPORT_SEEDS, finish, kept_unit, mean_sd, paired, seed_record, spearman  # noqa: E402
from rlhf.dt.data import generate  # noqa: E402
from rlhf.dt.evaluate import rollout  # noqa: E402
from rlhf.dt.model import DecisionTransformer  # noqa: E402
from rlhf.dt.train import DTTrainConfig, train  # noqa: E402

# Per task: data (levels, episodes per level), model context, training steps, targets, evaluation episodes.
SETTINGS = {
    "CartPole-v1": dict(levels=[1.0, 0.6, 0.4, 0.2], episodes_per_level=50, context_len=10, batch_size=32,
                        max_steps=1500, targets=[20.0, 100.0, 250.0, 400.0, 500.0], episodes=10),
    "Pendulum-v1": dict(levels=[1.0, 0.5, 0.25, 0.0], episodes_per_level=40, context_len=10, batch_size=32,
                        max_steps=1500, targets=[-1200.0, -900.0, -600.0, -400.0, -250.0, -150.0], episodes=10),
    # T-maze returns: ~0.94 right arm, ~-0.06 wrong arm, -0.14 time-out (a 0.01 step cost)
    "pomdp/tmaze": dict(levels=[1.0, 0.5, 0.0], episodes_per_level=100, context_len=10, batch_size=32,
                        max_steps=2000, targets=[-0.14, -0.06, 0.45, 0.94], episodes=30),
}
METHODS = ("dt", "bc", "filtered_bc")
# validation episodes (the choice of the DT's best target) are rolled out from rollout seed VALIDATION + seed:
# reset seeds disjoint from the reported episodes of every seed below VALIDATION
VALIDATION = 5000


def run_seed(env: str, seed: int, s: dict, args, workdir: Path) -> dict:
    data = generate(env, s["levels"], s["episodes_per_level"], seed, progress=False)
    data_dir = data.save(workdir / f"{env.replace('/', '_')}-s{seed}" / "data")
    out = {"data": {"return_min": float(data.returns.min()), "return_max": float(data.returns.max()),
                    "return_mean": float(data.returns.mean()), "by_level": data.meta["returns"],
                    "top10_mean": float(data.top_fraction(args.top_fraction).returns.mean())}}
    for method in METHODS:
        run_dir = data_dir.parent / method
        cfg = DTTrainConfig(output_dir=str(run_dir), dataset=str(data_dir), method=method,
                            top_fraction=args.top_fraction, context_len=s["context_len"], batch_size=s["batch_size"],
                            max_steps=max(10, int(s["max_steps"] * args.steps_scale)), seed=seed, overwrite=True,
                            log_every=50, num_threads=args.threads)
        t0 = time.time()
        with contextlib.redirect_stdout(sys.stderr):  # stdout keeps only the table and the JSON
            metrics = train(cfg)
        model = DecisionTransformer.load(run_dir / "model")
        targets = s["targets"] if method == "dt" else [0.0]
        returns = rollout(model, targets, s["episodes"], seed, sample_actions=True, progress=False)
        if method == "dt":
            val = rollout(model, targets, args.val_episodes or s["episodes"], VALIDATION + seed, sample_actions=True,
                          progress=False)
            out["dt_validation"] = [float(np.mean(r)) for r in val]
        out[method] = {"targets": targets if method == "dt" else None,
                       "achieved": [float(np.mean(r)) for r in returns],
                       "episode_std": [float(np.std(r)) for r in returns],
                       "final_loss": metrics["train/final_loss"], "seconds": time.time() - t0}
        print(f"  {env} seed {seed} {method}: achieved {np.round(out[method]['achieved'], 1).tolist()} "
              f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    return out


def summarise(env: str, s: dict, runs: list[dict]) -> dict:
    targets = s["targets"]
    dt = np.array([r["dt"]["achieved"] for r in runs])  # [seeds, targets]
    bc = np.array([r["bc"]["achieved"][0] for r in runs])  # [seeds]
    fbc = np.array([r["filtered_bc"]["achieved"][0] for r in runs])
    lo = float(np.mean([r["data"]["return_min"] for r in runs]))
    hi = float(np.mean([r["data"]["return_max"] for r in runs]))
    rho = [spearman(targets, row) for row in dt]
    # over seeds: mean and standard deviation (the population's, ddof 0)
    dt_cols = [mean_sd(dt[:, i], ddof=0) for i in range(dt.shape[1])]
    (bc_mean, bc_std), (fbc_mean, fbc_std) = mean_sd(bc, ddof=0), mean_sd(fbc, ddof=0)
    top = dt[:, -1]  # the highest target, fixed in advance
    best_i = int(np.argmax(np.mean([r["dt_validation"] for r in runs], axis=0)))  # chosen on validation episodes
    best = dt[:, best_i]
    return {
        "targets": targets,
        "dt_mean": [m for m, _ in dt_cols], "dt_std": [sd for _, sd in dt_cols],
        "bc_mean": bc_mean, "bc_std": bc_std,
        "filtered_bc_mean": fbc_mean, "filtered_bc_std": fbc_std,
        "data_return_min": lo, "data_return_max": hi,
        "data_return_mean": float(np.mean([r["data"]["return_mean"] for r in runs])),
        "data_top10_mean": float(np.mean([r["data"]["top10_mean"] for r in runs])),
        "spearman_per_seed": rho, "spearman_mean": float(np.mean(rho)),
        "rises": bool(np.mean(rho) > 0.5 and dt.mean(0)[-1] > dt.mean(0)[0]),
        "dt_best_minus_bc": float(best.mean() - bc.mean()),
        "dt_best_minus_bc_paired": paired(best, bc), "dt_top_minus_bc_paired": paired(top, bc),
        "dt_best_minus_filtered_bc_paired": paired(best, fbc),
        "dt_best_matches_bc": bool(best.mean() >= bc.mean() - 0.02 * (hi - lo)),
        "best_gap_to_filtered_bc_frac": float((fbc.mean() - best.mean()) / (hi - lo)),
        "best_close_to_filtered_bc": bool((fbc.mean() - best.mean()) <= 0.1 * (hi - lo)),
        "dt_top_target_mean": float(top.mean()), "dt_top_target_std": mean_sd(top, ddof=0)[1],
        "dt_best_target": targets[best_i], "dt_best_target_mean": float(best.mean()),
        "dt_top_minus_bc": float(top.mean() - bc.mean()),
        "dt_top_matches_bc": bool(top.mean() >= bc.mean() - 0.02 * (hi - lo)),
        "gap_to_filtered_bc_frac": float((fbc.mean() - top.mean()) / (hi - lo)),
        "close_to_filtered_bc": bool((fbc.mean() - top.mean()) <= 0.1 * (hi - lo)),
    }


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(4.2 * len(summary), 3.6), squeeze=False)
    for ax, (env, s) in zip(axes[0], summary.items()):
        t = np.array(s["targets"])
        ax.axvspan(s["data_return_min"], s["data_return_max"], color="0.92", label="data return range")
        ax.plot(t, t, ":", color="0.5", label="achieved = target")
        ax.errorbar(t, s["dt_mean"], yerr=s["dt_std"], marker="o", capsize=3, label="DT")
        for key, style, name in (("bc", "--", "BC"), ("filtered_bc", "-.", "filtered BC (top 10%)")):
            ax.axhline(s[f"{key}_mean"], linestyle=style, color="C1" if key == "bc" else "C2", label=name)
        ax.set_title(env)
        ax.set_xlabel("target return")
        ax.set_ylabel("achieved return")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def print_table(summary: dict, seeds: list[int], top_fraction: float) -> None:
    """The readable table: per task, DT achieved return per target, BC, filtered BC and the checks."""
    print(f"Decision Transformer vs BC / filtered BC (top {top_fraction:.0%}), seeds {seeds}: "
          "mean ± std over seeds of the mean return over evaluation episodes")
    for env, s in summary.items():
        d = 2 if s["data_return_max"] - s["data_return_min"] < 10 else 1  # decimals
        print(f"\n{env}: data returns {s['data_return_min']:.{d}f} .. {s['data_return_max']:.{d}f} "
              f"(mean {s['data_return_mean']:.{d}f}, top 10% mean {s['data_top10_mean']:.{d}f})")
        print(f"  {'target':>10} | {'DT achieved':>18}")
        for t, m, sd in zip(s["targets"], s["dt_mean"], s["dt_std"]):
            print(f"  {t:>10.{d}f} | {m:>10.{d}f} ± {sd:<6.{d}f}")
        print(f"  {'BC':>10} | {s['bc_mean']:>10.{d}f} ± {s['bc_std']:<6.{d}f}")
        print(f"  {'filt. BC':>10} | {s['filtered_bc_mean']:>10.{d}f} ± {s['filtered_bc_std']:<6.{d}f}")
        print(f"  Spearman(target, achieved) {s['spearman_mean']:.2f} (per seed "
              f"{', '.join(f'{r:.2f}' for r in s['spearman_per_seed'])}) -> rises: {s['rises']}")
        print(f"  DT at best target ({s['dt_best_target']:g}) {s['dt_best_target_mean']:.{d}f} vs BC "
              f"{s['bc_mean']:.{d}f} -> matches BC: {s['dt_best_matches_bc']}; gap to filtered BC "
              f"{s['best_gap_to_filtered_bc_frac']:+.1%} of the data range -> close (<= 10%): "
              f"{s['best_close_to_filtered_bc']}")
        for key, name in (("dt_best_minus_bc_paired", "DT best - BC"), ("dt_top_minus_bc_paired", "DT top - BC"),
                          ("dt_best_minus_filtered_bc_paired", "DT best - filtered BC")):
            if key in s:  # paired over seeds (results made before the protocol lack them)
                half = "(one seed)" if s[key]["ci95"] is None else f"± {s[key]['ci95']:.{d}f}"
                print(f"  {name}: {s[key]['mean']:+.{d}f} {half} (paired 95% t over seeds)")
        print(f"  DT at the highest target ({s['targets'][-1]:g}, fixed in advance) "
              f"{s['dt_top_target_mean']:.{d}f}: matches BC: {s['dt_top_matches_bc']}; gap to filtered BC "
              f"{s['gap_to_filtered_bc_frac']:+.1%} -> close: {s['close_to_filtered_bc']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(REPORT_SEEDS),
                   help="Report seeds (data, training, episodes); 0-5 are the selection seeds.")
    p.add_argument("--val_episodes", type=int, default=0, help="Validation episodes per target that choose the "
                   "DT's best target (0: as many as the task's evaluation episodes).")
    p.add_argument("--top_fraction", type=float, default=0.1)
    p.add_argument("--steps_scale", type=float, default=1.0, help="Multiply every task's training steps.")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="runs/dt_results")
    p.add_argument("--keep_runs", action="store_true", help="Keep each finished task and seed under --workdir/units "
                   "and reuse it when the same command runs again with the same settings and sources (a run spread "
                   "over sessions); the JSON lists each unit's provenance.")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dt_results.json"))
    p.add_argument("--plot", default=str(ROOT / "benchmarks" / "results" / "dt_results.png"))
    p.add_argument("--from_json", default="", help="Print the table of an earlier run's JSON (no training).")
    return p.parse_args(argv)


def seed_split(args: argparse.Namespace) -> dict:
    """Which seeds chose the settings and which this run reports on (benchmarks/README.md, "Protocol")."""
    return seed_record(args.seeds, note="Task settings chosen on seeds 0-2; the DT's best target on validation "
                       "episodes of the report seeds. Report seeds: 100 and up.")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        seeds = result["seeds"]["report"] if isinstance(result["seeds"], dict) else result["seeds"]
        print_table(result["summary"], seeds, result["top_fraction"])
        print(json.dumps(result))
        return result
    torch.set_num_threads(args.threads)
    t0 = time.time()
    raw, summary, units = {}, {}, {}
    work = Path(args.workdir)
    for env in args.envs:
        s = SETTINGS[env]
        raw[env] = []
        for seed in args.seeds:
            parts = {"script": "dt_results", "env": env, "seed": seed, "settings": s, "threads": args.threads,
                     **{k: getattr(args, k) for k in ("val_episodes", "top_fraction", "steps_scale")}}
            result, units[f"{env} seed {seed}"] = kept_unit(work / "units" if args.keep_runs else None, parts,
                                                            lambda: run_seed(env, seed, s, args, work),
                                                            f"{env} seed {seed}")
            raw[env].append(result)
        summary[env] = summarise(env, s, raw[env])
    plot(summary, Path(args.plot))

    print_table(summary, args.seeds, args.top_fraction)
    result = {"name": "dt_results", "seeds": seed_split(args), "top_fraction": args.top_fraction,
              "steps_scale": args.steps_scale, "settings": {e: SETTINGS[e] for e in args.envs},
              "summary": summary, "per_seed": raw, "units": units, "seconds": time.time() - t0}
    return finish(result, args.out, argv)


if __name__ == "__main__":
    main()
