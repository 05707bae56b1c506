"""CartPole without velocities: the toolkit's recurrent agents against sb3-contrib's RecurrentPPO, in environment
steps and wall time to a mean return of 475.

    pip install -e .[bench]                 # sb3-contrib (RecurrentPPO)
    python benchmarks/pomdp.py              # rpg, drqn and RecurrentPPO, report seeds 100-102, one run at a time
    python benchmarks/pomdp.py --agents rpg,sb3 --seeds 1 --first_seed 100 --max_steps 100000

What runs, on the same environment (`rlhf.pomdp.envs.make_env("masked-cartpole")`: CartPole-v1 observing
(x, theta) only):
- **rpg**, **drqn**: `rlhf pomdp train` with configs/pomdp/train_masked_cartpole_{rpg_gae,drqn}.yaml (CONFIGS below;
  8 environments, observation normalisation), evaluated every `--eval_every` steps;
- **sb3**: `sb3_contrib.RecurrentPPO` with the RL Zoo's settings for CartPoleNoVel-v1 (as published with its
  model, which reaches 500 within 100k steps): MlpLstmPolicy, 8 environments, n_steps 32, batch 256, 20 epochs,
  gamma 0.98, GAE lambda 0.8, learning rate and clip range linear from 1e-3 and 0.2, no entropy bonus, LSTM of
  64 with a separate critic LSTM, pi/vf heads of [64], ReLU, no orthogonal init, VecNormalize of observations
  and rewards.

The same stopping rule for all: every `--eval_every` environment steps, 20 evaluation episodes with the
policy's own sampling (sb3: deterministic=False; its observations normalised by the training statistics);
training stops at the first evaluation whose mean return is >= 475. The toolkit's runs use their YAML as it is
(total_steps, learning-rate schedule) with only `stop_at_return` set to 475, so each is the run that
benchmarks/pomdp_results.py makes with that config and seed, up to its first evaluation >= 475; `--max_steps`
bounds RecurrentPPO. Reported per seed: the environment steps at that evaluation (or "not reached"), the wall
time and the process CPU time of the whole training call, evaluations included, and the 1-minute load average
just before and after it (`--from_results`: the toolkit's wall time at its first evaluation >= 475, from the
run's metrics, no CPU time). Every side uses one torch thread. Wall times depend on the machine's load: run it
on a quiet machine, one run at a time, with CPU priority (e.g. `echo -10 > /proc/<pid>/autogroup`; the JSON
records the autogroup's nice value), and compare the sides from the same run only.

Seeds (benchmarks/README.md, "Protocol"): the toolkit's configs were chosen on seeds 0-5, selection seeds; the
default seeds 100-102 are report seeds, never used for a choice, and the JSON records the split (`seeds`).
Every side's count of seeds that reached 475 is given with its means; the means of steps and times cover only
the seeds that reached it, with a 95% t interval over them.

Prints a table and, as the last line, one JSON object; the JSON also goes to benchmarks/results/pomdp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import REPORT_SEEDS, finish, kept_unit, seed_record, t_interval  # noqa: E402
from rlhf.config import load_config  # noqa: E402
from rlhf.pomdp.envs import make_env  # noqa: E402
from rlhf.pomdp.train import PomdpConfig, train  # noqa: E402

TARGET = 475.0
# the toolkit's configs, as in benchmarks/pomdp_results.py (each run there up to its first evaluation >= 475 is
# the run made here)
CONFIGS = {"rpg": "masked_cartpole_rpg_gae", "drqn": "masked_cartpole_drqn"}


def config_path(agent: str) -> Path:
    return ROOT / "configs" / "pomdp" / f"train_{CONFIGS[agent]}.yaml"


def from_results(agent: str, seed: int, args) -> dict:
    """A toolkit run that benchmarks/pomdp_results.py already made with the same config and evaluation schedule.
    Its first 20-episode evaluation >= 475 is where a run stopping at 475 would have stopped (the run up to that
    evaluation does not depend on the stopping return), so a config that trains on past 475 (DRQN stops at a
    perfect evaluation) gives the same steps and time as stopping there."""
    run = Path(args.from_results) / f"{CONFIGS[agent]}-seed{seed}"
    if not (run / "metrics.json").is_file():
        print(f"[pomdp bench] {run}: no metrics.json (unfinished), left out", file=sys.stderr)
        return None
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    stop = cfg["stop_at_return"]
    if cfg["eval_every"] != args.eval_every or cfg["eval_episodes"] != 20 or (stop is not None and stop < TARGET):
        raise SystemExit(f"{run}: not run with eval_every {args.eval_every}, 20 episodes, stopping at >= {TARGET}")
    m = json.loads((run / "metrics.json").read_text())
    reached = next((h for h in m["eval_history"] if h["return_mean"] >= TARGET), None)
    return {"side": agent, "seed": seed, "reached": reached is not None,
            "env_steps": reached["step"] if reached else None,
            "wall_seconds": reached["seconds"] if reached else m["train_seconds"],
            "steps_run": reached["step"] if reached else m["env_steps"],
            "best_eval_return": max(h["return_mean"] for h in m["eval_history"]
                                    if reached is None or h["step"] <= reached["step"]),
            "from": str(run)}


def toolkit_config(agent: str, seed: int, args) -> PomdpConfig:
    """The agent's YAML as it is, stopping at the target and with no final evaluation (not part of the race)."""
    cfg = load_config(PomdpConfig, config_path(agent), {
        "seed": str(seed), "output_dir": f"{args.runs_dir}/{agent}-seed{seed}", "overwrite": "true",
        "stop_at_return": str(TARGET), "final_eval_episodes": "0"})
    if cfg.eval_every != args.eval_every or cfg.eval_episodes != 20:
        raise SystemExit(f"train_{CONFIGS[agent]}.yaml: evaluates every {cfg.eval_every} steps on {cfg.eval_episodes} "
                         f"episodes, not every {args.eval_every} on 20")
    return cfg


