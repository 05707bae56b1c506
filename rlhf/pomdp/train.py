"""Training and evaluation of any POMDP agent on any environment (`rlhf pomdp train|evaluate`, rlhf/pomdp/cli.py).

    rlhf pomdp train --config configs/pomdp/train_masked_cartpole_drqn.yaml --seed 1 --output_dir runs/pomdp/drqn-1
    rlhf pomdp evaluate --output_dir runs/pomdp/drqn-1 --final_eval_episodes 100
    rlhf pomdp train --help            # every field with its help text and default

A run writes the output contract of `rlhf.runs` (config.yaml, log.jsonl, metrics.json) plus agent.pt (the
final network) and best.pt (the network with the best periodic evaluation). `evaluate` reads the run's
config.yaml, loads agent.pt (or best.pt with `--checkpoint best`) and writes eval.json into the run (and, with
report_to, sends its numbers to the trackers). Runs are short and keep no checkpoint to continue from, so
`resume: true` is refused when the config is read.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from rlhf.config import ConfigError, RunConfig, option, require_at_least
from rlhf.pomdp.agents import AGENTS, POLICY_AGENTS, Episode, build_agent
from rlhf.pomdp.envs import ENV_NAMES, make_env
from rlhf.fsio import atomic_file, atomic_write_json, releases_run_lock


@dataclasses.dataclass
class PomdpConfig(RunConfig):
    """Train or evaluate a POMDP agent (`rlhf pomdp train|evaluate`)."""

    output_dir: str = option("runs/pomdp", help="Directory for config.yaml, log.jsonl, metrics.json, agent.pt, "
                             "best.pt and eval.json.")
    log_every: int = option(5000, help="Write a log.jsonl line every this many environment steps.")
    env: str = option("masked-cartpole", help="Environment (rlhf.pomdp.envs).", choices=ENV_NAMES)
    corridor_length: int = option(5, help="tmaze: cells from the start to the junction.")
    n_cells: int = option(5, help="aliased-corridor: number of cells (odd).")
    p_blank: float = option(0.5, help="flicker-cartpole: probability that an observation is blanked.")
    agent: str = option("drqn", help="dqn: Q on the current observation; dqn-window: Q on the last `window` "
                        "observations; drqn: LSTM Q-network; vae: sequence-VAE latent state with Q on z_t; "
                        "pg: memoryless REINFORCE; rpg: recurrent REINFORCE.", choices=AGENTS)
    total_steps: int = option(100_000, help="Environment steps to train for (all environments together).")
    num_envs: int = option(8, help="Environments stepped together (for pg/rpg also the episodes per update).")
    hidden_size: int = option(64, help="Width of the MLP layers and the LSTM.")
    learning_rate: float = option(1e-3, help="Adam learning rate.")
    lr_end: float | None = option(None, help="Decay the learning rate linearly to this at total_steps (null: "
                                  "constant learning_rate).")
    gamma: float = option(0.99, help="Discount factor.")
    max_grad_norm: float = option(10.0, help="Gradient-norm clipping (<= 0: none).")
    normalize_obs: bool = option(False, help="Normalise observations by running mean and variance (saved with "
                                 "the network).")
    # value-based agents
    window: int = option(4, help="dqn-window: number of most recent observations the Q-network sees.")
    batch_size: int = option(64, help="Transitions (dqn, dqn-window) or sub-sequences (drqn, vae) per update.")
    buffer_size: int = option(100_000, help="Replay capacity in environment steps.")
    learning_starts: int = option(1000, help="Environment steps before the first update.")
    train_every: int = option(4, help="Environment steps per gradient update.")
    target_tau: float = option(0.01, help="Polyak rate of the target network per update.")
    n_step: int = option(1, help="drqn, vae: n of the n-step TD targets (dqn agents use 1).")
    seq_len: int = option(16, help="drqn, vae: steps per sampled sub-sequence that take a loss.")
    burn_in: int = option(0, help="drqn, vae: steps before each sub-sequence that only warm up the state.")
    hidden_init: str = option("zero", help="drqn, vae: initial state of a sampled sub-sequence: zero, or the "
                              "state stored when acting.", choices=("zero", "stored"))
    eps_start: float = option(1.0, help="Initial exploration rate.")
    eps_end: float = option(0.05, help="Final exploration rate.")
    eps_decay_steps: int = option(20_000, help="Environment steps over which epsilon decays linearly.")
    latent_size: int = option(16, help="vae: dimension of z_t.")
    vae_beta: float = option(1.0, help="vae: weight of the KL term in the ELBO.")
    vae_coef: float = option(1.0, help="vae: weight of the negative ELBO next to the TD loss.")
    vae_q_grad: bool = option(False, help="vae: let the TD loss train the encoder too (default: Q on a "
                              "detached z_t, so the latent state comes from the ELBO alone).")
    # policy-gradient agents
    normalize_advantages: bool = option(True, help="pg, rpg: whiten advantages over each batch.")
    value_coef: float = option(0.5, help="pg, rpg: weight of the baseline's regression loss.")
    entropy_coef: float = option(0.0, help="pg, rpg: entropy bonus.")
    bootstrap_truncated: bool = option(False, help="pg, rpg: end an episode cut by the time limit with the "
                                       "baseline's value of its last observation instead of treating it as ended.")
    gae_lambda: float | None = option(None, help="pg, rpg: advantages by GAE(lambda) on the baseline's values "
                                      "(null: reward-to-go minus the baseline, which lambda 1 equals).")
    # evaluation
    eval_every: int = option(10_000, help="Evaluate every this many environment steps.")
    eval_episodes: int = option(20, help="Episodes per periodic evaluation.")
    final_eval_episodes: int = option(100, help="Fresh episodes for the final evaluation of the final and the "
                                      "best network (0: none; `rlhf pomdp evaluate` then plays one).")
    stop_at_return: float | None = option(None, help="Stop once a periodic evaluation's mean return reaches "
                                          "this (null: train for total_steps).")
    checkpoint: str = option("final", help="evaluate: which network to load.", choices=("final", "best"))

    NOT_RESUMABLE = "pomdp runs are short and keep no checkpoint to resume from"

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "total_steps", "num_envs", "hidden_size", "window", "batch_size", "buffer_size",
                         "train_every", "n_step", "seq_len", "eval_every", "eval_episodes", "latent_size")
        require_at_least(self, 0, "burn_in", "learning_starts", "final_eval_episodes")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.gae_lambda is not None and not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError(f"gae_lambda must be in [0, 1] or null, got {self.gae_lambda}")
        if self.n_cells < 3 or self.n_cells % 2 == 0:
            raise ConfigError(f"n_cells must be odd and >= 3, got {self.n_cells}")

    def env_kwargs(self) -> dict:
        return {"tmaze": {"corridor_length": self.corridor_length}, "aliased-corridor": {"n_cells": self.n_cells},
                "flicker-cartpole": {"p_blank": self.p_blank}}.get(self.env, {})


# ------------------------------------------------------------------------------------ environments


class VecEnv:
    """N environments stepped together; an environment whose episode ends is reset at once. Keeps each
    environment's episode in progress so that finished episodes come back whole."""

    def __init__(self, cfg: PomdpConfig, n: int, seed: int, store_hidden: bool = False):
        self.envs = [make_env(cfg.env, **cfg.env_kwargs()) for _ in range(n)]
        for i, e in enumerate(self.envs):
            e.action_space.seed(seed + i)
        self.seed, self.n, self.store_hidden = seed, n, store_hidden
        self.obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(self.envs)]).astype(np.float32)
        self.open = [self._empty() for _ in range(n)]

    @staticmethod
    def _empty() -> dict:
        return {"obs": [], "next_obs": [], "actions": [], "rewards": [], "hidden": [], "success": None}

    def step(self, actions: np.ndarray, hidden: np.ndarray | None = None):
        """Step every environment. Returns (observations to act on next [N, D], done [N] bool, finished
        episodes as (Episode, success or None) pairs)."""
        done = np.zeros(self.n, bool)
        finished = []
        for i, (env, a) in enumerate(zip(self.envs, actions)):
            o, r, term, trunc, info = env.step(int(a))
            ep = self.open[i]
            ep["obs"].append(self.obs[i].copy())
            ep["next_obs"].append(np.asarray(o, np.float32))
            ep["actions"].append(int(a))
            ep["rewards"].append(float(r))
            if hidden is not None:
                ep["hidden"].append(hidden[i])
            if term or trunc:
                done[i] = True
                finished.append((Episode(np.stack(ep["obs"]), np.stack(ep["next_obs"]), np.array(ep["actions"]),
                                         np.array(ep["rewards"], np.float32), bool(term),
                                         np.stack(ep["hidden"]) if ep["hidden"] else None),
                                 info.get("success")))
                self.open[i] = self._empty()
                o, _ = env.reset()
            self.obs[i] = o
        return self.obs.copy(), done, finished


