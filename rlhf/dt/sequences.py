"""Context windows for the Decision Transformer: which steps a window holds, padding, masks, timestep indices.

These are index plumbing over variable-length episodes (numpy, no gradients), not losses, so they live here
rather than in rlhf/losses.py; the return-to-go itself, which is return math, is `rlhf.losses.returns_to_go`.

Convention: a window of context length K *ends* at step t of an episode and holds steps
max(0, t - K + 1) .. t. Shorter windows (near the start of an episode) are LEFT-padded to K, so the newest
step is always at position K - 1, where the action is read off during evaluation; training windows are built
the same way, so the model sees exactly the short contexts it meets at the start of an evaluation episode.

    window_steps(t=1, K=4)              -> (0, 2)                   steps 0 and 1
    padding_mask(n=2, K=4)              -> [0, 0, 1, 1]
    timestep_indices(start=0, n=2, K=4) -> [0, 0, 0, 1]             pads read timestep 0 (masked anyway)
    left_pad([[a], [b]], K=4, value=0)  -> [[0], [0], [a], [b]]
"""

from __future__ import annotations

import numpy as np


def window_steps(t: int, K: int) -> tuple[int, int]:
    """The window of context length K that ends at episode step t (inclusive): (first step, number of steps)."""
    if K < 1 or t < 0:
        raise ValueError(f"need K >= 1 and t >= 0, got K={K}, t={t}")
    start = max(0, t - K + 1)
    return start, t - start + 1


def padding_mask(n: int, K: int) -> np.ndarray:
    """[K] int64: 0 on the K - n left pads, 1 on the n real steps."""
    if not 0 < n <= K:
        raise ValueError(f"need 0 < n <= K, got n={n}, K={K}")
    return np.concatenate([np.zeros(K - n, np.int64), np.ones(n, np.int64)])


def timestep_indices(start: int, n: int, K: int) -> np.ndarray:
    """[K] int64: the episode step of each position (start .. start + n - 1 after K - n left pads of 0)."""
    return np.concatenate([np.zeros(K - n, np.int64), np.arange(start, start + n, dtype=np.int64)])


def left_pad(x: np.ndarray, K: int, value: float = 0.0) -> np.ndarray:
    """x [n, ...] -> [K, ...] with K - n rows of `value` in front (x's dtype kept)."""
    n = x.shape[0]
    if n > K:
        raise ValueError(f"cannot pad {n} rows to {K}")
    pad = np.full((K - n, *x.shape[1:]), value, dtype=x.dtype)
    return np.concatenate([pad, x], axis=0)


def episode_offsets(lengths: np.ndarray) -> np.ndarray:
    """Episode lengths [E] -> the flat index of each episode's first step [E] (steps stored back to back)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def window(arrays: dict[str, np.ndarray], offset: int, t: int, K: int) -> dict[str, np.ndarray]:
    """One left-padded window ending at step t of the episode whose first step is at flat index `offset`.

    arrays: name -> [N_steps, ...] (steps of all episodes back to back). Returns name -> [K, ...] for each
    array, plus "mask" [K] and "timesteps" [K].
    """
    start, n = window_steps(t, K)
    out = {name: left_pad(a[offset + start: offset + start + n], K) for name, a in arrays.items()}
    out["mask"] = padding_mask(n, K)
    out["timesteps"] = timestep_indices(start, n, K)
    return out


def stack_windows(windows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A list of windows (name -> [K, ...]) -> one batch (name -> [B, K, ...])."""
    return {name: np.stack([w[name] for w in windows]) for name in windows[0]}
