"""Text environments for multi-step dialogue RL, with a gymnasium-style API on strings.

    env = GuessingGame(seed=0)
    intro, info = env.reset(seed=1)
    answer, reward, terminated, truncated, info = env.step("is it red?")

Both environments have a fixed horizon (`truncated` at the last turn), answer every utterance by rule, and
give a defined answer and an extra cost to anything they cannot parse. The agent's state is the whole
interaction history (`render_history`); the environments never hand the agent their hidden state.

- `GuessingGame`: twenty-questions with a hidden item from a catalogue that `make_catalogue` generates from a
  seed (invented names, one value per attribute). The agent asks yes/no questions ("is it red?") or guesses
  ("is it the bako?"). Reward: `win_reward` for a correct guess, minus `turn_cost` every turn, minus
  `invalid_cost` more for a malformed or unknown question. An answer to a question names the item's value
  of that attribute ("is it red?" -> "no, blue"); a wrong guess gets "no", a right one "yes, you win".
- `TextMaze`: a double-T maze in the pattern of LMRL-Gym's Maze (Abdulhai et al., 2023): "move up/down/left/
  right"; -1 per step, `invalid_cost` more for a move into a wall or an unparsable utterance, 0 (and the end)
  at the goal. Fully observed: the goal and the position are in the text; partially observed: only the walls
  around the current cell are. `normalised_score` maps returns onto 0 (random policy) .. 100 (optimal).
"""

from __future__ import annotations

import itertools
import random
import re
from collections import deque
from dataclasses import dataclass, field

import gymnasium as gym
from gymnasium import spaces

SEP = "\n"  # ends every utterance and every observation in the rendered history
MAX_UTTERANCE_CHARS = 24


def render_history(intro: str, turns: list[tuple[str, str]]) -> str:
    """The agent's state as text: the intro, then each (utterance, observation) pair, one per line."""
    return intro + SEP + "".join(u + SEP + o + SEP for u, o in turns)


class TextEnv(gym.Env):
    """Common parts: text spaces, the horizon and the turn counter."""

    metadata = {"render_modes": []}
    horizon: int

    def __init__(self):
        charset = "abcdefghijklmnopqrstuvwxyz0123456789 ,.?!:;-'"
        self.action_space = spaces.Text(max_length=MAX_UTTERANCE_CHARS, charset=charset)
        self.observation_space = spaces.Text(max_length=128, charset=charset)
        self.turn = 0

    def valid_utterances(self) -> list[str]:
        """The well-formed utterances (the scripted policies' action set; the agent may say anything)."""
        raise NotImplementedError

    def _finish(self, reward: float, terminated: bool, info: dict):
        self.turn += 1
        truncated = not terminated and self.turn >= self.horizon
        info = {"turn": self.turn, **info}
        return reward, terminated, truncated, info


# ------------------------------------------------------------------------------------- guessing game

ATTRIBUTES = {"colour": ("red", "blue"), "size": ("big", "small"), "feel": ("soft", "hard")}
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
QUESTION = re.compile(r"^is it (the )?([a-z]+)\?$")


def make_catalogue(seed: int = 0, attributes: dict[str, tuple[str, ...]] = ATTRIBUTES) -> list[dict]:
    """One item per combination of attribute values, each with an invented four-letter name (seeded)."""
    rng = random.Random(seed)
    values = list(itertools.product(*attributes.values()))
    names: list[str] = []
    while len(names) < len(values):
        name = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(2))
        if name not in names and name not in {v for vs in attributes.values() for v in vs}:
            names.append(name)
    return [{"name": n, **dict(zip(attributes, combo))} for n, combo in zip(names, values)]


@dataclass
class GuessingGame(TextEnv):
    """Guess the hidden item in at most `horizon` turns; see the module docstring for the rules."""

    catalogue_seed: int = 0
    horizon: int = 4
    win_reward: float = 1.0
    turn_cost: float = 0.1
    invalid_cost: float = 0.2
    catalogue: list[dict] = field(init=False)

    def __post_init__(self):
        super().__init__()
        self.catalogue = make_catalogue(self.catalogue_seed)
        self.attribute_of = {v: k for k, vs in ATTRIBUTES.items() for v in vs}
        self.names = [item["name"] for item in self.catalogue]
        self._rng = random.Random(0)
        self.item: dict | None = None

    intro = "guess"

    def valid_utterances(self) -> list[str]:
        questions = [f"is it {v}?" for vs in ATTRIBUTES.values() for v in vs]
        return questions + [f"is it the {n}?" for n in self.names]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = random.Random(seed)
        self.item = self._rng.choice(self.catalogue)
        self.turn = 0
        return self.intro, {"item": self.item["name"]}

    def answer(self, utterance: str) -> tuple[str, str]:
        """(answer, kind) for an utterance; kind is question / right / wrong / unknown / malformed."""
        m = QUESTION.match(utterance.strip())
        if m is None:
            return "i do not understand", "malformed"
        the, word = m.groups()
        if the and word in self.names:
            return ("yes, you win", "right") if word == self.item["name"] else ("no", "wrong")
        if not the and word in self.attribute_of:  # the answer names the item's value: "no, blue"
            value = self.item[self.attribute_of[word]]
            return ("yes, " if value == word else "no, ") + value, "question"
        return "i do not know", "unknown"

    def step(self, utterance: str):
        if self.item is None:
            raise RuntimeError("call reset() before step()")
        if self.turn >= self.horizon:
            raise RuntimeError("the episode is over; call reset()")
        text, kind = self.answer(utterance)
        reward = -self.turn_cost - (self.invalid_cost if kind in ("malformed", "unknown") else 0.0)
        won = kind == "right"
        reward += self.win_reward if won else 0.0
        reward, terminated, truncated, info = self._finish(reward, won, {"kind": kind, "success": won})
        return text, reward, terminated, truncated, info

    def consistent(self, turns: list[tuple[str, str]]) -> list[dict]:
        """Catalogue items consistent with the (utterance, answer) pairs so far (for scripted policies)."""
        items = list(self.catalogue)
        for u, a in turns:
            m = QUESTION.match(u)
            if m is None:
                continue
            the, word = m.groups()
            if the and a == "no":
                items = [it for it in items if it["name"] != word]
            elif not the and word in self.attribute_of and a.startswith(("yes, ", "no, ")):
                value = a.rsplit(" ", 1)[1]
                items = [it for it in items if it[self.attribute_of[word]] == value]
        return items