def run_toolkit(agent: str, seed: int, args) -> dict:
    cfg = toolkit_config(agent, seed, args)
    m = timed(lambda: train(cfg))
    reached = m["reached_stop_at"]
    return {"side": agent, "seed": seed, "reached": reached is not None,
            "env_steps": reached["step"] if reached else None, "steps_run": m["env_steps"],
            "best_eval_return": m["best_periodic"]["return_mean"], **m["timing"]}


def timed(fn):
    """fn()'s result (a dict) with a "timing" entry: wall and process CPU seconds of the call, and the 1-minute
    load average just before and after it."""
    load_before, wall, cpu = os.getloadavg()[0], time.time(), time.process_time()
    result = fn()
    timing = {"wall_seconds": time.time() - wall, "cpu_seconds": time.process_time() - cpu,
              "load_before": load_before, "load_after": os.getloadavg()[0]}
    print(f"[pomdp bench] {timing}", file=sys.stderr, flush=True)
    return {**result, "timing": timing}


def autogroup_nice() -> int | None:
    """The nice value of this process's autogroup (Linux; None elsewhere)."""
    try:
        return int(Path("/proc/self/autogroup").read_text().split("nice")[1])
    except (OSError, IndexError, ValueError):
        return None


def run_sb3(seed: int, args) -> dict:
    import torch.nn as nn
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.utils import get_linear_fn
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    train_env = VecNormalize(make_vec_env(lambda: make_env("masked-cartpole"), n_envs=8, seed=seed))
    eval_env = VecNormalize(DummyVecEnv([lambda: Monitor(make_env("masked-cartpole"))]), training=False,
                            norm_reward=False)
    eval_env.seed(10_000 + seed)
    history = []

    class StopAtTarget(BaseCallback):
        def __init__(self):
            super().__init__()
            self.next_eval, self.reached = args.eval_every, None

        def _on_step(self) -> bool:
            if self.num_timesteps < self.next_eval:
                return True
            self.next_eval += args.eval_every
            eval_env.obs_rms = train_env.obs_rms  # evaluate with the training statistics
            mean, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=20, deterministic=False)
            history.append({"step": self.num_timesteps, "return_mean": float(mean)})
            print(f"[pomdp bench] sb3 seed {seed}: {self.num_timesteps} steps, eval return {mean:.1f}",
                  file=sys.stderr, flush=True)
            if mean >= TARGET:
                self.reached = self.num_timesteps
                return False
            return True

    model = RecurrentPPO(
        "MlpLstmPolicy", train_env, n_steps=32, batch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8,
        learning_rate=get_linear_fn(1e-3, 0.0, 1.0), clip_range=get_linear_fn(0.2, 0.0, 1.0), ent_coef=0.0,
        policy_kwargs=dict(ortho_init=False, activation_fn=nn.ReLU, lstm_hidden_size=64, enable_critic_lstm=True,
                           net_arch=dict(pi=[64], vf=[64])),
        seed=seed, device="cpu", verbose=0)
    callback = StopAtTarget()
    timing = timed(lambda: {"model": model.learn(total_timesteps=args.max_steps, callback=callback)})["timing"]
    return {"side": "sb3", "seed": seed, "reached": callback.reached is not None, "env_steps": callback.reached,
            "steps_run": int(model.num_timesteps),
            "best_eval_return": max((h["return_mean"] for h in history), default=float("nan")), **timing}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", default="rpg,drqn,sb3", help="Comma-separated: rpg, drqn, sb3.")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first_seed", type=int, default=REPORT_SEEDS[0],
                        help="Seeds are first_seed .. first_seed + seeds - 1 (report seeds from 100; 0-5 are selection "
                        "seeds).")
    parser.add_argument("--max_steps", type=int, default=200_000, help="RecurrentPPO's step budget (the toolkit's "
                        "runs take theirs from their YAML).")
    parser.add_argument("--eval_every", type=int, default=5000)
    parser.add_argument("--runs_dir", default="runs/pomdp_bench")
    parser.add_argument("--keep_runs", action="store_true", help="Keep each finished agent and seed under "
                        "--runs_dir/units and reuse it when the same command runs again with the same settings and "
                        "sources (a run spread over sessions; each row records when it ran, `computed_utc`).")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pomdp.json"))
    parser.add_argument("--from_results", default=None, help="Take the toolkit's runs from this runs_dir of "
                        "benchmarks/pomdp_results.py (same configs and stopping rule) instead of training again.")
    return parser.parse_args(argv)


