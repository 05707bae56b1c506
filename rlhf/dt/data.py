"""Offline data sets of mixed quality for the Decision Transformer, regenerable from a seed.

Each data set mixes behaviour levels: an episode at noise level eps acts uniformly at random with probability
eps at every step and otherwise follows a scripted expert for the task, so eps = 1 is the random policy,
intermediate values are medium policies and eps = 0 is the expert. The tasks:

    CartPole-v1   discrete (2 actions); expert: push toward the side the pole is falling (angle + velocities)
    Pendulum-v1   continuous torque in [-2, 2]; expert: energy pumping to swing up, a PD controller on top
    pomdp/tmaze   rlhf/pomdp/envs.py's T-maze: the cue is seen at t = 0 only; the expert reads it from the env
    pomdp/masked-cartpole   CartPole seen as (x, theta) only; the expert acts on the full state

The POMDP experts are privileged (they read the hidden state), as a data-collecting policy may be; the learner
sees only the observations, so it must recover the hidden part from its context window.

A data set is `dataset.npz` (steps of all episodes back to back) plus `dataset.json` (task, action space,
levels, seed, per-level returns) in one directory; `generate(...)` with the same arguments rebuilds it
exactly. Observations are stored as float vectors (a Discrete observation space becomes one-hot).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rlhf.config import ConfigError, RunConfig, option, require_at_least
from rlhf.dt.sequences import episode_offsets
from rlhf.losses import returns_to_go
from rlhf.fsio import releases_run_lock

# ------------------------------------------------------------------------------------------- tasks


def _cartpole_expert(env, obs: np.ndarray) -> int:
    x, x_dot, theta, theta_dot = obs
    return int(theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot > 0)


def _pendulum_expert(env, obs: np.ndarray) -> np.ndarray:
    # Pendulum-v1 dynamics: theta'' = 3g/(2l) sin(theta) + 3/(m l^2) u = 15 sin(theta) + 3u (theta = 0 upright),
    # so E = theta'^2 / 2 + 15 cos(theta) is 15 at rest on top and dE/dt = 3 u theta'.
    cos, sin, theta_dot = obs
    theta = np.arctan2(sin, cos)
    if cos > 0.85:  # near the top: PD control
        u = -10.0 * theta - 2.0 * theta_dot
    else:  # pump energy toward the top's
        energy = 0.5 * theta_dot**2 + 15.0 * cos
        u = 2.0 * np.sign(theta_dot * (15.0 - energy)) if abs(theta_dot) > 1e-3 else 2.0
    return np.clip(np.array([u], dtype=np.float32), -2.0, 2.0)


def _tmaze_expert(env, obs: np.ndarray) -> int:
    # Privileged scripted expert: reads the cue from the environment (the learner sees it at t = 0 only).
    maze = env.unwrapped
    return 0 if maze.pos < maze.corridor_length else 1 + int(maze.cue)


def _masked_cartpole_expert(env, obs: np.ndarray) -> int:
    # The learner sees (x, theta) only; the scripted expert acts on the full state, velocities included.
    return _cartpole_expert(env, np.asarray(env.unwrapped.state, np.float64))


def _gym_maker(env_id: str):
    def make(max_episode_steps: int):
        import gymnasium as gym

        return gym.make(env_id, max_episode_steps=max_episode_steps)
    return make


def _pomdp_maker(name: str, cap_kwarg: str | None = None):
    """Environments of rlhf/pomdp/envs.py (imported, not copied); the cap goes to `cap_kwarg` or a TimeLimit."""
    def make(max_episode_steps: int):
        from gymnasium.wrappers import TimeLimit

        from rlhf.pomdp.envs import make_env

        if cap_kwarg:
            return make_env(name, **{cap_kwarg: max_episode_steps})
        return TimeLimit(make_env(name), max_episode_steps=max_episode_steps)
    return make


@dataclass(frozen=True)
class Task:
    """A task: `make(max_episode_steps) -> env` and its scripted expert `expert(env, obs) -> action`."""

    name: str
    make_env: Callable[[int], Any]
    expert: Callable[[Any, np.ndarray], Any]
    max_episode_steps: int
    description: str = ""

    def make(self, max_episode_steps: int | None = None):
        return self.make_env(max_episode_steps or self.max_episode_steps)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("CartPole-v1", _gym_maker("CartPole-v1"), _cartpole_expert, 500, "discrete, return = steps balanced"),
    Task("Pendulum-v1", _gym_maker("Pendulum-v1"), _pendulum_expert, 200, "continuous torque, swing-up"),
    Task("pomdp/tmaze", _pomdp_maker("tmaze", "max_steps"), _tmaze_expert, 14,
         "T-maze (corridor 5): cue at t = 0 only; +1 right arm, -1 wrong arm, 0 time-out"),
    Task("pomdp/masked-cartpole", _pomdp_maker("masked-cartpole"), _masked_cartpole_expert, 500,
         "CartPole-v1 observing (x, theta) only"),
)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown env '{name}'; known: {', '.join(TASKS)}")
    return TASKS[name]


def register_task(task: Task) -> None:
    """Add a task under its name (for `rlhf dt data --env NAME`)."""
    TASKS[task.name] = task


# ------------------------------------------------------------------------------ spaces and encoding


def action_spec(space) -> dict[str, Any]:
    """JSON-able description of an action space: discrete with n actions, or a continuous box."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return {"discrete": True, "act_dim": int(space.n), "action_start": int(space.start)}
    if isinstance(space, spaces.Box):
        return {"discrete": False, "act_dim": int(np.prod(space.shape)),
                "action_low": np.asarray(space.low, np.float64).ravel().tolist(),
                "action_high": np.asarray(space.high, np.float64).ravel().tolist()}
    raise ValueError(f"unsupported action space {space}")


