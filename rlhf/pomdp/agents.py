"""Agents for partially observable environments, from memoryless to history-conditioned.

    dqn          DQN on the current observation (memoryless)
    dqn-window   DQN on a window of the last k observations (zero-padded at the episode start)
    drqn         DRQN: encoder -> LSTM -> Q, trained on sampled sub-sequences (Hausknecht & Stone, 2015), hidden
                 state zeroed or stored at acting time, optional burn-in (R2D2, Kapturowski et al., 2019)
    vae          sequence-VAE latent state: LSTM over the history -> q(z_t | h_t), learned prior
                 p(z_t | z_{t-1}, a_{t-1}), decoder of (o_t, o_{t+1}, r_t) from (z_t, a_t), trained on the ELBO;
                 Q learned on z_t
    pg           REINFORCE with reward-to-go and an observation-conditioned baseline (memoryless)
    rpg          recurrent REINFORCE: LSTM policy, reward-to-go, history-conditioned (LSTM) baseline

Value-based agents share `SequenceReplay` (complete episodes in a ring of steps); their updates run whole
windows or sub-sequences through the networks in one call (no Python loop over time). Recurrent networks take
(o_t, one-hot a_{t-1}) at each step and start every episode from a zero hidden state.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rlhf.losses import (diagonal_gaussian_kl, diagonal_gaussian_log_prob, discounted_reward_to_go,
                         double_q_values, lambda_advantages, masked_mean, n_step_td_targets, sequence_elbo, whiten)

VALUE_AGENTS = ("dqn", "dqn-window", "drqn", "vae")
POLICY_AGENTS = ("pg", "rpg")
AGENTS = VALUE_AGENTS + POLICY_AGENTS


# ------------------------------------------------------------------------------------------- replay


@dataclasses.dataclass
class Episode:
    """One finished episode of length L: obs [L, D] (o_0..o_{L-1}), next_obs [L, D] (o_1..o_L, the last one the
    final observation), actions, rewards [L], terminated (the last step ended in a terminal state), and the
    recurrent state before each step [L, H] (or None)."""

    obs: np.ndarray
    next_obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    hidden: np.ndarray | None = None


class SequenceReplay:
    """A ring of `capacity` steps holding whole episodes contiguously (modulo wrap-around).

    An episode whose beginning is overwritten is invalidated as a whole, so every valid step can reach back to
    its episode's first step.
    """

    def __init__(self, capacity: int, obs_dim: int, hidden_dim: int = 0):
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros(capacity, np.int64)
        self.prev_actions = np.full(capacity, -1, np.int64)  # -1 at an episode's first step
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.last = np.zeros(capacity, bool)  # the episode's last step
        self.t_in_episode = np.zeros(capacity, np.int64)
        self.episode_id = np.full(capacity, -1, np.int64)
        self.valid = np.zeros(capacity, bool)
        self.hidden = np.zeros((capacity, hidden_dim), np.float32) if hidden_dim else None
        self.cursor, self.n_episodes = 0, 0

    def __len__(self) -> int:
        return int(self.valid.sum())

    def add(self, ep: Episode) -> None:
        L = len(ep.actions)
        if L > self.capacity:
            raise ValueError(f"episode of {L} steps does not fit a replay of {self.capacity}")
        idx = (self.cursor + np.arange(L)) % self.capacity
        for old in np.unique(self.episode_id[idx]):
            if old >= 0:
                self.valid[self.episode_id == old] = False
        self.obs[idx], self.next_obs[idx] = ep.obs, ep.next_obs
        self.actions[idx], self.rewards[idx] = ep.actions, ep.rewards
        self.prev_actions[idx] = np.concatenate([[-1], ep.actions[:-1]])
        self.terminated[idx] = 0.0
        self.terminated[idx[-1]] = float(ep.terminated)
        self.last[idx] = False
        self.last[idx[-1]] = True
        self.t_in_episode[idx] = np.arange(L)
        self.episode_id[idx] = self.n_episodes
        self.valid[idx] = True
        if self.hidden is not None and ep.hidden is not None:
            self.hidden[idx] = ep.hidden
        self.cursor = int((self.cursor + L) % self.capacity)
        self.n_episodes += 1

    def sample_windows(self, batch: int, k: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Transitions with windows of the last k observations: obs [B, k, D] and next_obs [B, k, D], zeros
        before the episode start; actions, rewards, terminated [B]."""
        i = rng.choice(np.flatnonzero(self.valid), size=batch)  # [B]
        offsets = np.arange(-k + 1, 1)  # [k]
        j = (i[:, None] + offsets[None, :]) % self.capacity  # [B, k]
        inside = (-offsets[None, :] <= self.t_in_episode[i][:, None])  # [B, k]: step t - (k-1-m) exists
        seq = np.concatenate([self.obs[j], self.next_obs[i][:, None]], axis=1) * \
            np.concatenate([inside, np.ones((batch, 1), bool)], axis=1)[..., None]  # [B, k + 1, D]
        return {"obs": torch.from_numpy(seq[:, :-1]), "next_obs": torch.from_numpy(seq[:, 1:]),
                "actions": torch.from_numpy(self.actions[i]), "rewards": torch.from_numpy(self.rewards[i]),
                "terminated": torch.from_numpy(self.terminated[i])}

    def sample_sequences(self, batch: int, length: int, burn_in: int, rng: np.random.Generator) -> dict:
        """Sub-sequences for recurrent updates, each within one episode.

        A training start s is drawn uniformly over valid steps; the row begins at a = max(s - burn_in, episode
        start) and holds S = burn_in + length steps from a, plus one extra input: row position p holds step
        a + p while it is in the episode and, one past the episode's last step, its final observation (the
        bootstrap input after a truncation). Returns tensors:
            obs [B, S + 1, D], prev_actions [B, S + 1] (-1: none), actions, rewards, terminated [B, S],
            valid [B, S] (step inside the episode), train [B, S] (valid and at or after s: the loss mask),
            burn [B, S] (valid and before s), episode_start [B] (row starts at the episode's first step),
            hidden [B, H] (stored state before step a, if stored).
        """
        S = burn_in + length
        s = rng.choice(np.flatnonzero(self.valid), size=batch)  # [B]
        back = np.minimum(burn_in, self.t_in_episode[s])  # [B]
        a = (s - back) % self.capacity
        pos = np.arange(S + 1)  # [S + 1]
        j = (a[:, None] + pos[None, :]) % self.capacity  # [B, S + 1]
        # steps stay in the episode until (and including) its last step
        ended_before = np.cumsum(self.last[j], axis=1) - self.last[j]  # [B, S + 1]: last steps strictly before p
        in_ep = (ended_before == 0) & (self.episode_id[j] == self.episode_id[a][:, None]) & self.valid[j]
        prev_j = (j - 1) % self.capacity
        after_last = np.concatenate([np.zeros((batch, 1), bool), in_ep[:, :-1] & ~in_ep[:, 1:]], axis=1)
        obs = np.where(in_ep[..., None], self.obs[j], 0.0)
        obs = np.where(after_last[..., None], self.next_obs[prev_j], obs).astype(np.float32)
        prev_actions = np.where(in_ep, self.prev_actions[j], np.where(after_last, self.actions[prev_j], -1))
        valid = in_ep[:, :S]
        train = valid & (pos[None, :S] >= back[:, None])
        out = {"obs": obs, "prev_actions": prev_actions, "actions": np.where(valid, self.actions[j[:, :S]], 0),
               "rewards": np.where(valid, self.rewards[j[:, :S]], 0.0).astype(np.float32),
               "terminated": np.where(valid, self.terminated[j[:, :S]], 0.0).astype(np.float32),
               "valid": valid, "train": train, "burn": valid & ~train,
               "episode_start": self.t_in_episode[a] == 0}
        if self.hidden is not None:
            out["hidden"] = self.hidden[a]
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


