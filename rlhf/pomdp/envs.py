"""Partially observable environments (gymnasium API), each named after the phenomenon it shows.

Stable names (constructor keyword arguments in brackets, defaults shown):

    make_env("aliased-corridor", n_cells=5, step_cost=0.1, max_steps=20)  -> AliasedCorridor
    make_env("two-doors", max_steps=4, fail_cost=0.1)                      -> TwoDoors
    make_env("tmaze", corridor_length=5, max_steps=None, step_cost=0.01)   -> TMaze
    make_env("flicker-cartpole", p_blank=0.5)                              -> FlickeringObservation(CartPole-v1)
    make_env("masked-cartpole")                                            -> MaskedVelocity(CartPole-v1)
    make_env("cartpole")                                                   -> CartPole-v1 (fully observed reference)

Every environment has a `Box` float32 observation space, a `Discrete` action space and the usual
`reset(seed=...) -> (obs, info)` / `step(a) -> (obs, reward, terminated, truncated, info)`. The grid worlds put
`info["success"]` (bool) in the info of the step that ends an episode; every environment puts the hidden
state it conditions on in `info["state"]` so that offline data sets can record it. `ENV_NAMES` lists the names.

- AliasedCorridor: cells 0..n-1, reward +1 on reaching the middle cell (terminal), `-step_cost` per step. The
  two end cells give the same observation, so at an end a memoryless agent cannot tell which way the goal
  lies: any deterministic memoryless policy walks into the wall forever from one of the ends, and the best
  memoryless policy moves right with probability 1/2 there. Episodes start at one of the two ends.
  `memoryless_value(p_right)` gives the exact expected return of any memoryless policy.
- TwoDoors: one of two doors is locked, chosen at random per episode. Trying the open door ends the episode
  with +1; trying the locked one gives "locked" and `-fail_cost`. The observation after a failure is the same
  whichever door failed, so a one-step model (o, a) -> o' learns that retrying succeeds half the time,
  whereas the history shows a retried locked door never opens.
- TMaze: the cue (up or down) is shown only in the first observation; the agent walks `corridor_length`
  cells east to the junction, where "up" or "down" ends the episode: +1 if it matches the cue, 0 if not
  (success = matched); every step costs `step_cost`, so guessing beats wandering until the time limit.
  Actions: 0 east, 1 up, 2 down (up/down in the corridor waste a step). Truncated after `max_steps` (default
  2 * corridor_length + 4). Memoryless agents can do no better than 50% success.
- FlickeringObservation: the whole observation is replaced by zeros with probability `p_blank` per step.
- MaskedVelocity: CartPole's observation without the velocities: (x, theta), shape (2,).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ENV_NAMES = ("aliased-corridor", "two-doors", "tmaze", "flicker-cartpole", "masked-cartpole", "cartpole")


class AliasedCorridor(gym.Env):
    """A corridor of `n_cells` (odd, >= 3) cells with the goal in the middle; the two ends look alike.

    Observation: one-hot of size n_cells - 2: index 0 for "at an end" (both ends), then one index per
    interior non-goal cell (left to right). Actions: 0 left, 1 right (into a wall: stay).
    """

    metadata = {"render_modes": []}

    def __init__(self, n_cells: int = 5, step_cost: float = 0.1, max_steps: int = 20):
        if n_cells < 3 or n_cells % 2 == 0:
            raise ValueError(f"n_cells must be odd and >= 3, got {n_cells}")
        self.n_cells, self.step_cost, self.max_steps = n_cells, step_cost, max_steps
        self.goal = n_cells // 2
        self.n_obs = n_cells - 2
        self.observation_space = spaces.Box(0.0, 1.0, (self.n_obs,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.pos, self.t = 0, 0

    def obs_index(self, pos: int) -> int:
        """The observation index of cell `pos` (not the goal): the ends share index 0."""
        if pos in (0, self.n_cells - 1):
            return 0
        return pos if pos < self.goal else pos - 1

    def _obs(self) -> np.ndarray:
        o = np.zeros(self.n_obs, np.float32)
        o[self.obs_index(self.pos)] = 1.0
        return o

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = 0 if self.np_random.random() < 0.5 else self.n_cells - 1
        self.t = 0
        return self._obs(), {"state": self.pos}

    def step(self, action):
        self.pos = int(np.clip(self.pos + (1 if int(action) == 1 else -1), 0, self.n_cells - 1))
        self.t += 1
        terminated = self.pos == self.goal
        truncated = not terminated and self.t >= self.max_steps
        reward = 1.0 - self.step_cost if terminated else -self.step_cost
        info = {"state": self.pos}
        if terminated or truncated:
            info["success"] = bool(terminated)
        obs = np.zeros(self.n_obs, np.float32) if terminated else self._obs()
        return obs, reward, terminated, truncated, info

    def memoryless_value(self, p_right) -> float:
        """Exact expected (undiscounted) return of the memoryless policy that moves right with probability
        `p_right[k]` on observation k (a float applies to the ends; interior cells then head for the goal)."""
        p = np.full(self.n_obs, np.nan)
        p[1:] = [1.0 if c < self.goal else 0.0 for c in range(1, self.n_cells - 1) if c != self.goal]
        if np.ndim(p_right) == 0:
            p[0] = float(p_right)
        else:
            p = np.asarray(p_right, dtype=float)
        value = np.zeros(self.n_cells)  # value[c] with k steps to go, goal terminal (value 0)
        for _ in range(self.max_steps):
            new = np.zeros(self.n_cells)
            for c in range(self.n_cells):
                if c == self.goal:
                    continue
                pr = p[self.obs_index(c)]
                total = 0.0
                for step, prob in ((1, pr), (-1, 1.0 - pr)):
                    nxt = min(max(c + step, 0), self.n_cells - 1)
                    r = 1.0 - self.step_cost if nxt == self.goal else -self.step_cost
                    total += prob * (r + value[nxt])
                new[c] = total
            value = new
        return float(0.5 * value[0] + 0.5 * value[self.n_cells - 1])


class TwoDoors(gym.Env):
    """Two doors, one locked at random per episode.

    Observation: one-hot of size 3: 0 start, 1 "the door I tried is locked", 2 "opened" (terminal).
    Actions: 0 try door A, 1 try door B. Truncated after `max_steps` tries.
    """

    metadata = {"render_modes": []}
    START, LOCKED, OPENED = 0, 1, 2

    def __init__(self, max_steps: int = 4, fail_cost: float = 0.1):
        self.max_steps, self.fail_cost = max_steps, fail_cost
        self.observation_space = spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.locked, self.t = 0, 0

    @staticmethod
    def one_hot(k: int) -> np.ndarray:
        o = np.zeros(3, np.float32)
        o[k] = 1.0
        return o

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.locked = int(self.np_random.integers(2))
        self.t = 0
        return self.one_hot(self.START), {"state": self.locked}

    def step(self, action):
        self.t += 1
        opened = int(action) != self.locked
        truncated = not opened and self.t >= self.max_steps
        info = {"state": self.locked}
        if opened or truncated:
            info["success"] = bool(opened)
        obs = self.one_hot(self.OPENED if opened else self.LOCKED)
        return obs, (1.0 if opened else -self.fail_cost), opened, truncated, info


class TMaze(gym.Env):
    """T-maze with the cue in the first observation only (Bakker, 2002, "Reinforcement learning with long
    short-term memory").

    Observation (size 4): [cue up, cue down, in corridor, at junction]; the cue bits are zero after t = 0.
    Actions: 0 east, 1 up, 2 down.
    """

    metadata = {"render_modes": []}

    def __init__(self, corridor_length: int = 5, max_steps: int | None = None, step_cost: float = 0.01):
        if corridor_length < 1:
            raise ValueError(f"corridor_length must be >= 1, got {corridor_length}")
        self.corridor_length, self.step_cost = corridor_length, step_cost
        self.max_steps = max_steps if max_steps is not None else 2 * corridor_length + 4
        self.observation_space = spaces.Box(0.0, 1.0, (4,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.cue, self.pos, self.t = 0, 0, 0

    def _obs(self) -> np.ndarray:
        o = np.zeros(4, np.float32)
        if self.t == 0:
            o[self.cue] = 1.0
        o[3 if self.pos == self.corridor_length else 2] = 1.0
        return o

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.cue = int(self.np_random.integers(2))  # 0: up, 1: down
        self.pos, self.t = 0, 0
        return self._obs(), {"state": self.cue}

    def step(self, action):
        action = int(action)
        self.t += 1
        terminated, reward, info = False, -self.step_cost, {"state": self.cue}
        if action == 0:
            self.pos = min(self.pos + 1, self.corridor_length)
        elif self.pos == self.corridor_length:
            terminated = True
            success = (action - 1) == self.cue
            reward += 1.0 if success else 0.0
            info["success"] = success
        truncated = not terminated and self.t >= self.max_steps
        if truncated:
            info["success"] = False
        obs = np.zeros(4, np.float32) if terminated else self._obs()
        return obs, reward, terminated, truncated, info


class FlickeringObservation(gym.ObservationWrapper):
    """Replace the whole observation by zeros with probability `p_blank` at every step (Hausknecht & Stone,
    2015, "Deep recurrent Q-learning for POMDPs": flickering Atari)."""

    def __init__(self, env: gym.Env, p_blank: float = 0.5):
        super().__init__(env)
        if not 0.0 <= p_blank <= 1.0:
            raise ValueError(f"p_blank must be in [0, 1], got {p_blank}")
        self.p_blank = p_blank
        low, high = env.observation_space.low, env.observation_space.high
        self.observation_space = spaces.Box(np.minimum(low, 0), np.maximum(high, 0), env.observation_space.shape,
                                            np.float32)

    def observation(self, observation):
        if self.np_random.random() < self.p_blank:
            return np.zeros_like(observation, dtype=np.float32)
        return np.asarray(observation, dtype=np.float32)


class MaskedVelocity(gym.ObservationWrapper):
    """CartPole without the velocities: (x, x_dot, theta, theta_dot) -> (x, theta)."""

    KEEP = (0, 2)

    def __init__(self, env: gym.Env):
        super().__init__(env)
        low, high = env.observation_space.low[list(self.KEEP)], env.observation_space.high[list(self.KEEP)]
        self.observation_space = spaces.Box(low, high, (len(self.KEEP),), np.float32)

    def observation(self, observation):
        return np.asarray(observation, dtype=np.float32)[list(self.KEEP)]


class _StateInfo(gym.Wrapper):
    """Adds CartPole's full state to info["state"] (offline data sets record it)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "state": np.asarray(self.env.unwrapped.state, np.float32)}

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        return obs, r, term, trunc, {**info, "state": np.asarray(self.env.unwrapped.state, np.float32)}


def make_env(name: str, **kwargs) -> gym.Env:
    """Build an environment of ENV_NAMES by name; keyword arguments go to its constructor."""
    if name == "aliased-corridor":
        return AliasedCorridor(**kwargs)
    if name == "two-doors":
        return TwoDoors(**kwargs)
    if name == "tmaze":
        return TMaze(**kwargs)
    if name in ("flicker-cartpole", "masked-cartpole", "cartpole"):
        base = _StateInfo(gym.make("CartPole-v1"))
        if name == "flicker-cartpole":
            return FlickeringObservation(base, **kwargs)
        if kwargs:
            raise TypeError(f"{name} takes no arguments, got {sorted(kwargs)}")
        return MaskedVelocity(base) if name == "masked-cartpole" else base
    raise ValueError(f"unknown environment '{name}'; one of {list(ENV_NAMES)}")
