"""The two-door model comparison: a one-step model (o_t, a_t) -> o_{t+1} against a history model
(o_<=t, a_<=t) -> o_{t+1}, both fitted to the same random-policy episodes of `TwoDoors`.

After a failed try the observation is "locked" whichever door failed, so the one-step model can only learn
P(opened | locked, a) = 1/2 for both doors; the history model sees which door failed and learns that retrying
it never opens it and switching always does.

    from rlhf.pomdp.models import two_door_comparison
    two_door_comparison(seed=0)   # {"retry": {"actual": 0.0, "one_step": ~0.5, "history": ~0.0}, ...}
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rlhf.losses import masked_mean
from rlhf.pomdp.agents import RecurrentCore, mlp, one_hot_prev
from rlhf.pomdp.envs import TwoDoors


def random_episodes(n: int, seed: int, max_steps: int = 4) -> dict[str, torch.Tensor]:
    """n uniformly random-policy episodes, padded: obs [n, T, 3], actions [n, T], next_obs index [n, T],
    mask [n, T] (T = max_steps)."""
    env = TwoDoors(max_steps=max_steps)
    rng = np.random.default_rng(seed)
    obs = np.zeros((n, max_steps, 3), np.float32)
    actions = np.zeros((n, max_steps), np.int64)
    nxt = np.zeros((n, max_steps), np.int64)
    mask = np.zeros((n, max_steps), bool)
    for i in range(n):
        o, _ = env.reset(seed=int(rng.integers(2**31)))
        for t in range(max_steps):
            a = int(rng.integers(2))
            o2, _, term, trunc, _ = env.step(a)
            obs[i, t], actions[i, t], nxt[i, t], mask[i, t] = o, a, int(o2.argmax()), True
            o = o2
            if term or trunc:
                break
    return {k: torch.from_numpy(v) for k, v in
            {"obs": obs, "actions": actions, "next_obs": nxt, "mask": mask}.items()}


class OneStepModel(nn.Module):
    """(o_t, a_t) -> logits of o_{t+1} over the 3 observations."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = mlp(3 + 2, hidden, 3)

    def forward(self, obs, actions):
        return self.net(torch.cat([obs, F.one_hot(actions, 2).float()], dim=-1))  # [B, T, 3]


class HistoryModel(nn.Module):
    """LSTM over (o_t, a_{t-1}), then with a_t -> logits of o_{t+1}; one call over whole episodes."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.core = RecurrentCore(3, 2, hidden)
        self.head = mlp(hidden + 2, hidden, 3)

    def forward(self, obs, actions):
        prev = torch.cat([torch.full_like(actions[:, :1], -1), actions[:, :-1]], dim=1)  # [B, T]
        feats, _ = self.core(obs, prev)  # [B, T, H]
        return self.head(torch.cat([feats, one_hot_prev(actions, 2)], dim=-1))


def fit(model: nn.Module, data: dict, steps: int, lr: float = 3e-3) -> float:
    """Full-batch cross-entropy on the next observation; returns the final loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        logits = model(data["obs"], data["actions"])
        ce = F.cross_entropy(logits.flatten(0, 1), data["next_obs"].flatten(), reduction="none")
        loss = masked_mean(ce, data["mask"].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


@torch.no_grad()
def predicted_open(model: nn.Module, data: dict) -> torch.Tensor:
    """P(o_{t+1} = opened) at every step [B, T]."""
    return F.softmax(model(data["obs"], data["actions"]), dim=-1)[..., TwoDoors.OPENED]


def two_door_comparison(seed: int = 0, train_episodes: int = 2000, test_episodes: int = 1000,
                        steps: int = 300, lr: float = 3e-3) -> dict:
    """Fit both models on random-policy episodes and compare P(opened) with the truth, on held-out episodes,
    at the steps that follow a failed try: retrying the door that just failed, or switching to the other."""
    torch.manual_seed(seed)
    train, test = random_episodes(train_episodes, seed), random_episodes(test_episodes, seed + 10_000)
    models = {"one_step": OneStepModel(), "history": HistoryModel()}
    losses = {name: fit(m, train, steps, lr) for name, m in models.items()}
    prev = torch.cat([torch.full_like(test["actions"][:, :1], -1), test["actions"][:, :-1]], dim=1)
    after_failure = test["mask"] & (test["obs"][..., TwoDoors.LOCKED] > 0)  # [B, T]
    cases = {"retry": after_failure & (test["actions"] == prev), "switch": after_failure & (test["actions"] != prev),
             "first_try": test["mask"] & (test["obs"][..., TwoDoors.START] > 0)}
    opened = (test["next_obs"] == TwoDoors.OPENED).float()
    preds = {name: predicted_open(m, test) for name, m in models.items()}
    out = {"train_loss": losses}
    for case, sel in cases.items():
        out[case] = {"n": int(sel.sum()), "actual": float(opened[sel].mean()),
                     **{name: float(p[sel].mean()) for name, p in preds.items()}}
    return out