# ------------------------------------------------------------------------------------------ networks


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))


class RunningNorm(nn.Module):
    """Observation normalisation by running mean and variance (as SB3's VecNormalize), kept in buffers so that it
    is saved with the network. Updated only from observations met while training; identity until then."""

    def __init__(self, dim: int, clip: float = 10.0):
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """x [N, D]: Chan et al.'s parallel update of the mean and variance."""
        x = x.double()
        n, mean, var = x.shape[0], x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = mean - self.mean
        self.var.copy_((self.var * self.count + var * n + delta**2 * self.count * n / total) / total)
        self.mean.add_(delta * n / total)
        self.count.fill_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean.float()) * torch.rsqrt(self.var.float() + 1e-8)).clamp(-self.clip, self.clip)


def one_hot_prev(prev_actions: torch.Tensor, n_actions: int) -> torch.Tensor:
    """prev_actions [...] with -1 for none -> one-hot [..., A] (zeros for none)."""
    return F.one_hot(prev_actions.clamp(min=0), n_actions).float() * (prev_actions >= 0).unsqueeze(-1).float()


class RecurrentCore(nn.Module):
    """(o_t, one-hot a_{t-1}) -> Linear+ReLU -> LSTM -> h_t. Hidden state is a (h, c) pair of [1, B, H] or the
    two concatenated as a flat [B, 2H] array for storage."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int):
        super().__init__()
        self.n_actions, self.hidden_size = n_actions, hidden
        self.embed = nn.Sequential(nn.Linear(obs_dim + n_actions, hidden), nn.ReLU())
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        with torch.no_grad():  # forget-gate bias 1 (Jozefowicz et al., 2015): remember by default at the start
            for name in ("bias_ih_l0", "bias_hh_l0"):
                getattr(self.lstm, name)[hidden:2 * hidden].fill_(0.5)

    def forward(self, obs: torch.Tensor, prev_actions: torch.Tensor, state=None):
        """obs [B, T, D], prev_actions [B, T] -> features [B, T, H], final (h, c)."""
        x = self.embed(torch.cat([obs, one_hot_prev(prev_actions, self.n_actions)], dim=-1))
        return self.lstm(x, state)

    def zero_state(self, batch: int):
        z = torch.zeros(1, batch, self.hidden_size)
        return (z, z.clone())

    @staticmethod
    def flat(state) -> torch.Tensor:
        return torch.cat([state[0][0], state[1][0]], dim=-1)  # [B, 2H]

    def unflat(self, flat: torch.Tensor):
        h, c = flat.split(self.hidden_size, dim=-1)
        return (h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous())


class WindowQNet(nn.Module):
    """Q on a flattened window of observations [B, k * D] -> [B, A] (k = 1: the current observation)."""

    def __init__(self, n_in: int, hidden: int, n_actions: int):
        super().__init__()
        self.body = mlp(n_in, hidden, n_actions)

    def forward(self, x):
        return self.body(x)


class DRQNet(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden: int):
        super().__init__()
        self.core = RecurrentCore(obs_dim, n_actions, hidden)
        self.head = nn.Linear(hidden, n_actions)

    def forward(self, obs, prev_actions, state=None):
        """obs [B, T, D] -> Q [B, T, A], final state."""
        feats, state = self.core(obs, prev_actions, state)
        return self.head(feats), state


class SequenceVAEQ(nn.Module):
    """Latent-state model with a Q head on z_t.

    q(z_t | h_t), h_t = LSTM(o_<=t, a_<t); prior p(z_t | z_{t-1}, a_{t-1}) (N(0, I) at an episode's first
    step); decoder p(o_t, o_{t+1}, r_t | z_t, a_t), Gaussian with a learned per-dimension variance.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden: int, latent: int, q_grad: bool):
        super().__init__()
        self.n_actions, self.latent, self.q_grad = n_actions, latent, q_grad
        self.core = RecurrentCore(obs_dim, n_actions, hidden)
        self.posterior = nn.Linear(hidden, 2 * latent)
        self.prior = mlp(latent + n_actions, hidden, 2 * latent)
        self.decoder = mlp(latent + n_actions, hidden, 2 * obs_dim + 1)
        self.decoder_logvar = nn.Parameter(torch.zeros(2 * obs_dim + 1))
        self.q = mlp(latent, hidden, n_actions)

    def encode(self, obs, prev_actions, state=None):
        """-> posterior mean and log-variance [B, T, Z] each, final state."""
        feats, state = self.core(obs, prev_actions, state)
        mu, logvar = self.posterior(feats).chunk(2, dim=-1)
        return mu, logvar.clamp(-8.0, 4.0), state

    def forward(self, obs, prev_actions, state=None):
        """Q [B, T, A] on the posterior mean (detached unless q_grad), final state."""
        mu, _, state = self.encode(obs, prev_actions, state)
        return self.q(mu if self.q_grad else mu.detach()), state

    def elbo(self, obs, prev_actions, actions, rewards, mask, first_is_start, beta: float):
        """obs [B, S + 1, D] (position S is the input after the last step), prev_actions [B, S + 1], actions,
        rewards, mask [B, S]; first_is_start [B]. Returns (ELBO per step, stats)."""
        S = actions.shape[1]
        mu, logvar, _ = self.encode(obs, prev_actions)
        mu, logvar = mu[:, :S], logvar[:, :S]  # [B, S, Z]
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        # prior: from z_{t-1} and a_{t-1} within the row; N(0, I) at row position 0
        prior_in = torch.cat([z[:, :-1], one_hot_prev(prev_actions[:, 1:S], self.n_actions)], dim=-1)
        p_mu, p_logvar = self.prior(prior_in).chunk(2, dim=-1)  # [B, S - 1, Z]
        p_mu = torch.cat([torch.zeros_like(mu[:, :1]), p_mu], dim=1)
        p_logvar = torch.cat([torch.zeros_like(mu[:, :1]), p_logvar.clamp(-8.0, 4.0)], dim=1)
        kl = diagonal_gaussian_kl(mu, logvar, p_mu, p_logvar)  # [B, S]
        target = torch.cat([obs[:, :S], obs[:, 1:S + 1], rewards.unsqueeze(-1)], dim=-1)  # [B, S, 2D + 1]
        pred = self.decoder(torch.cat([z, F.one_hot(actions, self.n_actions).float()], dim=-1))
        log_lik = diagonal_gaussian_log_prob(target, pred, self.decoder_logvar.clamp(-10.0, 4.0).expand_as(pred))
        # position 0 has a known prior only at an episode's first step
        elbo_mask = mask.clone()
        elbo_mask[:, 0] &= first_is_start
        elbo = sequence_elbo(log_lik, kl, elbo_mask, beta)
        return elbo, {"vae/elbo": elbo.item(), "vae/kl": masked_mean(kl, elbo_mask).item(),
                      "vae/log_lik": masked_mean(log_lik, elbo_mask).item()}


