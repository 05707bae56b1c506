"""Offline dialogue data: scripted behaviour policies, trajectories in jsonl, and token tensors for training.

A trajectory is one episode: the environment's intro and a list of turns, each an agent utterance, the
environment's observation and the reward of that turn (per-utterance rewards). One JSON object per line:

    {"env": "guess", "policy": "random", "episode_seed": 17, "intro": "guess the item",
     "turns": [{"utterance": "is it red?", "observation": "no", "reward": -0.1}, ...],
     "return": 0.6, "success": true, "info": {"item": "bako"}}

`generate` is deterministic given its seed: the same seed writes the same file.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from rlhf.dialogue.envs import ATTRIBUTES, SEP, GuessingGame, TextMaze, make_env, render_history
from rlhf.losses import discounted_returns

POLICIES = ("random", "greedy", "optimal")  # random, greedy-informative, near-optimal
MALFORMED_GUESS = ("what is it?", "is it green?", "tell me", "is it the red?")
MALFORMED_MAZE = ("go north", "move", "move forward")


# ------------------------------------------------------------------------------------ behaviour policies


def _guess_optimal_action(env: GuessingGame, names: frozenset, turns_left: int, asked: frozenset, rng):
    """An action of maximal expected return from the set of consistent items (exact search, memoised)."""
    table = _guess_action_values(env.turn_cost, env.win_reward, env.catalogue_seed, names, turns_left, asked)
    best = max(table.values())
    return rng.choice(sorted(a for a, v in table.items() if v >= best - 1e-9))


@lru_cache(maxsize=None)
def _guess_action_values(turn_cost, win_reward, catalogue_seed, names, turns_left, asked) -> dict[str, float]:
    env = GuessingGame(catalogue_seed=catalogue_seed)
    items = [it for it in env.catalogue if it["name"] in names]
    values: dict[str, float] = {}
    for it in items:  # guess it: right with probability 1/|items|, else continue without it
        rest = names - {it["name"]}
        cont = _guess_state_value(turn_cost, win_reward, catalogue_seed, rest, turns_left - 1, asked)
        values[f"is it the {it['name']}?"] = -turn_cost + (win_reward + (len(items) - 1) * cont) / len(items)
    for attr, vals in ATTRIBUTES.items():
        if attr in asked:
            continue
        yes = frozenset(it["name"] for it in items if it[attr] == vals[0])
        no = names - yes
        if not yes or not no:
            continue
        v = -turn_cost + sum(len(part) / len(items) * _guess_state_value(
            turn_cost, win_reward, catalogue_seed, part, turns_left - 1, asked | {attr}) for part in (yes, no))
        values[f"is it {vals[0]}?"] = v
    return values


@lru_cache(maxsize=None)
def _guess_state_value(turn_cost, win_reward, catalogue_seed, names, turns_left, asked) -> float:
    if turns_left <= 0 or not names:
        return 0.0
    return max(_guess_action_values(turn_cost, win_reward, catalogue_seed, names, turns_left, asked).values())


def guess_policy(kind: str, env: GuessingGame, turns: list[tuple[str, str]], rng: random.Random,
                 epsilon: float = 0.1) -> str:
    """random: any valid utterance (10% malformed); greedy: the most informative question while more than
    4 items are possible, then guesses among them; optimal: an exact optimum, with `epsilon` random actions."""
    if kind == "random" or (kind == "optimal" and rng.random() < epsilon):
        if kind == "random" and rng.random() < 0.1:
            return rng.choice(MALFORMED_GUESS)
        return rng.choice(env.valid_utterances())
    items = env.consistent(turns)
    guessed = {u for u, _ in turns}
    if kind == "greedy":
        if len(items) > 4:
            splits = []
            for attr, vals in ATTRIBUTES.items():
                yes = sum(it[attr] == vals[0] for it in items)
                splits.append((abs(2 * yes - len(items)), rng.choice(vals)))
            best = min(s for s, _ in splits)
            return f"is it {rng.choice([v for s, v in splits if s == best])}?"
        return rng.choice([u for u in (f"is it the {it['name']}?" for it in items) if u not in guessed]
                          or env.valid_utterances())
    if kind == "optimal":
        asked = frozenset(env.attribute_of[u[6:-1]] for u, _ in turns if u[6:-1] in env.attribute_of)
        names = frozenset(it["name"] for it in items)
        return _guess_optimal_action(env, names, env.horizon - len(turns), asked, rng)
    raise ValueError(f"unknown behaviour policy '{kind}'")


def maze_policy(kind: str, env: TextMaze, turns, rng: random.Random, epsilon: float = 0.2) -> str:
    """random: any move (5% malformed); greedy: a move that lowers the straight-line (Manhattan) distance
    to the goal when one is open, else any open move; optimal: a shortest-path move, `epsilon` random.
    The scripted policies see the true position (privileged), also in the partially observed maze.
    random_moves (the score normalisation's random reference): any of the four moves, never malformed."""
    if kind == "random_moves":
        return rng.choice(env.valid_utterances())
    if kind == "random" or (kind == "optimal" and rng.random() < epsilon):
        if kind == "random" and rng.random() < 0.05:
            return rng.choice(MALFORMED_MAZE)
        return rng.choice(env.valid_utterances())
    nbrs = env.neighbours(env.pos)
    if kind == "greedy":
        def manhattan(p):
            return abs(p[0] - env.goal[0]) + abs(p[1] - env.goal[1])
        closer = [m for m, q in nbrs.items() if manhattan(q) < manhattan(env.pos)]
        return "move " + rng.choice(sorted(closer or nbrs))
    if kind == "optimal":
        best = min(env.distance[q] for q in nbrs.values())
        return "move " + rng.choice(sorted(m for m, q in nbrs.items() if env.distance[q] == best))
    raise ValueError(f"unknown behaviour policy '{kind}'")


# ------------------------------------------------------------------------------------------ episodes


def run_episode(env, act, episode_seed: int) -> dict:
    """Play one episode with `act(turns) -> utterance`; return the trajectory record."""
    intro, info = env.reset(seed=episode_seed)
    turns, records = [], []
    while True:
        utterance = act(intro, turns)
        obs, reward, terminated, truncated, step_info = env.step(utterance)
        turns.append((utterance, obs))
        records.append({"utterance": utterance, "observation": obs, "reward": round(float(reward), 6)})
        if terminated or truncated:
            break
    return {"intro": intro, "turns": records, "return": round(sum(r["reward"] for r in records), 6),
            "success": bool(step_info["success"]), "info": {k: v for k, v in info.items()}}


def generate(env_name: str, episodes_per_policy: int, seed: int, policies=POLICIES) -> list[dict]:
    """Trajectories of each behaviour policy, `episodes_per_policy` each, reproducible from `seed`."""
    env = make_env(env_name)
    out = []
    for p_index, kind in enumerate(policies):
        if kind not in POLICIES:
            raise ValueError(f"unknown behaviour policy '{kind}'; one of {', '.join(POLICIES)}")
        rng = random.Random(f"{seed}-{kind}")
        policy = guess_policy if env_name == "guess" else maze_policy
        for i in range(episodes_per_policy):
            episode_seed = seed * 1_000_003 + p_index * 100_003 + i
            rec = run_episode(env, lambda intro, turns: policy(kind, env, turns, rng), episode_seed)
            out.append({"env": env_name, "policy": kind, "episode_seed": episode_seed, **rec})
    return out


def save_jsonl(records: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def load_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory file not found: {path} (write one with `rlhf dialogue data`)")
    from rlhf.jsonl import scan

    out = []
    for line in scan(path, strict=True):  # the toolkit's one JSONL reader, its rules for given data
        try:
            if line.reason:
                raise ValueError(line.message)
            line.value["turns"][0]["utterance"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ValueError(f"{path}:{line.number}: not a trajectory (needs intro and a non-empty turns "
                             f"list{'; ' + line.reason if line.reason else ''})") from None
        out.append(line.value)
    return out


def top_fraction(records: list[dict], fraction: float) -> list[dict]:
    """The `fraction` of trajectories with the highest return (filtered BC); ties keep file order."""
    n = max(1, round(fraction * len(records)))
    order = sorted(range(len(records)), key=lambda i: -records[i]["return"])
    return [records[i] for i in sorted(order[:n])]


# ------------------------------------------------------------------------------------------ tensors


@dataclass
class TokenBatch:
    """A right-padded batch of whole trajectories at token level, [B, T_tokens] everywhere, and the
    per-utterance view [B, U_utterances].

    tokens: ids; attention_mask: 1 on real tokens; action_mask: 1 on tokens the agent said (utterance and
    its end-of-line); utt_rewards [B, U] with utt_mask [B, U]; utt_last [B, U]: the index in T of each
    utterance's last token (its end-of-line), where the per-token reward is placed.
    """

    tokens: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    utt_rewards: torch.Tensor
    utt_mask: torch.Tensor
    utt_last: torch.Tensor

    def select(self, idx: torch.Tensor) -> "TokenBatch":
        """The rows `idx` (columns are kept; padding stays masked)."""
        return TokenBatch(*(getattr(self, f)[idx] for f in ("tokens", "attention_mask", "action_mask",
                                                             "utt_rewards", "utt_mask", "utt_last")))


class Encoder:
    """Byte-level encoding of text pieces with a memo (the same pieces recur in every trajectory)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bos = tokenizer.bos_token_id
        self.pad = tokenizer.pad_token_id
        self.newline = self.encode(SEP)[0]
        self._memo: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        memo = getattr(self, "_memo", None)
        if memo is not None and text in memo:
            return memo[text]
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if memo is not None:
            memo[text] = ids
        return ids

    def history(self, intro: str, turns: list[tuple[str, str]]) -> list[int]:
        """BOS + the rendered history (the state before the next utterance)."""
        ids = [self.bos] + self.encode(intro + SEP)
        for u, o in turns:
            ids += self.encode(u + SEP) + self.encode(o + SEP)
        return ids

    def trajectory(self, rec: dict) -> tuple[list[int], list[int], list[int], list[float]]:
        """(ids, action flags, last-token index of each utterance, utterance rewards)."""
        ids = [self.bos] + self.encode(rec["intro"] + SEP)
        acts = [0] * len(ids)
        lasts, rewards = [], []
        for turn in rec["turns"]:
            u = self.encode(turn["utterance"] + SEP)
            ids += u
            acts += [1] * len(u)
            lasts.append(len(ids) - 1)
            rewards.append(float(turn["reward"]))
            o = self.encode(turn["observation"] + SEP)
            ids += o
            acts += [0] * len(o)
        return ids, acts, lasts, rewards

    def batch(self, records: list[dict]) -> TokenBatch:
        rows = [self.trajectory(r) for r in records]
        B, T, U = len(rows), max(len(r[0]) for r in rows), max(len(r[2]) for r in rows)
        tokens = torch.full((B, T), self.pad, dtype=torch.long)
        attn, acts = torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T, dtype=torch.long)
        rewards, umask = torch.zeros(B, U), torch.zeros(B, U, dtype=torch.long)
        lasts = torch.zeros(B, U, dtype=torch.long)
        for i, (ids, a, last, r) in enumerate(rows):
            tokens[i, :len(ids)] = torch.tensor(ids)
            attn[i, :len(ids)] = 1
            acts[i, :len(ids)] = torch.tensor(a)
            rewards[i, :len(r)] = torch.tensor(r)
            umask[i, :len(r)] = 1
            lasts[i, :len(last)] = torch.tensor(last)
        return TokenBatch(tokens, attn, acts, rewards, umask, lasts)


@dataclass
class Transition:
    """One utterance-level step: state text (history), the utterance, its reward, the next state, done."""

    intro: str
    turns: tuple
    utterance: str
    reward: float
    next_turns: tuple
    done: bool
    return_to_go: float


def transitions(records: list[dict], gamma: float) -> list[Transition]:
    """Every utterance of every trajectory as a transition; the last utterance of an episode is `done`
    (terminal or at the horizon: the history shows the turn count, so the horizon is part of the state)."""
    out = []
    for rec in records:
        turns = [(t["utterance"], t["observation"]) for t in rec["turns"]]
        rewards = [float(t["reward"]) for t in rec["turns"]]
        rtg = discounted_returns(torch.tensor([rewards]), torch.ones(1, len(rewards)), gamma)[0].tolist()
        for i, (u, _) in enumerate(turns):
            out.append(Transition(rec["intro"], tuple(turns[:i]), u, rewards[i], tuple(turns[:i + 1]),
                                  i == len(turns) - 1, rtg[i]))
    return out


def history_text(intro: str, turns) -> str:
    return render_history(intro, list(turns))
