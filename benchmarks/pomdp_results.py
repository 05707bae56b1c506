"""POMDP baselines over several seeds: every table of its results, remade by one command.

    python benchmarks/pomdp_results.py                  # every row on report seeds 100-102 (hours: background)
    python benchmarks/pomdp_results.py --keep_runs      # the same, spread over sessions (finished runs kept)
    python benchmarks/pomdp_results.py --reuse          # reuse finished runs under --runs_dir, train the rest
    python benchmarks/pomdp_results.py --skip_missing   # tabulate the finished runs only (no training)
    python benchmarks/pomdp_results.py --groups tmaze,corridor,doors --seeds 103,104   # a subset, other seeds

Every row is one config on the report seeds (100, 101, 102; `--seeds` overrides them); each run is `rlhf pomdp train
--config configs/pomdp/train_<config>.yaml --seed S --output_dir <runs_dir>/<config>-seed<S>`, so the YAMLs hold every
hyperparameter. Groups:
- masked_cartpole, flicker_cartpole: CartPole without velocities, and CartPole whose observation is blanked
  with probability 0.5. Training stops at the first periodic evaluation (20 episodes) whose mean return reaches
  the config's `stop_at_return` or when its step budget runs out. The network of the best periodic evaluation
  is then re-measured here on 100 fresh episodes with the policy as it acts (greedy Q; policy-gradient agents
  sampling their actions) -- "fresh >= 475" counts the seeds whose fresh mean is >= 475 -- and, for the
  policy-gradient agents, again taking their most likely action.
- tmaze: T-maze with a corridor of 5. Success rate of the final network on 200 fresh episodes, re-measured here.
- corridor: the aliased corridor. Mean return of the final network on 1000 fresh episodes, re-measured here,
  and, for the memoryless agents, the
  probability of moving right at the (aliased) ends and the exact value of the learned memoryless policy
  next to the exact best memoryless value (`AliasedCorridor.memoryless_value`).
- doors: the two-door model comparison (`rlhf.pomdp.models.two_door_comparison`), P(opened) after a failed
  try, one-step (o, a) -> o' model against the history model.

Every figure of the tables is measured by this script's evaluation (fresh episodes, the current evaluator),
so runs trained at different times (`--reuse`) are measured alike; each row's JSON lists when each of its runs
finished training (`trained_utc`). Training runs can be spread over processes while working (e.g. two
`--reuse --only <configs>` invocations side by side, then one `--skip_missing` invocation that measures and
tabulates them all); the file in benchmarks/results/ comes from one plain invocation, which trains every row.

Seeds (benchmarks/README.md, "Protocol"): the configs were chosen on seeds 0-5 (DRQN's on all six, the recurrent
policy gradient's configs and flags on 0-2), which are selection seeds; the default seeds 100-102 were never
used for a choice, and the JSON records the split (`seeds`). Intervals are 95% t intervals over seeds.

Prints one table per group, then as the last line of stdout one JSON object with every figure (per seed); the
JSON also goes to benchmarks/results/pomdp_results.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import REPORT_SEEDS, finish, kept_unit, seed_record, t_interval  # noqa: E402
from rlhf.config import load_config  # noqa: E402
from rlhf.pomdp.envs import AliasedCorridor  # noqa: E402
from rlhf.pomdp.train import PomdpConfig, evaluate_agent, load_agent, train  # noqa: E402

SEEDS = REPORT_SEEDS
# group -> rows of (config name, seeds, note); a config may appear twice on disjoint seeds
ROWS = {
    "masked_cartpole": [
        ("masked_cartpole_drqn", SEEDS, "stops at 500"),
        ("masked_cartpole_rpg_gae_boot", SEEDS, "GAE(0.95), time limit bootstrapped, lr decay; stops at 500"),
        ("masked_cartpole_rpg_gae", SEEDS, "GAE(0.95), lr decay; stops at 500"),
        ("masked_cartpole_rpg_gae_lr1e3", SEEDS, "as rpg_gae, lr 1e-3 -> 1e-4; stops at 500"),
        ("masked_cartpole_rpg_long", SEEDS, "reward-to-go; stops at 490"),
        # train_masked_cartpole_rpg.yaml (stop at 475) is the same run as rpg_long up to its first evaluation >= 475,
        # which the table's "20-ep eval >= 475" columns report; train_masked_cartpole_drqn_every8.yaml (1 update per 8
        # steps, the earlier stop-at-475 rule) is left out for compute
        ("masked_cartpole_dqn_window", SEEDS, ""),
        ("masked_cartpole_dqn", SEEDS, ""),
        # train_masked_cartpole_vae.yaml exists but is left out for compute (about 3x a DRQN update)
    ],
    "flicker_cartpole": [(f"flicker_cartpole_{a}", SEEDS, "") for a in ("drqn", "rpg", "dqn_window", "dqn")],
    "tmaze": [(f"tmaze_{a}", SEEDS, "") for a in ("drqn", "rpg", "vae_qgrad", "vae", "dqn", "dqn_window", "pg")],
    "corridor": [(f"corridor_{a}", SEEDS, "") for a in ("pg", "dqn", "rpg")],
}
CARTPOLE_TITLES = {
    "masked_cartpole": "CartPole without velocities",
    "flicker_cartpole": "Flickering CartPole (observation blanked with probability 0.5)",
}


def run_one(name: str, seed: int, runs_dir: Path, reuse: bool, skip_missing: bool = False,
            keep: bool = False) -> dict | None:
    """A run's metrics: trained now, or reused (`reuse`: any finished run there; `keep`: only one this script
    trained with the same config, seed and sources, whose metrics.json is still the one it wrote)."""
    out = runs_dir / f"{name}-seed{seed}"
    if (reuse or skip_missing) and (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    if skip_missing:
        return None
    yaml = ROOT / "configs" / "pomdp" / f"train_{name}.yaml"

    def run() -> dict:
        cfg = load_config(PomdpConfig, yaml, {"seed": str(seed), "output_dir": str(out), "overwrite": "true"})
        print(f"[pomdp_results] {name} seed {seed}", file=sys.stderr, flush=True)
        train(cfg)
        return json.loads((out / "metrics.json").read_text())  # what --reuse reads back

    if not keep:
        return run()

    def on_disk(kept: dict) -> bool:
        return (out / "metrics.json").is_file() and json.loads((out / "metrics.json").read_text()) == kept

    parts = {"script": "pomdp_results", "config": name, "yaml": yaml.read_text(), "seed": seed}
    return kept_unit(out / "kept", parts, run, f"{name} seed {seed}", outputs_match=on_disk)[0]


FRESH_EPISODES = 100


def fresh_eval(name: str, seed: int, runs_dir: Path, greedy_policy: bool = False, which: str = "best",
               episodes: int = FRESH_EPISODES) -> dict:
    """A run's best (best.pt) or final (agent.pt) network on `episodes` fresh episodes (seeds unused in training
    and in its periodic evaluations): the policy as it acts (greedy Q; policy agents sample), or with
    `greedy_policy` a policy agent's most likely action. Re-measured here so that every row uses the same
    evaluator and episode count, whenever its run was trained."""
    out = runs_dir / f"{name}-seed{seed}"
    cfg = load_config(PomdpConfig, out / "config.yaml")
    torch.manual_seed(seed)
    return evaluate_agent(load_agent(cfg, which), cfg, episodes, seed=77_777 + seed, greedy_policy=greedy_policy)


def trained_utc(name: str, seed: int, runs_dir: Path) -> str:
    """When the run finished training (its metrics.json was written)."""
    t = (runs_dir / f"{name}-seed{seed}" / "metrics.json").stat().st_mtime
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def corridor_policy(name: str, seed: int, runs_dir: Path) -> dict:
    """P(right) per observation of a memoryless agent's final network, and the exact value of that policy."""
    out = runs_dir / f"{name}-seed{seed}"
    cfg = load_config(PomdpConfig, out / "config.yaml")
    agent = load_agent(cfg)
    env = AliasedCorridor(n_cells=cfg.n_cells)
    obs = torch.eye(env.n_obs)
    with torch.no_grad():
        if cfg.agent == "pg":
            p_right = torch.softmax(agent.net.pi(agent.net.obs_norm(obs)), -1)[:, 1]
        else:  # greedy Q
            p_right = agent.net(agent.net.obs_norm(obs)).argmax(-1).float()
    p = p_right.numpy().astype(float)
    return {"p_right_at_ends": float(p[0]), "exact_value": env.memoryless_value(p)}