# -------------------------------------------------------------------------------------- value agents


class ValueAgent:
    """Q-learning agents (dqn, dqn-window, drqn, vae): epsilon-greedy acting on N environments at once,
    replay of whole episodes, double-DQN n-step targets, a Polyak-averaged target network."""

    def __init__(self, kind: str, obs_dim: int, n_actions: int, cfg, rng: np.random.Generator):
        self.kind, self.obs_dim, self.n_actions, self.cfg, self.rng = kind, obs_dim, n_actions, cfg, rng
        self.recurrent = kind in ("drqn", "vae")
        self.window = cfg.window if kind == "dqn-window" else 1
        if kind in ("dqn", "dqn-window"):
            self.net = WindowQNet(obs_dim * self.window, cfg.hidden_size, n_actions)
        elif kind == "drqn":
            self.net = DRQNet(obs_dim, n_actions, cfg.hidden_size)
        else:
            self.net = SequenceVAEQ(obs_dim, n_actions, cfg.hidden_size, cfg.latent_size, cfg.vae_q_grad)
        self.net.obs_norm = RunningNorm(obs_dim)  # a submodule, so saved with the weights
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate)
        stored = self.recurrent and cfg.hidden_init == "stored"
        self.replay = SequenceReplay(cfg.buffer_size, obs_dim, 2 * cfg.hidden_size if stored else 0)
        self.updates = 0

    # acting ------------------------------------------------------------------------------------------
    def initial_state(self, n: int) -> dict:
        if self.recurrent:
            return {"rnn": self.net.core.zero_state(n), "prev": torch.full((n,), -1, dtype=torch.long)}
        return {"window": torch.zeros(n, self.window, self.obs_dim)}

    def reset_state(self, state: dict, done: np.ndarray) -> dict:
        """Start afresh in the environments that just finished an episode."""
        d = torch.from_numpy(done)
        if self.recurrent:
            keep = (~d).float().view(1, -1, 1)
            state = {"rnn": (state["rnn"][0] * keep, state["rnn"][1] * keep),
                     "prev": torch.where(d, -1, state["prev"])}
        else:
            state = {"window": state["window"] * (~d).float().view(-1, 1, 1)}
        return state

    def stored_hidden(self, state: dict) -> np.ndarray | None:
        """The recurrent state before the coming step, [N, 2H], when the replay stores it."""
        return RecurrentCore.flat(state["rnn"]).numpy() if self.replay.hidden is not None else None

    @torch.no_grad()
    def act(self, obs: np.ndarray, state: dict, epsilon: float, learn: bool = False) -> tuple[np.ndarray, dict]:
        """obs [N, D] -> actions [N] (epsilon-greedy), the state after this step. `learn`: update the
        observation statistics (when normalising)."""
        o = torch.from_numpy(obs)
        if learn and self.cfg.normalize_obs:
            self.net.obs_norm.update(o)
        norm = self.net.obs_norm
        if self.recurrent:
            q, rnn = self.net(norm(o).unsqueeze(1), state["prev"].unsqueeze(1), state["rnn"])
            q = q[:, 0]
        else:
            window = torch.cat([state["window"][:, 1:], o.unsqueeze(1)], dim=1)  # raw; normalised below
            q = self.net(norm(window).flatten(1))
        actions = q.argmax(-1).numpy()
        explore = self.rng.random(len(actions)) < epsilon
        actions = np.where(explore, self.rng.integers(self.n_actions, size=len(actions)), actions)
        if self.recurrent:
            return actions, {"rnn": rnn, "prev": torch.from_numpy(actions)}
        return actions, {"window": window}

    # learning ----------------------------------------------------------------------------------------
    def update(self) -> dict:
        cfg = self.cfg
        if self.recurrent:
            loss, stats = self._sequence_loss()
        else:
            loss, stats = self._window_loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        self.optimizer.step()
        with torch.no_grad():  # Polyak-averaged target network
            for p, tp in zip(self.net.parameters(), self.target.parameters()):
                tp.lerp_(p, cfg.target_tau)
        self.updates += 1
        return {"train/loss": loss.item(), **stats}

    def _window_loss(self) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        b = self.replay.sample_windows(cfg.batch_size, self.window, self.rng)
        b["obs"], b["next_obs"] = self.net.obs_norm(b["obs"]), self.net.obs_norm(b["next_obs"])
        q = self.net(b["obs"].flatten(1)).gather(1, b["actions"].unsqueeze(1)).squeeze(1)  # [B]
        with torch.no_grad():  # double DQN: the online net picks, the target net values
            v_next = double_q_values(self.net(b["next_obs"].flatten(1)), self.target(b["next_obs"].flatten(1)))
            ones = torch.ones_like(v_next).unsqueeze(1)
            y = n_step_td_targets(b["rewards"].unsqueeze(1), v_next.unsqueeze(1), b["terminated"].unsqueeze(1),
                                  ones, cfg.gamma, 1).squeeze(1)
        loss = F.smooth_l1_loss(q, y)
        return loss, {"train/q": q.mean().item()}

    def _sequence_loss(self) -> tuple[torch.Tensor, dict]:
        """One pass of the online and target networks over whole sub-sequences [B, S + 1]."""
        cfg = self.cfg
        b = self.replay.sample_sequences(cfg.batch_size, cfg.seq_len, cfg.burn_in, self.rng)
        b["obs"] = self.net.obs_norm(b["obs"])
        B = b["obs"].shape[0]
        if cfg.hidden_init == "stored":
            state = self.net.core.unflat(b["hidden"])
        else:
            state = self.net.core.zero_state(B)
        # Burn-in steps (b["burn"]) warm the state up and take no loss (R2D2); unlike R2D2 the gradient still
        # flows through them, so that one LSTM call covers the whole row.
        q_all, _ = self.net(b["obs"], b["prev_actions"], state)  # [B, S + 1, A]
        with torch.no_grad():
            q_target_all, _ = self.target(b["obs"], b["prev_actions"], state)
            v_next = double_q_values(q_all[:, 1:], q_target_all[:, 1:])  # [B, S]
            y = n_step_td_targets(b["rewards"], v_next, b["terminated"], b["valid"], cfg.gamma, cfg.n_step)
        q = q_all[:, :-1].gather(2, b["actions"].unsqueeze(2)).squeeze(2)  # [B, S]
        td = F.smooth_l1_loss(q, y, reduction="none")
        loss = masked_mean(td, b["train"])
        stats = {"train/q": masked_mean(q, b["train"]).item()}
        if self.kind == "vae":
            elbo, vstats = self.net.elbo(b["obs"], b["prev_actions"], b["actions"], b["rewards"], b["valid"],
                                         b["episode_start"], cfg.vae_beta)
            loss = loss - cfg.vae_coef * elbo
            stats.update(vstats)
        return loss, stats