def obs_dim(space) -> int:
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        return int(np.prod(space.shape))
    raise ValueError(f"unsupported observation space {space}")


def encode_obs(space, obs) -> np.ndarray:
    """An observation as a float32 vector: Discrete -> one-hot, MultiDiscrete -> concatenated one-hots,
    Box / MultiBinary -> flattened."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        v = np.zeros(space.n, np.float32)
        v[int(obs) - int(space.start)] = 1.0
        return v
    if isinstance(space, spaces.MultiDiscrete):
        return np.concatenate([np.eye(n, dtype=np.float32)[int(o)] for n, o in zip(space.nvec.ravel(),
                                                                                     np.ravel(obs))])
    return np.asarray(obs, dtype=np.float32).ravel()


def random_action(spec: dict[str, Any], rng: np.random.Generator):
    if spec["discrete"]:
        return int(rng.integers(spec["act_dim"])) + spec["action_start"]
    return rng.uniform(spec["action_low"], spec["action_high"]).astype(np.float32)


# ------------------------------------------------------------------------------------------ data set


@dataclass
class OfflineDataset:
    """Steps of all episodes back to back. Discrete actions are stored as 0-based ids; continuous actions in the
    environment's units."""

    observations: np.ndarray  # [N, obs_dim] float32
    actions: np.ndarray  # [N] int64 (discrete) or [N, act_dim] float32 (continuous)
    rewards: np.ndarray  # [N] float32
    lengths: np.ndarray  # [E] int64, steps per episode
    levels: np.ndarray  # [E] float64, the behaviour noise level of each episode
    meta: dict[str, Any]

    @property
    def offsets(self) -> np.ndarray:
        return episode_offsets(self.lengths)

    @property
    def returns(self) -> np.ndarray:
        """[E] undiscounted episode returns."""
        return np.add.reduceat(self.rewards.astype(np.float64), self.offsets) if len(self.lengths) else np.zeros(0)

    def rtg(self) -> np.ndarray:
        """[N] float32 return-to-go of every step (episode by episode, with rlhf.losses.returns_to_go)."""
        out = np.empty(len(self.rewards), np.float32)
        for o, n in zip(self.offsets, self.lengths):
            out[o:o + n] = returns_to_go(torch.from_numpy(self.rewards[o:o + n].astype(np.float64))).numpy()
        return out

    def subset(self, episodes: np.ndarray) -> "OfflineDataset":
        """The episodes with these indices, in this order."""
        offs = self.offsets
        steps = np.concatenate([np.arange(offs[e], offs[e] + self.lengths[e]) for e in episodes])
        return OfflineDataset(self.observations[steps], self.actions[steps], self.rewards[steps],
                              self.lengths[episodes], self.levels[episodes], dict(self.meta))

    def top_fraction(self, fraction: float) -> "OfflineDataset":
        """The ceil(fraction * E) episodes of highest return (ties: earlier episode first), for filtered BC."""
        k = max(1, int(np.ceil(fraction * len(self.lengths))))
        order = np.argsort(-self.returns, kind="stable")[:k]
        return self.subset(np.sort(order))

    def save(self, directory: str | Path) -> Path:
        from rlhf.fsio import atomic_file, atomic_write_json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(directory / "dataset.npz", what="dataset") as tmp:  # (the .npz suffix is kept)
            np.savez_compressed(tmp, observations=self.observations, actions=self.actions,
                                rewards=self.rewards, lengths=self.lengths, levels=self.levels)
        atomic_write_json(directory / "dataset.json", self.meta, what="dataset")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "OfflineDataset":
        directory = Path(directory)
        if (directory / "dataset.npz").is_file():
            pass
        elif directory.name == "dataset.npz" and directory.is_file():
            directory = directory.parent
        else:
            raise FileNotFoundError(f"no dataset.npz in {directory} (make one with `rlhf dt data`)")
        with np.load(directory / "dataset.npz") as z:
            arrays = {k: z[k] for k in ("observations", "actions", "rewards", "lengths", "levels")}
        meta = json.loads((directory / "dataset.json").read_text())
        return cls(meta=meta, **arrays)

    def summary(self) -> dict[str, Any]:
        """Per behaviour level: episodes and mean / min / max return."""
        rets, out = self.returns, {}
        for lv in sorted(set(self.levels.tolist()), reverse=True):
            r = rets[self.levels == lv]
            out[f"eps={lv:g}"] = {"episodes": int(len(r)), "mean": float(r.mean()), "min": float(r.min()),
                                  "max": float(r.max())}
        return out


