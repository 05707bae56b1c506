"""Roll out a trained Decision Transformer (or BC policy) conditioned on several target returns.

    rlhf dt evaluate --model runs/dt/train/model --targets 100,300,500 --episodes 10

For each target, `episodes` episodes start from the same reset seeds (common random numbers across targets,
disjoint from the data set's seeds). At step t the policy sees the last K steps (left-padded), with the
return-to-go R_0 = target and R_{t+1} = R_t - r_t (Chen et al., 2021). A BC model ignores the target and is
rolled out once. All episodes step together, one forward pass per time step. Writes `eval.json` (returns per
target) and the output contract to `output_dir`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlhf.config import ConfigError, RunConfig, option, require_at_least
from rlhf.dt.data import encode_obs, get_task
from rlhf.dt.model import DecisionTransformer
from rlhf.dt.sequences import left_pad, padding_mask, stack_windows, timestep_indices
from rlhf.fsio import atomic_write_json, releases_run_lock

EVAL_SEED_BASE = 100_000_000  # reset seeds of evaluation episodes: EVAL_SEED_BASE + 10_000 * seed + i


@dataclass
class DTEvalConfig(RunConfig):
    """Evaluate a trained Decision Transformer (or BC) policy at several target returns."""

    output_dir: str = option("runs/dt/eval", help="Where eval.json and the run files go.")
    model: str = option("runs/dt/train/model", help="Model directory (from `rlhf dt train`).")
    targets: list[float] = option([], help="Target returns to condition on; empty: the training data's "
                                  "min, quartiles and max (stored with the model).")
    episodes: int = option(10, help="Episodes per target.")
    sample_actions: bool = option(True, help="Discrete actions: sample from the predicted distribution (false: "
                                  "argmax). Continuous actions are the predicted mean.")
    max_episode_steps: int | None = option(None, help="Episode cap (null: the one the data was made with).")
    num_threads: int = option(1, help="torch CPU threads (0: torch's default).")

    def validate(self) -> None:
        super().validate()
        if not self.model:
            raise ConfigError("model must name a directory from `rlhf dt train`")
        require_at_least(self, 1, "episodes")
        require_at_least(self, 0, "num_threads")
        if self.max_episode_steps is not None:
            require_at_least(self, 1, "max_episode_steps")


def default_targets(model: DecisionTransformer) -> list[float]:
    r = model.spec.data_returns
    return [r["min"], r["q25"], r["q50"], r["q75"], r["max"]]


@torch.no_grad()
def rollout(model: DecisionTransformer, targets: list[float], episodes: int, seed: int, *,
            sample_actions: bool = True, max_episode_steps: int | None = None, progress: bool = True
            ) -> list[list[float]]:
    """Returns achieved [len(targets)][episodes] for episodes started from the same seeds for every target."""
    from tqdm.auto import tqdm

    spec, K = model.spec, model.spec.context_len
    task = get_task(spec.env)
    cap = max_episode_steps or spec.max_ep_len
    jobs = [(ti, i) for ti in range(len(targets)) for i in range(episodes)]
    envs = [task.make(cap) for _ in jobs]
    gen = torch.Generator().manual_seed(seed)
    act_shape = () if spec.discrete else (spec.act_dim,)
    act_dtype = np.int64 if spec.discrete else np.float32
    hist = []  # per job: states, actions (0-based ids or env units), rtg
    for env, (ti, i) in zip(envs, jobs):
        obs, _ = env.reset(seed=EVAL_SEED_BASE + 10_000 * seed + i)
        hist.append({"states": [encode_obs(env.observation_space, obs)], "actions": [], "rtg": [float(targets[ti])]})
    achieved = np.zeros(len(jobs))
    active = list(range(len(jobs)))
    bar = tqdm(total=cap, desc="dt evaluate", disable=not progress)
    for _ in range(cap):
        if not active:
            break
        windows = []
        for j in active:  # the last K steps of each episode (older history is never read)
            h = hist[j]
            t = len(h["states"]) - 1
            n = min(t + 1, K)
            recent_actions = h["actions"][t + 1 - n:] + [np.zeros(act_shape, act_dtype)]  # a_t not chosen yet
            windows.append({
                "states": left_pad(np.stack(h["states"][-n:]), K),
                "actions": left_pad(np.asarray(recent_actions, act_dtype).reshape(n, *act_shape), K),
                "rtg": left_pad(np.asarray(h["rtg"][-n:], np.float32), K),
                "mask": padding_mask(n, K), "timesteps": timestep_indices(t + 1 - n, n, K)})
        batch = {k: torch.from_numpy(v) for k, v in stack_windows(windows).items()}
        actions = model.act(batch["states"], batch["actions"], batch["rtg"], batch["timesteps"], batch["mask"],
                            sample=sample_actions, generator=gen)
        still = []
        for j, a in zip(active, actions):
            env, h = envs[j], hist[j]
            obs, reward, terminated, truncated, _ = env.step(int(a) if spec.discrete else a.astype(np.float32))
            achieved[j] += reward
            h["actions"].append(int(a) - spec.action_start if spec.discrete else a.astype(np.float32))
            if not (terminated or truncated):
                h["states"].append(encode_obs(env.observation_space, obs))
                h["rtg"].append(h["rtg"][-1] - float(reward))
                still.append(j)
        active = still
        bar.update()
    bar.close()
    for env in envs:
        env.close()
    return [[float(achieved[k]) for k, (ti, _) in enumerate(jobs) if ti == t] for t in range(len(targets))]


@releases_run_lock
def evaluate(cfg: DTEvalConfig) -> dict:
    from rlhf.distributed import make_accelerator
    from rlhf.runs import RunLogger, prepare_output_dir

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if not Path(cfg.model).is_dir():
        raise FileNotFoundError(f"model directory not found: {cfg.model} (key 'model')")
    model = DecisionTransformer.load(cfg.model)
    accelerator = make_accelerator(bf16=False, report_to=cfg.report_to, project_dir=cfg.output_dir)
    out = prepare_output_dir(cfg, accelerator)
    logger = RunLogger(accelerator, cfg, "rlhf-dt-eval")
    conditioned = model.spec.condition_on_return
    if conditioned:
        targets = list(cfg.targets) or default_targets(model)
    else:
        if cfg.targets:
            print(f"dt evaluate: {model.spec.method} model ignores the return; evaluating once")
        targets = [0.0]
    t0 = time.time()
    returns = rollout(model, targets, cfg.episodes, cfg.seed, sample_actions=cfg.sample_actions,
                      max_episode_steps=cfg.max_episode_steps)
    rows = [{"target": float(t) if conditioned else None, "mean": float(np.mean(r)), "std": float(np.std(r)),
             "returns": r} for t, r in zip(targets, returns)]
    result = {"env": model.spec.env, "method": model.spec.method, "model": cfg.model, "seed": cfg.seed,
              "episodes": cfg.episodes, "sample_actions": cfg.sample_actions, "data_returns": model.spec.data_returns,
              "results": rows, "seconds": time.time() - t0}
    atomic_write_json(out / "eval.json", result, what="eval")
    print(f"{'target':>10} {'achieved':>16}   ({model.spec.method}, {model.spec.env}, {cfg.episodes} episodes)")
    for row in rows:
        tgt = "-" if row["target"] is None else f"{row['target']:.1f}"
        print(f"{tgt:>10} {row['mean']:>9.1f} ± {row['std']:<6.1f}")
    metrics = {f"eval/return@{'bc' if r['target'] is None else round(r['target'], 2)}": r["mean"] for r in rows}
    return {**logger.finish(metrics), "results": rows}
