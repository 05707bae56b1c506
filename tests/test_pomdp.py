"""POMDP baselines: the environments behave as specified, the pure math matches hand-computed values, replay
sampling builds the right windows and masks, and `rlhf pomdp train|evaluate` runs end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf.config import ConfigError, load_config
from rlhf.losses import (diagonal_gaussian_kl, diagonal_gaussian_log_prob, discounted_reward_to_go,
                         double_q_values, lambda_advantages, n_step_td_targets, sequence_elbo)
from rlhf.pomdp.agents import Episode, SequenceReplay
from rlhf.pomdp.envs import ENV_NAMES, AliasedCorridor, TMaze, TwoDoors, make_env

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ envs


def test_aliased_corridor_ends_look_alike_and_value_is_exact():
    env = AliasedCorridor(n_cells=5, step_cost=0.1, max_steps=20)
    starts = {}
    for seed in range(20):
        o, info = env.reset(seed=seed)
        starts[info["state"]] = o
    assert set(starts) == {0, 4}  # episodes start at either end ...
    np.testing.assert_array_equal(starts[0], starts[4])  # ... and the two ends look the same
    # interior cells are told apart
    assert env.obs_index(1) != env.obs_index(3) and env.obs_index(1) != 0
    # always-right: from the left end 2 steps (-0.1 + 0.9), from the right end 20 steps into the wall
    assert env.memoryless_value(1.0) == pytest.approx(0.5 * 0.8 + 0.5 * -2.0)
    assert env.memoryless_value(0.0) == pytest.approx(-0.6)
    values = {p: env.memoryless_value(p) for p in np.linspace(0, 1, 21)}
    assert max(values, key=values.get) == pytest.approx(0.5)  # the stochastic optimum
    # Monte Carlo with p = 0.5 at the ends agrees with the exact value
    rng, total, n = np.random.default_rng(0), 0.0, 3000
    for ep in range(n):
        o, _ = env.reset(seed=1000 + ep)
        done = False
        while not done:
            a = int(rng.random() < 0.5) if o[0] == 1 else int(np.flatnonzero(o)[0] == 1)
            o, r, term, trunc, info = env.step(a)
            total += r
            done = term or trunc
    assert total / n == pytest.approx(env.memoryless_value(0.5), abs=0.03)


def test_two_doors_locked_door_never_opens_and_failures_look_alike():
    env = TwoDoors(max_steps=4)
    locked_seen, fail_obs = set(), []
    for seed in range(20):
        env.reset(seed=seed)
        locked = env.locked
        locked_seen.add(locked)
        for _ in range(3):  # retrying the locked door never works
            o, r, term, trunc, _ = env.step(locked)
            assert not term and r == pytest.approx(-0.1)
            fail_obs.append(o)
        o, r, term, trunc, info = env.step(1 - locked)
        assert term and r == 1.0 and info["success"] and o.argmax() == TwoDoors.OPENED
    assert locked_seen == {0, 1}
    assert all(np.array_equal(o, fail_obs[0]) for o in fail_obs)  # which door failed is not observed
    env.reset(seed=0)
    for t in range(4):
        _, _, term, trunc, info = env.step(env.locked)
    assert trunc and not term and info["success"] is False


@pytest.mark.parametrize("length", [1, 3, 7])
def test_tmaze_cue_only_at_start(length):
    env = TMaze(corridor_length=length)
    assert env.max_steps == 2 * length + 4
    for seed in range(6):
        o, info = env.reset(seed=seed)
        cue = info["state"]
        assert o[:2].tolist() == [1.0 - cue, float(cue)] and o[2] == 1.0
        for t in range(length):
            o, r, term, trunc, _ = env.step(0)
            assert o[:2].sum() == 0 and r == -0.01 and not term  # the cue is gone after t = 0
        assert o[3] == 1.0 and o[2] == 0.0  # at the junction
        good = 1 + cue
        o, r, term, _, info = env.step(good if seed % 2 else 3 - good)
        assert term and info["success"] == bool(seed % 2) and r == pytest.approx(0.99 if seed % 2 else -0.01)
    env.reset(seed=0)
    for t in range(env.max_steps):
        _, _, term, trunc, info = env.step(1)  # "up" in the corridor wastes a step
    assert trunc and not term and info["success"] is False


def test_cartpole_wrappers():
    masked = make_env("masked-cartpole")
    assert masked.observation_space.shape == (2,)
    o, info = masked.reset(seed=0)
    np.testing.assert_allclose(o, info["state"][[0, 2]])
    o, *_, info = masked.step(1)
    assert o.shape == (2,)
    np.testing.assert_allclose(o, info["state"][[0, 2]])

    def blanks(p):
        env = make_env("flicker-cartpole", p_blank=p)
        env.reset(seed=1)
        n, count = 0, 0
        for t in range(1000):
            o, _, term, trunc, info = env.step(t % 2)
            n += 1
            count += int(not o.any())
            if o.any():
                np.testing.assert_allclose(o, info["state"])
            if term or trunc:
                env.reset()
        return count / n

    assert blanks(0.0) == 0.0 and blanks(1.0) == 1.0
    assert blanks(0.5) == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="unknown environment"):
        make_env("pong")
    assert all(make_env(n).reset(seed=0)[0].dtype == np.float32 for n in ENV_NAMES)


# ------------------------------------------------------------------------------------- pure math


def test_discounted_reward_to_go_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 9.0], [1.0, 1.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = discounted_reward_to_go(rewards, mask, gamma=0.5)
    # row 0: 3 -> 2 + 0.5*3 = 3.5 -> 1 + 0.5*3.5 = 2.75; padding (the 9s) is ignored and zeroed
    torch.testing.assert_close(out, torch.tensor([[2.75, 3.5, 3.0, 0.0], [1.5, 1.0, 0.0, 0.0]]))
    # against a plain loop on random data
    r, m = torch.randn(3, 7), torch.ones(3, 7)
    ref = torch.zeros(3, 7)
    for t in reversed(range(7)):
        ref[:, t] = r[:, t] + (0.9 * ref[:, t + 1] if t + 1 < 7 else 0)
    torch.testing.assert_close(discounted_reward_to_go(r, m, 0.9), ref)


def test_lambda_advantages_by_hand():
    r = torch.tensor([[1.0, 2.0, 3.0, 9.0], [1.0, 1.0, 9.0, 9.0]])
    v = torch.tensor([[4.0, 2.0, 1.0, 7.0], [1.0, 3.0, 7.0, 7.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # gamma 0.5: row 0 deltas 1 + 0.5*2 - 4 = -2, 2 + 0.5*1 - 2 = 0.5, 3 + 0 - 1 = 2 (no value after the end);
    # row 1: 1 + 1.5 - 1 = 1.5, 1 + 0 - 3 = -2
    torch.testing.assert_close(lambda_advantages(r, v, m, gamma=0.5, lam=0.0),
                               torch.tensor([[-2.0, 0.5, 2.0, 0.0], [1.5, -2.0, 0.0, 0.0]]))
    # lam 0.5 (discount 0.25): 2; 0.5 + 0.25*2 = 1; -2 + 0.25*1 = -1.75; row 1: -2; 1.5 - 0.5 = 1
    torch.testing.assert_close(lambda_advantages(r, v, m, gamma=0.5, lam=0.5),
                               torch.tensor([[-1.75, 1.0, 2.0, 0.0], [1.0, -2.0, 0.0, 0.0]]))
    # lam 1: reward-to-go minus the baseline (2.75 - 4, 3.5 - 2, 3 - 1; 1.5 - 1, 1 - 3)
    torch.testing.assert_close(lambda_advantages(r, v, m, gamma=0.5, lam=1.0),
                               torch.tensor([[-1.25, 1.5, 2.0, 0.0], [0.5, -2.0, 0.0, 0.0]]))
    # against a plain backward loop on random data with ragged episodes
    r, v = torch.randn(3, 6), torch.randn(3, 6)
    lengths = [6, 4, 1]
    m = torch.tensor([[t < L for t in range(6)] for L in lengths])
    ref = torch.zeros(3, 6)
    for i, L in enumerate(lengths):
        last = 0.0
        for t in reversed(range(L)):
            delta = r[i, t] + 0.9 * (v[i, t + 1] if t + 1 < L else 0.0) - v[i, t]
            last = delta + 0.9 * 0.7 * last
            ref[i, t] = last
    torch.testing.assert_close(lambda_advantages(r, v, m, 0.9, 0.7), ref)


def test_policy_update_with_gae_lambda_one_matches_reward_to_go():
    """The rpg update with gae_lambda 1 takes the same step as the default (reward-to-go minus the baseline);
    lambda 0.5 takes a different one."""
    from rlhf.pomdp.agents import build_agent
    from rlhf.pomdp.train import PomdpConfig

    rng = np.random.default_rng(0)
    episodes = [Episode(rng.normal(size=(L, 2)).astype(np.float32), rng.normal(size=(L, 2)).astype(np.float32),
                        rng.integers(0, 2, L), np.ones(L, np.float32), L < 9, None) for L in (9, 5, 3)]
    after = {}
    for lam in (None, 1.0, 0.5):
        torch.manual_seed(0)
        cfg = load_config(PomdpConfig, overrides={"agent": "rpg", "hidden_size": "8", "gamma": "0.9",
                                                  "gae_lambda": "null" if lam is None else str(lam)})
        agent = build_agent("rpg", 2, 2, cfg, np.random.default_rng(0))
        agent.update(episodes)
        after[lam] = torch.cat([p.detach().flatten() for p in agent.net.parameters()])
    torch.testing.assert_close(after[1.0], after[None], rtol=0, atol=1e-6)
    assert (after[0.5] - after[None]).abs().max() > 1e-4
    with pytest.raises(ConfigError, match="gae_lambda"):
        load_config(PomdpConfig, overrides={"gae_lambda": "1.5"})


def test_policy_update_bootstraps_truncated_episodes():
    """bootstrap_truncated: an episode cut by the time limit ends with gamma V(o_L) added to its last reward (V
    from the baseline on the history up to the observation after the end); terminated episodes are unchanged."""
    from rlhf.pomdp.agents import build_agent
    from rlhf.pomdp.train import PomdpConfig

    rng = np.random.default_rng(1)

    def episode(L, terminated):
        return Episode(rng.normal(size=(L, 2)).astype(np.float32), rng.normal(size=(L, 2)).astype(np.float32),
                       rng.integers(0, 2, L), np.ones(L, np.float32), terminated, None)

    def run(episodes, bootstrap):
        torch.manual_seed(0)
        cfg = load_config(PomdpConfig, overrides={"agent": "rpg", "hidden_size": "8", "gamma": "0.5",
                                                  "bootstrap_truncated": str(bootstrap).lower()})
        agent = build_agent("rpg", 2, 2, cfg, np.random.default_rng(0))
        return agent, agent.update(episodes)

    ended = [episode(4, True), episode(2, True)]
    a, stats = run(ended, False)
    b, stats_b = run(ended, True)  # nothing was cut: the same step
    assert stats_b["policy/value_loss"] == pytest.approx(stats["policy/value_loss"], rel=1e-6)
    for p, q in zip(a.net.parameters(), b.net.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)

    mixed = [episode(3, False), episode(2, True)]
    torch.manual_seed(0)
    cfg = load_config(PomdpConfig, overrides={"agent": "rpg", "hidden_size": "8", "gamma": "0.5"})
    fresh = build_agent("rpg", 2, 2, cfg, np.random.default_rng(0))  # the same initial weights as run()'s
    with torch.no_grad():
        e = mixed[0]
        obs = torch.from_numpy(np.concatenate([e.obs, e.next_obs[-1:]]))[None]  # [1, 4, 2]: o_0 .. o_3
        prev = torch.tensor([[-1, *e.actions]])
        _, v0, _ = fresh.net(fresh.net.obs_norm(obs), prev)  # [1, 4]
        _, v1, _ = fresh.net(fresh.net.obs_norm(torch.from_numpy(mixed[1].obs)[None]),
                             torch.tensor([[-1, mixed[1].actions[0]]]))
    g3 = v0[0, 3].item()
    returns0 = [1 + 0.5 * (1 + 0.5 * (1 + 0.5 * g3)), 1 + 0.5 * (1 + 0.5 * g3), 1 + 0.5 * g3]
    returns1 = [1.5, 1.0]
    scale = max(1.0, float(np.mean(np.abs(returns0 + returns1))))
    expected = np.mean([((v - r) / scale) ** 2 for v, r in zip(v0[0, :3].tolist() + v1[0].tolist(),
                                                              returns0 + returns1)])
    _, stats = run(mixed, True)
    assert stats["policy/value_loss"] == pytest.approx(expected, rel=1e-5)
    _, stats_off = run(mixed, False)
    assert abs(stats_off["policy/value_loss"] - expected) > 1e-3


def test_n_step_td_targets_by_hand():
    r = torch.tensor([[1.0, 2.0, 3.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    v = torch.tensor([[10.0, 20.0, 30.0, 40.0], [10.0, 20.0, 30.0, 40.0]])  # V(o_{t+1})
    d = torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0]])  # row 0 terminates at t = 2; row 1 is cut at t = 1
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    one = n_step_td_targets(r, v, d, m, gamma=0.5, n=1)
    torch.testing.assert_close(one, torch.tensor([[1 + 5.0, 2 + 10.0, 3.0, 0.0], [6.0, 11.0, 0.0, 0.0]]))
    two = n_step_td_targets(r, v, d, m, gamma=0.5, n=2)
    # t=0: 1 + 0.5*2 + 0.25*V_1(=20); t=1: 2 + 0.5*3, terminal; row 1 t=0: 1 + 0.5*1 + 0.25*20
    torch.testing.assert_close(two, torch.tensor([[7.0, 3.5, 3.0, 0.0], [6.5, 11.0, 0.0, 0.0]]))
    many = n_step_td_targets(r, v, d, m, gamma=0.5, n=10)  # Monte Carlo up to the terminal state
    torch.testing.assert_close(many[0, :3], discounted_reward_to_go(r, m, 0.5)[0, :3])
    with pytest.raises(ValueError):
        n_step_td_targets(r, v, d, m, 0.5, n=0)


def test_double_q_values_by_hand():
    # the online net picks the action, the target net's value of it is returned (not the target's own max)
    online = torch.tensor([[[1.0, 3.0, 2.0], [5.0, 0.0, 4.0]], [[0.0, 0.0, -1.0], [2.0, 2.5, 7.0]]])  # [2, 2, 3]
    target = torch.tensor([[[9.0, -1.0, 4.0], [0.5, 8.0, 6.0]], [[3.0, 6.0, 1.0], [-2.0, 0.0, -3.0]]])
    # picks: 1, 0 / 0 (tie with 1 -> lowest index), 2
    torch.testing.assert_close(double_q_values(online, target), torch.tensor([[-1.0, 0.5], [3.0, -3.0]]))
    torch.testing.assert_close(double_q_values(online[0, 0], target[0, 0]), torch.tensor(-1.0))  # [A] -> []
    # equal networks: the ordinary max
    torch.testing.assert_close(double_q_values(target, target), target.max(-1).values)


def test_gaussian_pieces_by_hand():
    z = torch.zeros(1, 2)
    assert diagonal_gaussian_kl(z, z, z, z).item() == 0.0
    # KL(N(1, 1) || N(0, 1)) = 0.5 per dimension
    assert diagonal_gaussian_kl(torch.ones(1, 2), z, z, z).item() == pytest.approx(1.0)
    # KL(N(0, e) || N(0, 1)) = 0.5 (e - 1 - 1)
    assert diagonal_gaussian_kl(z[:, :1], torch.ones(1, 1), z[:, :1], z[:, :1]).item() == \
        pytest.approx(0.5 * (math.e - 2))
    # KL(N(0, 1) || N(2, e^2)) = 0.5 (2 - 0 + (1 + 4) / e^2 - 1)
    kl = diagonal_gaussian_kl(torch.zeros(1), torch.zeros(1), torch.tensor([2.0]), torch.tensor([2.0]))
    assert kl.item() == pytest.approx(0.5 * (2 + 5 / math.e**2 - 1))
    lp = diagonal_gaussian_log_prob(torch.tensor([1.0, 0.0]), torch.zeros(2), torch.tensor([0.0, math.log(4.0)]))
    assert lp.item() == pytest.approx(-0.5 * (math.log(2 * math.pi) + 1) - 0.5 * (math.log(2 * math.pi) + math.log(4)))
    elbo = sequence_elbo(torch.tensor([[1.0, 2.0, 100.0]]), torch.tensor([[0.5, 1.0, 100.0]]),
                         torch.tensor([[1, 1, 0]]), beta=2.0)
    assert elbo.item() == pytest.approx(((1 - 1.0) + (2 - 2.0)) / 2)


# ------------------------------------------------------------------------------------------ replay


def _episode(start: float, length: int, terminated: bool, hidden_dim: int = 0) -> Episode:
    obs = (start + np.arange(length, dtype=np.float32))[:, None]  # o_t = start + t
    return Episode(obs=obs, next_obs=obs + 1, actions=np.arange(length) % 2,
                   rewards=np.ones(length, np.float32), terminated=terminated,
                   hidden=np.full((length, hidden_dim), start, np.float32) if hidden_dim else None)


def test_window_sampling_zero_pads_at_episode_start():
    replay = SequenceReplay(100, obs_dim=1)
    replay.add(_episode(1.0, 3, terminated=True))  # o = 1, 2, 3 (final 4)
    batch = replay.sample_windows(200, k=3, rng=np.random.default_rng(0))
    rows = {tuple(o[:, 0].tolist()): n[:, 0].tolist() for o, n in zip(batch["obs"], batch["next_obs"])}
    assert rows == {(0.0, 0.0, 1.0): [0.0, 1.0, 2.0], (0.0, 1.0, 2.0): [1.0, 2.0, 3.0],
                    (1.0, 2.0, 3.0): [2.0, 3.0, 4.0]}
    last = batch["obs"][:, -1, 0] == 3.0
    assert batch["terminated"][last].eq(1).all() and batch["terminated"][~last].eq(0).all()


def test_sequence_sampling_masks_burn_in_and_episode_ends():
    replay = SequenceReplay(100, obs_dim=1, hidden_dim=2)
    replay.add(_episode(0.0, 10, terminated=False, hidden_dim=2))   # o = 0..9, truncated: final obs 10
    replay.add(_episode(100.0, 4, terminated=True, hidden_dim=2))   # o = 100..103
    b = replay.sample_sequences(300, length=3, burn_in=2, rng=np.random.default_rng(0))
    S = 5
    assert b["obs"].shape == (300, S + 1, 1) and b["train"].shape == (300, S)
    for i in range(300):
        obs, valid, train, burn = b["obs"][i, :, 0], b["valid"][i], b["train"][i], b["burn"][i]
        first = obs[0].item()
        episode_start, last_obs = (0.0, 9.0) if first < 100 else (100.0, 103.0)
        n_valid = int(valid.sum())
        # each row starts inside one episode and runs on in order while the episode lasts
        torch.testing.assert_close(obs[:n_valid], first + torch.arange(n_valid, dtype=torch.float32))
        assert obs[:n_valid][-1].item() == min(first + S - 1, last_obs)
        assert valid[:n_valid].all() and not valid[n_valid:].any()
        if n_valid < S or first + S - 1 == last_obs:  # the input after the last step is the final observation
            assert obs[n_valid].item() == last_obs + 1
        # burn-in: up to 2 steps before the training start, fewer only at the episode start
        n_burn = int(burn.sum())
        assert n_burn == 2 or (first == episode_start and n_burn < 2)
        assert burn[:n_burn].all() and train[n_burn:n_valid].all() and not train[:n_burn].any()
        assert bool(b["episode_start"][i]) == (first == episode_start)
        assert b["hidden"][i].tolist() == [episode_start] * 2  # the stored state of the row's first step
        prev = -1 if first == episode_start else (int(first) - 1 - int(episode_start)) % 2  # actions are t % 2
        assert b["prev_actions"][i, 0].item() == prev
    # terminal flag only on the terminal step of the terminated episode
    term_obs = b["obs"][:, :S, 0][b["terminated"].bool()]
    assert term_obs.numel() > 0 and (term_obs == 103.0).all()


def test_replay_overwrite_invalidates_whole_episode():
    replay = SequenceReplay(8, obs_dim=1)
    replay.add(_episode(0.0, 5, terminated=True))
    replay.add(_episode(10.0, 5, terminated=True))  # wraps around and overwrites the first episode's start
    assert len(replay) == 5
    b = replay.sample_sequences(50, length=4, burn_in=0, rng=np.random.default_rng(0))
    assert (b["obs"][:, 0, 0] >= 10).all()


# ------------------------------------------------------------------------------------ models, CLI


def test_two_door_model_comparison():
    from rlhf.pomdp.models import two_door_comparison

    out = two_door_comparison(seed=0, train_episodes=300, test_episodes=300, steps=120, lr=1e-2)
    assert out["retry"]["actual"] == 0.0 and out["switch"]["actual"] == 1.0
    assert out["retry"]["one_step"] == pytest.approx(0.5, abs=0.1)  # cannot tell which door failed
    assert out["switch"]["one_step"] == pytest.approx(0.5, abs=0.1)
    assert out["retry"]["history"] < 0.1 and out["switch"]["history"] > 0.9


def test_configs_parse():
    from rlhf.pomdp.train import PomdpConfig

    files = sorted((ROOT / "configs" / "pomdp").glob("*.yaml"))
    assert files
    for f in files:
        load_config(PomdpConfig, f)
    with pytest.raises(ConfigError, match="unknown key 'windw'.*did you mean 'window'"):
        load_config(PomdpConfig, overrides={"windw": "3"})
    with pytest.raises(ConfigError, match="'agent'"):
        load_config(PomdpConfig, overrides={"agent": "ppo"})
    assert load_config(PomdpConfig, overrides={"final_eval_episodes": "0"}).final_eval_episodes == 0  # no final eval
    with pytest.raises(ConfigError, match="key 'final_eval_episodes'.*must be >= 0, got -1"):
        load_config(PomdpConfig, overrides={"final_eval_episodes": "-1"})


def test_evaluation_counts_a_fixed_quota_per_environment(monkeypatch):
    """Environments with even reset seeds run episodes of 10 steps, odd ones of 1 step (reward 1 a step). Of 4
    episodes on 4 environments the evaluation must count one per environment (mean return 5.5); counting the
    first 4 to finish would count only 1-step episodes (mean 1)."""
    import gymnasium as gym

    from rlhf.pomdp import train as pomdp_train

    class SeedLength(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            if seed is not None:
                self.length = 10 if seed % 2 == 0 else 1
            self.t = 0
            return np.zeros(1, np.float32), {}

        def step(self, action):
            self.t += 1
            return np.zeros(1, np.float32), 1.0, self.t >= self.length, False, {}

    class Stub:
        def initial_state(self, n):
            return {}

        def act(self, obs, state, epsilon=0.0):
            return np.zeros(len(obs), int), state

        def reset_state(self, state, done):
            return state

    monkeypatch.setattr(pomdp_train, "make_env", lambda name, **kw: SeedLength())
    cfg = pomdp_train.PomdpConfig(agent="dqn")
    out = pomdp_train.evaluate_agent(Stub(), cfg, episodes=4, seed=0)
    assert out["episodes"] == 4 and out["return_mean"] == pytest.approx(5.5)
    out = pomdp_train.evaluate_agent(Stub(), cfg, episodes=6, seed=0)  # quotas 2, 2, 1, 1
    assert out["return_mean"] == pytest.approx((10 + 10 + 1 + 1 + 10 + 1) / 6)


def test_results_rows_name_shipped_configs_on_disjoint_seeds():
    """Every row of benchmarks/pomdp_results.py is a shipped YAML; a config listed twice never shares a seed
    between its rows; every row runs on the report seeds, none a selection seed (0-5, where the configs were
    chosen); flickering CartPole blanks w.p. 0.5 as the table says."""
    import importlib.util

    from rlhf.pomdp.train import PomdpConfig

    spec = importlib.util.spec_from_file_location("pomdp_results", ROOT / "benchmarks" / "pomdp_results.py")
    results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results)
    seen: dict[str, set] = {}
    for group, rows in results.ROWS.items():
        for name, seeds, _ in rows:
            cfg = load_config(PomdpConfig, ROOT / "configs" / "pomdp" / f"train_{name}.yaml")
            assert name.startswith(group.split("_")[0]), (group, name)
            if group == "flicker_cartpole":
                assert (cfg.env, cfg.p_blank) == ("flicker-cartpole", 0.5)
            assert not seen.setdefault(name, set()) & set(seeds), name
            seen[name] |= set(seeds)
    assert seen["masked_cartpole_drqn"] == {100, 101, 102}
    assert not set().union(*seen.values()) & set(range(6))


def test_learning_rate_decays_linearly_to_lr_end():
    from rlhf.pomdp.train import PomdpConfig, learning_rate_at

    cfg = PomdpConfig(learning_rate=1e-3, lr_end=1e-4, total_steps=200)
    assert [learning_rate_at(cfg, s) for s in (0, 50, 200, 400)] == pytest.approx([1e-3, 7.75e-4, 1e-4, 1e-4])
    assert learning_rate_at(PomdpConfig(learning_rate=1e-3, total_steps=200), 150) == 1e-3  # lr_end null


def test_best_checkpoint_is_the_best_periodic_evaluation(tmp_path, monkeypatch):
    """Scripted periodic evaluations 1, 7, 3, 7, 2 (the final ones on fresh episodes return 0): best.pt holds the
    network as it was at the second evaluation (the first of the tied best), agent.pt the last one; with
    stop_at_return 7 training ends at the second evaluation; the learning rate reached the optimizer."""
    from rlhf.pomdp import train as pomdp_train

    scripted, seen = [1.0, 7.0, 3.0, 7.0, 2.0], []

    def fake_evaluate(agent, cfg, episodes, seed, greedy_policy=False):
        periodic = seed < 99_999  # the final evaluations use seed 99_999 + cfg.seed
        if periodic:
            seen.append({k: v.clone() for k, v in agent.net.state_dict().items()})
            lrs.append(agent.optimizer.param_groups[0]["lr"])
        value = scripted[len(seen) - 1] if periodic else 0.0
        return {"return_mean": value, "return_std": 0.0, "length_mean": 1.0, "episodes": episodes}

    monkeypatch.setattr(pomdp_train, "evaluate_agent", fake_evaluate)
    base = dict(env="tmaze", corridor_length=2, agent="drqn", total_steps=400, num_envs=4, learning_starts=16,
                batch_size=4, seq_len=4, hidden_size=8, eval_every=80, eval_episodes=2, final_eval_episodes=2,
                train_every=2, learning_rate=1e-2, lr_end=1e-3, report_to="none")
    for stop, n_evals in ((None, 5), (7.0, 2)):
        seen.clear()
        lrs = []
        out = tmp_path / f"stop{stop}"
        metrics = pomdp_train.train(pomdp_train.PomdpConfig(**base, stop_at_return=stop, output_dir=str(out)))
        assert [h["return_mean"] for h in metrics["eval_history"]] == scripted[:n_evals]
        assert metrics["best_periodic"]["step"] == 160 and metrics["best_periodic"]["return_mean"] == 7.0
        best, final = torch.load(out / "best.pt"), torch.load(out / "agent.pt")
        for k in seen[1]:
            torch.testing.assert_close(best[k], seen[1][k], rtol=0, atol=0)
            torch.testing.assert_close(final[k], seen[-1][k], rtol=0, atol=0)
        w = "core.lstm.weight_hh_l0"
        assert not torch.equal(seen[0][w], seen[1][w])  # the network moved between evaluations
        assert torch.equal(seen[1][w], seen[-1][w]) == (stop is not None)  # it stopped at the second
        # lr at the first evaluation: set for the updates after the step that brought the count to 80 of 400
        assert lrs[0] == pytest.approx(1e-2 + 80 / 400 * (1e-3 - 1e-2))
    assert metrics["reached_stop_at"]["step"] == 160 and metrics["env_steps"] == 160


@pytest.mark.parametrize("agent,extra", [
    ("drqn", ["--hidden_init", "stored", "--burn_in", "2", "--n_step", "2"]),
    ("vae", []),
    ("dqn-window", []),
    ("rpg", []),
    ("rpg", ["--gae_lambda", "0.9", "--lr_end", "1e-4"]),
])
def test_cli_train_and_evaluate_smoke(tmp_path, agent, extra):
    from rlhf.cli import main

    out = tmp_path / agent
    args = ["pomdp", "train", "--env", "tmaze", "--corridor_length", "2", "--agent", agent, "--total_steps", "320",
            "--num_envs", "4", "--learning_starts", "64", "--batch_size", "8", "--seq_len", "4", "--eval_every",
            "160", "--eval_episodes", "4", "--final_eval_episodes", "4", "--log_every", "80", "--hidden_size", "16",
            "--output_dir", str(out), *extra]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["env_steps"] == 320 and metrics["updates"] > 0 and len(metrics["eval_history"]) == 2
    final = metrics["final_eval"]
    # every T-maze step costs 0.01 and a success adds 1, so the success rate is fixed by the mean return and
    # length, and over 4 episodes it is a multiple of 1/4
    assert final["episodes"] == 4 and final["success_rate"] * 4 == pytest.approx(round(final["success_rate"] * 4))
    assert final["success_rate"] == pytest.approx(final["return_mean"] + 0.01 * final["length_mean"], abs=1e-6)
    assert (out / "agent.pt").is_file() and (out / "best.pt").is_file()
    assert main(["pomdp", "evaluate", "--output_dir", str(out), "--final_eval_episodes", "3"]) == 0
    assert json.loads((out / "eval.json").read_text())["episodes"] == 3
    assert main(args) == 2  # the run exists: refused without --overwrite