# ------------------------------------------------------------------------------------------- maze

# A double T: a stem from the bottom to a first junction whose two arms end in second junctions (up/down).
DOUBLE_T = (
    "#######",
    "#.###.#",
    "#.....#",
    "#.#.#.#",
    "###.###",
    "###.###",
    "#######",
)
MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
MOVE = re.compile(r"^move (up|down|left|right)$")


@dataclass
class TextMaze(TextEnv):
    """Reach the goal of a double-T maze; fully (`partial=False`) or partially observed text."""

    partial: bool = False
    horizon: int = 8
    goal: tuple[int, int] = (1, 5)
    step_cost: float = 1.0
    invalid_cost: float = 1.0
    layout: tuple[str, ...] = DOUBLE_T

    def __post_init__(self):
        super().__init__()
        self.open = [(r, c) for r, row in enumerate(self.layout) for c, ch in enumerate(row) if ch == "."]
        if tuple(self.goal) not in self.open:
            raise ValueError(f"goal {self.goal} is not an open cell of the layout")
        self.goal = tuple(self.goal)
        self.starts = [p for p in self.open if p != self.goal]
        self.distance = self._distances()
        self._rng = random.Random(0)
        self.pos: tuple[int, int] | None = None

    def _distances(self) -> dict[tuple[int, int], int]:
        dist, queue = {self.goal: 0}, deque([self.goal])
        while queue:
            p = queue.popleft()
            for q in self.neighbours(p).values():
                if q not in dist:
                    dist[q] = dist[p] + 1
                    queue.append(q)
        return dist

    def neighbours(self, p: tuple[int, int]) -> dict[str, tuple[int, int]]:
        """Open cells next to p, by move name."""
        out = {}
        for name, (dr, dc) in MOVES.items():
            q = (p[0] + dr, p[1] + dc)
            if q in self.open_set:
                out[name] = q
        return out

    @property
    def open_set(self) -> set:
        if not hasattr(self, "_open_set"):
            self._open_set = set(self.open)
        return self._open_set

    def valid_utterances(self) -> list[str]:
        return [f"move {m}" for m in MOVES]

    def observe(self) -> str:
        if self.partial:
            walls = [m for m in MOVES if m not in self.neighbours(self.pos)]
            return "walls " + " ".join(walls) if walls else "no walls"
        return f"at {self.pos[0]} {self.pos[1]}"

    @property
    def intro(self) -> str:
        return "find the goal" if self.partial else f"goal {self.goal[0]} {self.goal[1]}"

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = random.Random(seed)
        self.pos = tuple((options or {}).get("start") or self._rng.choice(self.starts))
        self.turn = 0
        return self.intro + SEP + self.observe(), {"start": self.pos}

    def step(self, utterance: str):
        if self.pos is None:
            raise RuntimeError("call reset() before step()")
        if self.turn >= self.horizon:
            raise RuntimeError("the episode is over; call reset()")
        m = MOVE.match(utterance.strip())
        target = self.neighbours(self.pos).get(m.group(1)) if m else None
        reward = -self.step_cost
        if target is None:
            reward -= self.invalid_cost
            kind = "malformed" if m is None else "wall"
        else:
            self.pos, kind = target, "move"
        at_goal = self.pos == self.goal
        if at_goal:
            reward = 0.0
        reward, terminated, truncated, info = self._finish(reward, at_goal, {"kind": kind, "success": at_goal})
        return self.observe(), reward, terminated, truncated, info

    def optimal_return(self, start: tuple[int, int]) -> float:
        """Return of a shortest path from `start` (the last move, onto the goal, earns 0), horizon cut."""
        d = self.distance[start]
        return -self.step_cost * (d - 1) if d <= self.horizon else -self.step_cost * self.horizon


def normalised_score(mean_return: float, random_return: float, optimal_return: float) -> float:
    """100 * (R - R_random) / (R_optimal - R_random): 0 is the uniform-random policy, 100 the optimal one."""
    return 100.0 * (mean_return - random_return) / (optimal_return - random_return)


ENVS = ("guess", "maze", "maze_po")


def make_env(name: str, catalogue_seed: int = 0):
    """`guess`, `maze` (fully observed) or `maze_po` (partially observed)."""
    if name == "guess":
        return GuessingGame(catalogue_seed=catalogue_seed)
    if name in ("maze", "maze_po"):
        return TextMaze(partial=name == "maze_po")
    raise ValueError(f"unknown environment '{name}'; one of guess, maze, maze_po")