def epsilon_at(cfg: PomdpConfig, step: int) -> float:
    frac = min(1.0, step / max(1, cfg.eps_decay_steps))
    return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)


def learning_rate_at(cfg: PomdpConfig, step: int) -> float:
    """learning_rate, decayed linearly to lr_end at total_steps when lr_end is set."""
    if cfg.lr_end is None:
        return cfg.learning_rate
    frac = min(1.0, step / cfg.total_steps)
    return cfg.learning_rate + frac * (cfg.lr_end - cfg.learning_rate)


def evaluate_agent(agent, cfg: PomdpConfig, episodes: int, seed: int, greedy_policy: bool = False) -> dict:
    """Run `episodes` episodes with the agent's evaluation policy: greedy for Q agents, sampling for policy
    agents (whose optimum may be stochastic; `greedy_policy` takes their most likely action instead). Returns
    mean/std return, mean length and success rate.

    Each of the (at most 32) environments owns a fixed quota of the episodes and only those count: taking the
    first `episodes` to finish instead would favour short episodes (an environment whose episodes fail early
    finishes more of them) and bias the mean return down."""
    n = min(episodes, 32)
    quota = np.array([episodes // n + (i < episodes % n) for i in range(n)])  # [N], sums to `episodes`
    counted = np.zeros(n, int)
    vec = VecEnv(cfg, n, seed)
    state = agent.initial_state(n)
    returns, lengths, successes = [], [], []
    while (counted < quota).any():
        if cfg.agent in POLICY_AGENTS:
            actions, state = agent.act(vec.obs, state, greedy=greedy_policy)
        else:
            actions, state = agent.act(vec.obs, state, epsilon=0.0)
        _, done, finished = vec.step(actions)
        for i, (ep, success) in zip(np.flatnonzero(done), finished):  # `finished` is in environment order
            if counted[i] < quota[i]:
                counted[i] += 1
                returns.append(float(ep.rewards.sum()))
                lengths.append(len(ep.actions))
                if success is not None:
                    successes.append(float(success))
        state = agent.reset_state(state, done)
    out = {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
           "length_mean": float(np.mean(lengths)), "episodes": len(returns)}
    if successes:
        out["success_rate"] = float(np.mean(successes))
    return out


# ------------------------------------------------------------------------------------------ training


@releases_run_lock
def train(cfg: PomdpConfig) -> dict:
    """Train one agent; returns the metrics written to metrics.json."""
    from tqdm.auto import tqdm

    from rlhf.distributed import make_accelerator
    from rlhf.runs import RunLogger, prepare_output_dir

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    accelerator = make_accelerator(bf16=False, report_to=cfg.report_to, project_dir=cfg.output_dir)
    out = prepare_output_dir(cfg, accelerator)
    logger = RunLogger(accelerator, cfg, "rlhf-pomdp")

    probe = make_env(cfg.env, **cfg.env_kwargs())
    obs_dim, n_actions = probe.observation_space.shape[0], int(probe.action_space.n)
    agent = build_agent(cfg.agent, obs_dim, n_actions, cfg, rng)
    is_policy = cfg.agent in POLICY_AGENTS
    store_hidden = not is_policy and agent.replay.hidden is not None
    vec = VecEnv(cfg, cfg.num_envs, seed=cfg.seed * 1000)
    state = agent.initial_state(cfg.num_envs)

    steps, next_eval, next_log, start = 0, cfg.eval_every, cfg.log_every, time.time()
    recent, batch, stats = [], [], {}
    history, best = [], {"return_mean": -np.inf, "step": 0}
    best_state = copy.deepcopy(agent.net.state_dict())
    reached_at = None
    bar = tqdm(total=cfg.total_steps, desc=f"{cfg.agent} on {cfg.env}", unit="step", mininterval=2.0)
    while steps < cfg.total_steps:
        # 1. act in every environment (one network call per step for all N)
        hidden = agent.stored_hidden(state) if store_hidden else None
        if is_policy:
            actions, state = agent.act(vec.obs, state, learn=True)
        else:
            actions, state = agent.act(vec.obs, state, epsilon_at(cfg, steps), learn=True)
        _, done, finished = vec.step(actions, hidden)
        state = agent.reset_state(state, done)
        steps += cfg.num_envs
        bar.update(cfg.num_envs)
        recent += [float(ep.rewards.sum()) for ep, _ in finished]
        # 2. learn: value agents from replay every `train_every` steps, policy agents per batch of episodes
        for group in agent.optimizer.param_groups:
            group["lr"] = learning_rate_at(cfg, steps)
        if is_policy:
            batch += [ep for ep, _ in finished]
            if len(batch) >= cfg.num_envs:
                stats = agent.update(batch)
                batch = []
        else:
            for ep, _ in finished:
                agent.replay.add(ep)
            if steps >= cfg.learning_starts and len(agent.replay) >= cfg.batch_size:
                for _ in range(max(1, cfg.num_envs // cfg.train_every) if steps % cfg.train_every < cfg.num_envs
                               else 0):
                    stats = agent.update()
        # 3. log and evaluate
        if steps >= next_log:
            next_log += cfg.log_every
            logger.log({**stats, "train/return": float(np.mean(recent[-20:])) if recent else float("nan"),
                        "train/epsilon": 0.0 if is_policy else epsilon_at(cfg, steps),
                        "train/learning_rate": learning_rate_at(cfg, steps),
                        "time/seconds": time.time() - start}, step=steps)
        if steps >= next_eval or steps >= cfg.total_steps:
            next_eval += cfg.eval_every
            ev = evaluate_agent(agent, cfg, cfg.eval_episodes, seed=10_000 + cfg.seed * 1000 + len(history))
            history.append({"step": steps, "seconds": time.time() - start, **ev})
            logger.log({f"eval/{k}": v for k, v in ev.items()}, step=steps)
            bar.set_postfix(eval_return=f"{ev['return_mean']:.2f}")
            if ev["return_mean"] > best["return_mean"]:
                best = {"step": steps, **ev}
                best_state = copy.deepcopy(agent.net.state_dict())
            if cfg.stop_at_return is not None and ev["return_mean"] >= cfg.stop_at_return:
                reached_at = {"step": steps, "seconds": time.time() - start}
                break
    bar.close()
    train_seconds = time.time() - start

    # 4. save and evaluate the final and the best network on fresh episodes
    for name, state in (("agent.pt", agent.net.state_dict()), ("best.pt", best_state)):
        with atomic_file(out / name, what="weights") as tmp:
            torch.save(state, tmp)
    metrics = {"env": cfg.env, "agent": cfg.agent, "seed": cfg.seed, "env_steps": steps,
               "train_seconds": train_seconds, "updates": agent.updates, "eval_history": history,
               "best_periodic": best, "reached_stop_at": reached_at}
    if cfg.final_eval_episodes > 0:
        metrics["final_eval"] = evaluate_agent(agent, cfg, cfg.final_eval_episodes, seed=99_999 + cfg.seed)
        final_state = copy.deepcopy(agent.net.state_dict())
        agent.net.load_state_dict(best_state)
        metrics["best_eval"] = evaluate_agent(agent, cfg, cfg.final_eval_episodes, seed=99_999 + cfg.seed)
        agent.net.load_state_dict(final_state)
    metrics = logger.finish(metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "eval_history"}))
    return metrics


def load_agent(cfg: PomdpConfig, which: str = "final"):
    """The agent of the run in cfg.output_dir, with its saved weights."""
    probe = make_env(cfg.env, **cfg.env_kwargs())
    agent = build_agent(cfg.agent, probe.observation_space.shape[0], int(probe.action_space.n), cfg,
                        np.random.default_rng(cfg.seed))
    path = Path(cfg.output_dir) / ("agent.pt" if which == "final" else "best.pt")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train a run in {cfg.output_dir} first")
    agent.net.load_state_dict(torch.load(path, weights_only=True))
    return agent


def evaluate(cfg: PomdpConfig) -> dict:
    """Evaluate the run in cfg.output_dir on fresh episodes; writes eval.json there."""
    torch.manual_seed(cfg.seed)
    agent = load_agent(cfg, cfg.checkpoint)
    scores = evaluate_agent(agent, cfg, max(1, cfg.final_eval_episodes), seed=123_456 + cfg.seed)
    result = {"env": cfg.env, "agent": cfg.agent, "checkpoint": cfg.checkpoint, "seed": cfg.seed, **scores}
    atomic_write_json(Path(cfg.output_dir) / "eval.json", result, what="eval")
    if cfg.report_to != "none":  # the run's trackers get the evaluation too (eval.json stays the record)
        from rlhf.distributed import make_accelerator
        from rlhf.runs import start_trackers

        accelerator = make_accelerator(bf16=False, report_to=cfg.report_to, project_dir=cfg.output_dir)
        start_trackers(accelerator, cfg, "rlhf-pomdp-eval")
        accelerator.log({f"eval/{k}": v for k, v in scores.items()}, step=0)
        accelerator.end_training()
    print(json.dumps(result))
    return result


def run_config_first(argv: list[str]) -> list[str]:
    """`rlhf pomdp evaluate` without --config: the run's own config.yaml is the base, flags go on top."""
    if "--config" in argv or "-h" in argv or "--help" in argv:
        return argv
    out_dir = argv[argv.index("--output_dir") + 1] if "--output_dir" in argv[:-1] else PomdpConfig().output_dir
    return ["--config", str(Path(out_dir) / "config.yaml"), *argv]


def train_command(cfg: PomdpConfig) -> dict:
    torch.set_num_threads(1)  # the networks are small: one thread is the fastest on shared cores
    return train(cfg)


def evaluate_command(cfg: PomdpConfig) -> dict:
    torch.set_num_threads(1)
    return evaluate(cfg)