def run_episode(env, task: Task, spec: dict[str, Any], eps: float, rng: np.random.Generator, reset_seed: int):
    """One behaviour episode: (observations [T, obs_dim], actions, rewards [T])."""
    obs, _ = env.reset(seed=reset_seed)
    observations, actions, rewards = [], [], []
    done = False
    while not done:
        explore = rng.random() < eps
        action = random_action(spec, rng) if explore else task.expert(env, obs)
        observations.append(encode_obs(env.observation_space, obs))
        obs, reward, terminated, truncated, _ = env.step(action)
        actions.append(action)
        rewards.append(float(reward))
        done = terminated or truncated
    return np.stack(observations), actions, np.asarray(rewards, np.float32)


def generate(env_name: str, levels: list[float], episodes_per_level: int, seed: int,
             max_episode_steps: int | None = None, progress: bool = True) -> OfflineDataset:
    """Roll out `episodes_per_level` episodes at each noise level; the same arguments give the same data."""
    from tqdm.auto import tqdm

    task = get_task(env_name)
    env = task.make(max_episode_steps)
    spec = action_spec(env.action_space)
    rng = np.random.default_rng(seed)
    obs_list, act_list, rew_list, lengths, ep_levels = [], [], [], [], []
    bar = tqdm(total=len(levels) * episodes_per_level, desc=f"data {env_name}", disable=not progress)
    for li, eps in enumerate(levels):
        for i in range(episodes_per_level):
            reset_seed = seed * 1_000_003 + li * 10_007 + i
            o, a, r = run_episode(env, task, spec, eps, rng, reset_seed)
            obs_list.append(o)
            act_list.extend(a)
            rew_list.append(r)
            lengths.append(len(r))
            ep_levels.append(eps)
            bar.update()
    bar.close()
    env.close()
    if spec["discrete"]:
        actions = np.asarray(act_list, np.int64) - spec["action_start"]
    else:
        actions = np.stack([np.asarray(a, np.float32).ravel() for a in act_list])
    meta = {"env": env_name, "seed": seed, "levels": list(levels), "episodes_per_level": episodes_per_level,
            "max_episode_steps": int(max_episode_steps or task.max_episode_steps),
            "obs_dim": obs_dim(env.observation_space), **spec}
    data = OfflineDataset(np.concatenate(obs_list).astype(np.float32), actions, np.concatenate(rew_list),
                          np.asarray(lengths, np.int64), np.asarray(ep_levels, np.float64), meta)
    data.meta["returns"] = data.summary()
    return data


# ------------------------------------------------------------------------------------------ command


@dataclass
class DTDataConfig(RunConfig):
    """Generate an offline data set of mixed quality (`rlhf dt data`)."""

    output_dir: str = option("runs/dt/data", help="Where dataset.npz, dataset.json and the run files go.")
    env: str = option("CartPole-v1", help=f"Task, one of: {', '.join(TASKS)} (see rlhf/dt/data.py).")
    levels: list[float] = option([1.0, 0.6, 0.4, 0.2], help="Behaviour noise levels: at each step the policy "
                                 "acts at random with this probability, else like the scripted expert "
                                 "(1: random, 0: expert).")
    episodes_per_level: int = option(50, help="Episodes rolled out at each level.")
    max_episode_steps: int | None = option(None, help="Episode cap (null: the task's own).")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "episodes_per_level")
        get_task(self.env)
        if not self.levels:
            raise ConfigError("levels must list at least one noise level")
        if any(not 0 <= lv <= 1 for lv in self.levels):
            raise ConfigError(f"levels must lie in [0, 1], got {self.levels}")
        if self.max_episode_steps is not None:
            require_at_least(self, 1, "max_episode_steps")


@releases_run_lock
def make_data(cfg) -> dict:
    from rlhf.distributed import make_accelerator
    from rlhf.runs import RunLogger, prepare_output_dir

    get_task(cfg.env)
    accelerator = make_accelerator(bf16=False, report_to=cfg.report_to, project_dir=cfg.output_dir)
    out = prepare_output_dir(cfg, accelerator)
    logger = RunLogger(accelerator, cfg, "rlhf-dt-data")
    data = generate(cfg.env, list(cfg.levels), cfg.episodes_per_level, cfg.seed, cfg.max_episode_steps)
    data.save(out)
    print(f"dt data: {len(data.lengths)} episodes, {len(data.rewards)} steps of {cfg.env} in {out}")
    print(f"{'level':>10} {'episodes':>9} {'mean':>9} {'min':>9} {'max':>9}")
    for name, s in data.meta["returns"].items():
        print(f"{name:>10} {s['episodes']:>9} {s['mean']:>9.1f} {s['min']:>9.1f} {s['max']:>9.1f}")
    rets = data.returns
    return logger.finish({"data/episodes": int(len(rets)), "data/steps": int(len(data.rewards)),
                          "data/return_mean": float(rets.mean()), "data/return_min": float(rets.min()),
                          "data/return_max": float(rets.max())})