def mean_ci(xs, fmt: str = ".3f") -> str:
    """'mean +- half-width' of the 95% t interval over seeds; one value as it is."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    t = t_interval(xs)
    return f"{t['mean']:{fmt}} +- {t['ci95']:{fmt}}" if len(xs) > 1 else f"{xs[0]:{fmt}}"


def table(headers: list[str], rows: list[list]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def trained_text(e: dict) -> str:
    """The span of times at which a row's runs finished training (UTC)."""
    times = sorted(e["trained_utc"])
    return times[0] if times[0] == times[-1] else f"{times[0]} .. {times[-1][-5:]}"


def seeds_text(seeds) -> str:
    return ",".join(str(s) for s in seeds)


def row_key(name: str, seeds, group_rows) -> str:
    """JSON key of a row: the config name, with its seeds when the config has more than one row."""
    twice = sum(n == name for n, _, _ in group_rows) > 1
    return f"{name}@seeds{seeds_text(seeds)}" if twice else name


def collect(group: str, name: str, seeds, runs_dir: Path, args) -> dict | None:
    """Train (or reuse) one config on its seeds and gather its per-seed figures."""
    found = [(s, run_one(name, s, runs_dir, args.reuse, args.skip_missing, args.keep_runs)) for s in seeds]
    done = [(s, r) for s, r in found if r is not None]
    if not done:
        return None
    runs = [r for _, r in done]
    target = load_config(PomdpConfig, runs_dir / f"{name}-seed{done[0][0]}" / "config.yaml").stop_at_return
    entry = {
        "agent": runs[0]["agent"],
        "seeds": [s for s, _ in done],
        "stop_at_return": target,
        "env_steps": [r["env_steps"] for r in runs],
        "train_seconds": [r["train_seconds"] for r in runs],
        "final_return": [r["final_eval"]["return_mean"] for r in runs],
        "best_return": [r["best_eval"]["return_mean"] for r in runs],
        "reached_stop_at_step": [(r["reached_stop_at"] or {}).get("step") for r in runs],
        "trained_utc": [trained_utc(name, s, runs_dir) for s, _ in done],
    }
    if group in ("tmaze", "corridor"):  # the final network, re-measured on fresh episodes
        episodes = load_config(PomdpConfig, runs_dir / f"{name}-seed{done[0][0]}" / "config.yaml").final_eval_episodes
        print(f"[pomdp_results] {name}: re-measuring seeds {seeds_text(entry['seeds'])}", file=sys.stderr, flush=True)
        fresh = [fresh_eval(name, s, runs_dir, which="final", episodes=episodes) for s, _ in done]
        entry["fresh_episodes"] = episodes
        entry["final_return"] = [f["return_mean"] for f in fresh]
        entry["final_success"] = [f["success_rate"] for f in fresh]
        entry["train_time_final_return"] = [r["final_eval"]["return_mean"] for r in runs]
    if group in CARTPOLE_TITLES:
        print(f"[pomdp_results] {name}: re-measuring seeds {seeds_text(entry['seeds'])}", file=sys.stderr, flush=True)
        # the first 20-episode evaluation >= 475, whatever the config's own stopping return
        entry["first_eval_475_at_step"] = [next((h["step"] for h in r["eval_history"] if h["return_mean"] >= 475),
                                                None) for r in runs]
        entry["fresh_episodes"] = FRESH_EPISODES
        entry["fresh_return"] = [fresh_eval(name, s, runs_dir)["return_mean"] for s, _ in done]
        entry["fresh_ge_475"] = [x >= 475 for x in entry["fresh_return"]]
        if runs[0]["agent"] in ("pg", "rpg"):
            entry["fresh_return_greedy"] = [fresh_eval(name, s, runs_dir, greedy_policy=True)["return_mean"]
                                            for s, _ in done]
    if group == "corridor" and runs[0]["agent"] in ("pg", "dqn"):
        pol = [corridor_policy(name, s, runs_dir) for s, _ in done]
        entry["p_right_at_ends"] = [p["p_right_at_ends"] for p in pol]
        entry["exact_value"] = [p["exact_value"] for p in pol]
    return entry