# -------------------------------------------------------------------------------------- policy agents


class PolicyNet(nn.Module):
    """Policy logits and a baseline, memoryless (MLP on o_t) or recurrent (two LSTMs on the history: one for the
    policy, one for the baseline, so the baseline's regression does not pull on the policy's features)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int, recurrent: bool):
        super().__init__()
        self.recurrent = recurrent
        if recurrent:
            self.pi_core = RecurrentCore(obs_dim, n_actions, hidden)
            self.v_core = RecurrentCore(obs_dim, n_actions, hidden)
            self.pi_head, self.v_head = nn.Linear(hidden, n_actions), nn.Linear(hidden, 1)
        else:
            self.pi, self.v = mlp(obs_dim, hidden, n_actions), mlp(obs_dim, hidden, 1)

    def forward(self, obs, prev_actions, state=None):
        """obs [B, T, D], prev_actions [B, T] -> logits [B, T, A], baseline [B, T], policy state."""
        if not self.recurrent:
            return self.pi(obs), self.v(obs).squeeze(-1), None
        feats, state = self.pi_core(obs, prev_actions, state)
        v_feats, _ = self.v_core(obs, prev_actions)
        return self.pi_head(feats), self.v_head(v_feats).squeeze(-1), state

    @torch.no_grad()
    def step(self, obs, prev_actions, state):
        """One acting step (policy only): obs [N, D] -> logits [N, A], state."""
        if not self.recurrent:
            return self.pi(obs), None
        feats, state = self.pi_core(obs.unsqueeze(1), prev_actions.unsqueeze(1), state)
        return self.pi_head(feats[:, 0]), state


class PolicyAgent:
    """REINFORCE with reward-to-go and a learned baseline; one update per batch of whole episodes."""

    def __init__(self, kind: str, obs_dim: int, n_actions: int, cfg, rng: np.random.Generator):
        self.kind, self.n_actions, self.cfg, self.rng = kind, n_actions, cfg, rng
        self.recurrent = kind == "rpg"
        self.net = PolicyNet(obs_dim, n_actions, cfg.hidden_size, self.recurrent)
        self.net.obs_norm = RunningNorm(obs_dim)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate)
        self.updates = 0

    def initial_state(self, n: int) -> dict:
        rnn = self.net.pi_core.zero_state(n) if self.recurrent else None
        return {"rnn": rnn, "prev": torch.full((n,), -1, dtype=torch.long)}

    def reset_state(self, state: dict, done: np.ndarray) -> dict:
        d = torch.from_numpy(done)
        rnn = state["rnn"]
        if rnn is not None:
            keep = (~d).float().view(1, -1, 1)
            rnn = (rnn[0] * keep, rnn[1] * keep)
        return {"rnn": rnn, "prev": torch.where(d, -1, state["prev"])}

    @torch.no_grad()
    def act(self, obs: np.ndarray, state: dict, greedy: bool = False, learn: bool = False):
        """Sample from the policy (its argmax when greedy): obs [N, D] -> actions [N], state. `learn`: update
        the observation statistics (when normalising)."""
        o = torch.from_numpy(obs)
        if learn and self.cfg.normalize_obs:
            self.net.obs_norm.update(o)
        logits, rnn = self.net.step(self.net.obs_norm(o), state["prev"], state["rnn"])
        if greedy:
            actions = logits.argmax(-1)
        else:
            g = torch.from_numpy(self.rng.gumbel(size=logits.shape).astype(np.float32))
            actions = (logits + g).argmax(-1)  # Gumbel-max: a sample from softmax(logits), from the agent's rng
        return actions.numpy(), {"rnn": rnn, "prev": actions}

    def update(self, episodes: list[Episode]) -> dict:
        """One REINFORCE step on whole episodes padded to [B, T]. With `bootstrap_truncated`, an episode cut by
        the time limit (not terminated) ends with the baseline's value of its last observation: gamma V(o_L) is
        added to its last reward, so the returns and advantages see the episode as going on."""
        cfg = self.cfg
        B, T = len(episodes), max(len(e.actions) for e in episodes)
        extra = 1 if cfg.bootstrap_truncated else 0  # one more column for o_L, the observation after the end
        obs = torch.zeros(B, T + extra, episodes[0].obs.shape[1])
        actions = torch.zeros(B, T + extra, dtype=torch.long)
        rewards, mask = torch.zeros(B, T), torch.zeros(B, T, dtype=torch.bool)
        lengths, cut = torch.zeros(B, dtype=torch.long), torch.zeros(B)
        for i, e in enumerate(episodes):  # batch assembly, one copy per episode
            L = len(e.actions)
            obs[i, :L], actions[i, :L] = torch.from_numpy(e.obs), torch.from_numpy(e.actions)
            rewards[i, :L], mask[i, :L] = torch.from_numpy(e.rewards), True
            lengths[i], cut[i] = L, float(not e.terminated)
            if extra:
                obs[i, L] = torch.from_numpy(e.next_obs[-1])
        prev = torch.cat([torch.full((B, 1), -1, dtype=torch.long), actions[:, :-1]], dim=1)
        # 1. the policy and the baseline over whole episodes, one call each
        logits, baseline, _ = self.net(self.net.obs_norm(obs), prev)  # [B, T (+1), A], [B, T (+1)]
        if extra:
            last_value = baseline.detach().gather(1, lengths.view(B, 1)).squeeze(1) * cut  # [B]: V(o_L), 0 if ended
            rewards = rewards.scatter_add(1, (lengths - 1).view(B, 1), (cfg.gamma * last_value).view(B, 1))
            logits, baseline, actions = logits[:, :T], baseline[:, :T], actions[:, :T]
        logp_all = F.log_softmax(logits, dim=-1)
        logp = logp_all.gather(2, actions.unsqueeze(2)).squeeze(2)  # [B, T]
        # 2. reward-to-go and advantages against the history-conditioned baseline
        returns = discounted_reward_to_go(rewards, mask, cfg.gamma)  # [B, T]
        if cfg.gae_lambda is None:
            advantages = returns - baseline.detach()
        else:  # GAE(lambda) on the baseline's values (lambda 1: the line above)
            advantages = lambda_advantages(rewards, baseline.detach(), mask, cfg.gamma, cfg.gae_lambda)
        if cfg.normalize_advantages:
            advantages = whiten(advantages, mask)
        # 3. losses
        pg_loss = -masked_mean(logp * advantages, mask)
        scale = returns[mask].abs().mean().clamp(min=1.0)  # baseline regression on returns / scale
        v_loss = masked_mean(((baseline - returns) / scale) ** 2, mask)
        entropy = masked_mean(-(logp_all.exp() * logp_all).sum(-1), mask)
        loss = pg_loss + cfg.value_coef * v_loss - cfg.entropy_coef * entropy
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        self.optimizer.step()
        self.updates += 1
        return {"train/loss": loss.item(), "policy/entropy": entropy.item(), "policy/value_loss": v_loss.item()}


def build_agent(kind: str, obs_dim: int, n_actions: int, cfg, rng: np.random.Generator):
    if kind in VALUE_AGENTS:
        return ValueAgent(kind, obs_dim, n_actions, cfg, rng)
    if kind in POLICY_AGENTS:
        return PolicyAgent(kind, obs_dim, n_actions, cfg, rng)
    raise ValueError(f"unknown agent '{kind}'; one of {list(AGENTS)}")