def seed_split(args: argparse.Namespace) -> dict:
    """Which seeds chose the configs and which this run reports on (benchmarks/README.md, "Protocol")."""
    return seed_record(range(args.first_seed, args.first_seed + args.seeds),
                       note="The toolkit's configs chosen on seeds 0-5; RecurrentPPO's settings are the RL Zoo's. "
                       "Report seeds: 100 and up.")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)

    rows = []
    for agent in [a for a in args.agents.split(",") if a]:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            print(f"[pomdp bench] {agent} seed {seed}", file=sys.stderr, flush=True)
            if agent == "sb3":
                run = lambda: run_sb3(seed, args)  # noqa: E731
            elif args.from_results:
                row = from_results(agent, seed, args)
                rows += [row] if row else []
                continue
            else:
                run = lambda: run_toolkit(agent, seed, args)  # noqa: E731
            parts = {"script": "pomdp", "agent": agent, "seed": seed, "max_steps": args.max_steps,
                     "eval_every": args.eval_every,
                     "config": config_path(agent).read_text() if agent in CONFIGS else None}
            row, unit = kept_unit(Path(args.runs_dir) / "units" if args.keep_runs else None, parts, run,
                                  f"{agent} seed {seed}")
            rows.append({**row, "computed_utc": unit["computed_utc"], "reused": unit["reused"]})

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    summary = {}
    lines = [f"{'side':<6} {'seed':>4} {'reached 475':>11} {'env steps':>10} {'wall s':>8} {'cpu s':>8} "
             f"{'load before/after':>17} {'best eval':>9}"]
    for r in rows:
        load = f"{fmt(r.get('load_before'), '.2f')} / {fmt(r.get('load_after'), '.2f')}"
        lines.append(f"{r['side']:<6} {r['seed']:>4} {str(r['reached']):>11} {str(r['env_steps'] or '-'):>10} "
                     f"{r['wall_seconds']:>8.1f} {fmt(r.get('cpu_seconds'), '8.1f'):>8} {load:>17} "
                     f"{r['best_eval_return']:>9.1f}")
    for side in dict.fromkeys(r["side"] for r in rows):
        mine = [r for r in rows if r["side"] == side]
        hit = [r for r in mine if r["reached"]]
        cpu = [r["cpu_seconds"] for r in hit if r.get("cpu_seconds") is not None]
        summary[side] = {"reached": f"{len(hit)}/{len(mine)}",
                         "env_steps_mean": float(np.mean([r["env_steps"] for r in hit])) if hit else None,
                         "env_steps_ci95": t_interval([r["env_steps"] for r in hit])["ci95"] if hit else None,
                         "wall_seconds_mean": float(np.mean([r["wall_seconds"] for r in hit])) if hit else None,
                         "cpu_seconds_mean": float(np.mean(cpu)) if hit and len(cpu) == len(hit) else None}
    lines.append("")
    lines.append("mean over the seeds that reached 475:")
    for side, s in summary.items():
        lines.append(f"  {side:<6} reached {s['reached']}, env steps {fmt(s['env_steps_mean'], '.0f')}"
                     f" ± {fmt(s['env_steps_ci95'], '.0f')}, "
                     f"wall s {fmt(s['wall_seconds_mean'], '.1f')}, cpu s {fmt(s['cpu_seconds_mean'], '.1f')}")
    print("\n".join(lines))
    result = {"seeds": seed_split(args), "target": TARGET, "eval_every": args.eval_every,
              "max_steps": args.max_steps, "runs": rows, "summary": summary,
              "machine": {"autogroup_nice": autogroup_nice()},
              "configs": {side: f"configs/pomdp/train_{CONFIGS[side]}.yaml" for side in CONFIGS}}
    return finish(result, args.out, argv)


if __name__ == "__main__":
    main()