def cartpole_table(group: str, res: dict, notes: dict) -> str:
    rows = []
    for key, e in res.items():
        n = len(e["seeds"])
        rows.append([key.split("@")[0], e["agent"], seeds_text(e["seeds"]), notes[key],
                     f"{sum(e['fresh_ge_475'])}/{n}",
                     ", ".join(f"{x:.0f}" for x in e["fresh_return"]), mean_ci(e["fresh_return"], ".1f"),
                     mean_ci(e.get("fresh_return_greedy", []), ".1f"),
                     f"{sum(x is not None for x in e['first_eval_475_at_step'])}/{n}",
                     mean_ci([x for x in e["first_eval_475_at_step"] if x is not None], ".0f"),
                     mean_ci(e["env_steps"], ".0f"), mean_ci(e["train_seconds"], ".0f"), trained_text(e)])
    return (f"{CARTPOLE_TITLES[group]}: the network of the best periodic evaluation on {FRESH_EPISODES} fresh "
            "episodes, acting as in training (greedy Q; policy agents sample); mean +- 95% t over seeds\n" + table(
                ["config", "agent", "seeds", "note", "fresh >= 475", "fresh return per seed", "fresh return",
                 "same, most likely action", "20-ep eval >= 475", "env steps to it", "env steps run", "train s",
                 "trained (UTC)"],
                rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", default="masked_cartpole,flicker_cartpole,tmaze,corridor,doors")
    parser.add_argument("--seeds", default="", help="Comma-separated seeds for every row (default: each row's own "
                        "seeds, see ROWS: the report seeds 100,101,102; 0-5 are selection seeds).")
    parser.add_argument("--runs_dir", default="runs/pomdp_results")
    parser.add_argument("--reuse", action="store_true", help="Reuse runs whose metrics.json exists.")
    parser.add_argument("--keep_runs", action="store_true", help="Reuse a finished run only where this script "
                        "trained it with the same config, seed and sources (a run spread over sessions; unlike "
                        "--reuse, a results file may be made with it).")
    parser.add_argument("--skip_missing", action="store_true", help="Tabulate finished runs only (implies "
                        "--reuse); a row then covers the seeds that finished, and lists them.")
    parser.add_argument("--only", default="", help="Comma-separated config names to run (default: all of the "
                        "groups').")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pomdp_results.json"))
    return parser.parse_args(argv)


def seed_split(args: argparse.Namespace) -> dict:
    """Which seeds chose the configs and which this run reports on (benchmarks/README.md, "Protocol")."""
    override = [int(s) for s in args.seeds.split(",") if s]
    report = override or sorted({s for rows in ROWS.values() for _, seeds, _ in rows for s in seeds})
    return seed_record(report, note="Configs and flags chosen on seeds 0-5 (DRQN) and 0-2 (recurrent policy "
                       "gradient); DRQN's seeds 6-8 were reported before the protocol. Report seeds: 100 and up.")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    groups = [g for g in args.groups.split(",") if g]
    unknown = [g for g in groups if g not in ROWS and g != "doors"]
    if unknown:
        raise SystemExit(f"unknown group(s) {unknown}; choose from {list(ROWS) + ['doors']}")
    override = tuple(int(s) for s in args.seeds.split(",") if s) or None
    only = {n for n in args.only.split(",") if n}
    runs_dir = Path(args.runs_dir)
    results: dict = {"seeds": seed_split(args), "seeds_override": override, "groups": {}}
    tables = []
    start = time.time()

    for group in groups:
        if group == "doors":
            from rlhf.pomdp.models import two_door_comparison

            seeds = override or SEEDS
            per_seed = [two_door_comparison(seed=s) for s in seeds]
            res = {case: {k: [r[case][k] for r in per_seed] for k in ("actual", "one_step", "history")}
                   for case in ("retry", "switch", "first_try")}
            results["groups"]["doors"] = {"seeds": list(seeds), **res}
            rows = [[case, mean_ci(v["actual"]), mean_ci(v["one_step"]), mean_ci(v["history"])]
                    for case, v in res.items()]
            tables.append(f"Two doors: P(door opens) on held-out random-policy episodes (seeds {seeds_text(seeds)})"
                          "\n" + table(["step", "actual", "one-step (o,a)->o'", "history model"], rows))
            continue
        rows_def = [(n, override or s, note) for n, s, note in ROWS[group] if not only or n in only]
        if override:  # one row per config
            rows_def = list({n: (n, s, note) for n, s, note in rows_def}.values())
        res, notes = {}, {}
        for name, seeds, note in rows_def:
            entry = collect(group, name, seeds, runs_dir, args)
            if entry is not None:
                key = row_key(name, seeds, rows_def)
                res[key], notes[key] = entry, note
        results["groups"][group] = res
        if not res:
            continue
        if group in CARTPOLE_TITLES:
            tables.append(cartpole_table(group, res, notes))
        elif group == "tmaze":
            rows = [[n, e["agent"], seeds_text(e["seeds"]), mean_ci(e["final_success"]),
                     ", ".join(f"{x:.2f}" for x in e["final_success"]), mean_ci(e["final_return"]),
                     mean_ci(e["train_seconds"], ".0f"), trained_text(e)] for n, e in res.items()]
            tables.append("T-maze, corridor 5 (final network, 200 fresh episodes; mean +- 95% t over seeds)\n" + table(
                ["config", "agent", "seeds", "success rate", "per seed", "return", "train s", "trained (UTC)"],
                rows))
        elif group == "corridor":
            env = AliasedCorridor()
            best = max(env.memoryless_value(p) for p in np.linspace(0, 1, 1001))
            results["groups"]["corridor_reference"] = {
                "best_memoryless_value": best, "deterministic_memoryless_value": env.memoryless_value(1.0)}
            rows = [[n, e["agent"], seeds_text(e["seeds"]), mean_ci(e["final_return"]),
                     mean_ci(e.get("p_right_at_ends", [])), mean_ci(e.get("exact_value", [])),
                     mean_ci(e["final_success"]), trained_text(e)] for n, e in res.items()]
            rows.append(["(exact) best memoryless", "p = 0.5", "-", f"{best:.3f}", "0.500", f"{best:.3f}", "1.000",
                         "-"])
            rows.append(["(exact) deterministic", "p = 0 or 1", "-", f"{env.memoryless_value(1.0):.3f}", "0 or 1",
                         f"{env.memoryless_value(1.0):.3f}", "0.500", "-"])
            tables.append("Aliased corridor, 5 cells (final network, 1000 fresh episodes; mean +- 95% t over seeds)\n" +
                          table(["config", "agent", "seeds", "return", "P(right) at the ends",
                                 "exact value of policy", "success", "trained (UTC)"], rows))

    results["seconds"] = time.time() - start
    print("\n\n".join(tables))
    return finish(results, args.out, argv)


if __name__ == "__main__":
    main()
