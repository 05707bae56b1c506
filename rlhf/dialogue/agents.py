"""Agents that act in the text environments, and batched evaluation.

    bc      sample each utterance from the behaviour-cloned LM (filtered BC alike, with its own LM; top_p < 1
            samples within the LM's top-p nucleus)
    ilql    sample each token from log pi_bc + beta * (Q - V) (per-token value model; beta > 0 by default),
            within pi_bc's top-p nucleus when top_p < 1
    mc_iql  the same acting rule with per-token heads whose Q was regressed onto Monte-Carlo returns
    chai    sample k utterances from the BC LM, say the one of highest utterance-level Q
    mc      the same acting rule with a Q regressed onto Monte-Carlo returns
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlhf.dialogue.data import Encoder
from rlhf.dialogue.envs import make_env
from rlhf.dialogue.models import sample_utterances, utterance_features


SPLITS = {"test": 0, "validation": 500_000}  # first episode seed of each split after 10^6 (seed + 1)


@dataclass
class Agent:
    kind: str  # bc / ilql / mc_iql / chai / mc
    lm: object  # the behaviour-cloned LM that proposes tokens or utterances
    encoder: Encoder
    heads: object = None  # ValueHeads on the LM's hidden states (ilql, mc_iql: token kind; chai, mc: utterance)
    beta: float = 16.0  # ilql, mc_iql: weight of Q - V on the BC log-probabilities
    top_p: float = 1.0  # bc, ilql: sample only within the BC policy's top-p nucleus (1: the whole vocabulary)
    adv_clip: float | None = None  # ilql, mc_iql: Q - V clamped to +-adv_clip before the beta scaling
    k: int = 8  # utterance-level agents: candidates per turn
    temperature: float = 1.0

    def act(self, histories: list[list[int]], generator: torch.Generator) -> list[str]:
        if self.kind == "bc":
            return sample_utterances(self.lm, self.encoder, histories, temperature=self.temperature,
                                     top_p=self.top_p, generator=generator)
        if self.kind in ("ilql", "mc_iql"):
            return sample_utterances(self.lm, self.encoder, histories, temperature=self.temperature,
                                     heads=self.heads, beta=self.beta, top_p=self.top_p, adv_clip=self.adv_clip,
                                     generator=generator)
        if self.kind in ("chai", "mc"):
            rep = [h for h in histories for _ in range(self.k)]
            cands = sample_utterances(self.lm, self.encoder, rep, temperature=self.temperature,
                                      generator=generator)
            x = utterance_features(self.lm, self.encoder, rep, cands)  # [N * k, d]
            q = self.heads.q_values(x).view(len(histories), self.k)
            best = q.argmax(dim=1).tolist()
            return [cands[i * self.k + j] for i, j in enumerate(best)]
        raise ValueError(f"unknown agent kind '{self.kind}'")


@torch.no_grad()
def evaluate(agent: Agent, env_name: str, episodes: int, seed: int, split: str = "test") -> dict:
    """Play `episodes` episodes in parallel (episode seeds 10^6 (seed + 1) + i, disjoint from the data's;
    split "validation": 10^6 (seed + 1) + 500000 + i, held out from both, for choosing settings);
    return success rate, mean return and turns with 95% normal intervals, and a few transcripts."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' (one of {sorted(SPLITS)})")
    offset = SPLITS[split]
    gen = torch.Generator().manual_seed(seed + offset)
    envs = [make_env(env_name) for _ in range(episodes)]
    intros, turns, rets, done, success = [], [[] for _ in envs], [0.0] * episodes, [False] * episodes, \
        [False] * episodes
    for i, env in enumerate(envs):
        intros.append(env.reset(seed=10**6 * (seed + 1) + offset + i)[0])
    while not all(done):
        active = [i for i in range(episodes) if not done[i]]
        hists = [agent.encoder.history(intros[i], turns[i]) for i in active]
        utterances = agent.act(hists, gen)
        for i, u in zip(active, utterances):
            obs, r, term, trunc, info = envs[i].step(u)
            turns[i].append((u, obs))
            rets[i] += r
            if term or trunc:
                done[i], success[i] = True, bool(info["success"])
    n_turns = [len(t) for t in turns]
    return {"success": _mean_ci([float(s) for s in success]), "return": _mean_ci(rets),
            "turns": _mean_ci([float(t) for t in n_turns]), "episodes": episodes,
            "returns": rets,
            "transcripts": [{"intro": intros[i], "turns": turns[i]} for i in range(min(3, episodes))]}


def _mean_ci(xs: list[float]) -> dict:
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / max(n - 1, 1))
    return {"mean": m, "ci95": 1.96 * sd / math.sqrt(n)}


def scripted_return(env_name: str, policy: str, episodes: int, seed: int) -> float:
    """Mean return of a scripted policy (random / greedy / optimal with no exploration) on fresh episodes."""
    import random

    from rlhf.dialogue.data import guess_policy, maze_policy, run_episode

    env = make_env(env_name)
    rng = random.Random(seed)
    fn = guess_policy if env_name == "guess" else maze_policy
    total = 0.0
    for i in range(episodes):
        act = (lambda intro, t: fn(policy, env, t, rng, epsilon=0.0))
        total += run_episode(env, act, 10**6 * (seed + 1) + i)["return"]
    return total / episodes
