"""Evaluation statistics as pure functions: bootstrap intervals, win rates with ties, text diversity.

Kept apart from `rlhf.losses` (training math): nothing here is differentiated.
"""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` [N] (one value per independent unit, e.g. per
    prompt, so that samples of one prompt are not treated as independent). N = 1 gives (v, v)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)  # [n_boot]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def win_outcomes(scores_a, scores_b, tie_tolerance: float = 0.0) -> np.ndarray:
    """Per-comparison outcome of A against B: 1 win, 0 loss, 0.5 tie (|a - b| <= tie_tolerance). [N]."""
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"win_outcomes: shapes differ {a.shape} vs {b.shape}")
    d = a - b
    return np.where(np.abs(d) <= tie_tolerance, 0.5, (d > 0).astype(np.float64))


def mean_and_ci(per_unit, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """{"mean", "ci_low", "ci_high", "n"} of per-unit values [N]."""
    x = np.asarray(per_unit, dtype=np.float64)
    lo, hi = bootstrap_ci(x, n_boot, confidence, seed)
    return {"mean": float(x.mean()) if x.size else float("nan"), "ci_low": lo, "ci_high": hi, "n": int(x.size)}


def ngrams(tokens: list, n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique word n-grams over all n-grams, pooled over the texts."""
    grams = [g for t in texts for g in ngrams(t.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 3) -> float:
    """Fraction of a text's word n-grams that repeat an earlier n-gram of the same text (0: none repeat)."""
    grams = ngrams(text.split(), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0
