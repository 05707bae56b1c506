"""A linear reward head fitted as well as frozen features allow: L2-regularised Bradley-Terry (logistic)
regression on standardised feature differences, with the regularisation strength and the feature set chosen
on a validation part of the training pairs, then refitted on all of them; optionally an ensemble of heads on
bootstrap resamples.

The objective is convex, so it is minimised to convergence (L-BFGS, full batch, float64) rather than trained
for a fixed number of epochs: the answer depends on the data and the strength, not on a learning rate, an
initialisation or a data order. scikit-learn's LogisticRegression would do the fitting, but it is not a
dependency and cannot take the per-pair label smoothing (ties are 0.5) or bootstrap weights as one loss; this
is 30 lines of torch on the same loss as the SGD path (`rlhf.losses.bradley_terry_loss`).

Standardising a feature x to (x - mu) / sigma changes a pair's difference x_c - x_r to (x_c - x_r) / sigma (mu
cancels), so a head w on standardised features is the head w / sigma on raw features, without a bias: what
the model stores and what transformers' `score` layer computes.

Only the training pairs are passed in here; held-out pairs never reach a choice.
"""

from __future__ import annotations

import torch

from rlhf.losses import bradley_terry_loss

DEFAULT_L2_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def split_validation(groups: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair indices (fit, validation) with whole groups (pairs of one prompt) on one side: groups [n] of
    integer ids -> two sorted index tensors; the validation part holds about `fraction` of the pairs and at
    least one group, the fit part at least one group."""
    ids = torch.unique(groups)
    if len(ids) < 2:
        raise ValueError("a validation split needs pairs from at least 2 prompts")
    order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
    target, val_groups, count = fraction * len(groups), [], 0
    for g in order[:-1].tolist():  # the last group always stays in the fit part
        if val_groups and count >= target:
            break
        val_groups.append(g)
        count += int((groups == g).sum())
    in_val = torch.isin(groups, torch.tensor(val_groups))
    return torch.nonzero(~in_val).squeeze(1), torch.nonzero(in_val).squeeze(1)


def feature_scale(features: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """Standard deviation of each feature over the texts `texts` (indices into features [T, D]) -> [D];
    constant features get 1 (their differences are 0 anyway)."""
    sigma = features[texts].double().std(0, correction=0)
    return torch.where(sigma > 1e-8 * sigma.max().clamp(min=1e-30), sigma, torch.ones_like(sigma))


def fit_bt(diff: torch.Tensor, smoothing: torch.Tensor, l2: float, weights: torch.Tensor | None = None,
           init: torch.Tensor | None = None, max_iter: int = 500) -> torch.Tensor:
    """argmin_w  sum_i a_i BT(diff_i . w; eps_i) / sum_i a_i + l2 / 2 |w|^2:  diff [n, D], smoothing eps [n],
    pair weights a [n] (default 1) -> w [D] (float64)."""
    diff = diff.double()
    a = torch.ones(len(diff), dtype=torch.float64) if weights is None else weights.double()
    a = a / a.sum()
    eps = smoothing.double()
    w = (init.double().clone() if init is not None else torch.zeros(diff.shape[1], dtype=torch.float64))
    w.requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        s = diff @ w
        loss = (a * bradley_terry_loss(s, torch.zeros_like(s), 0.0, eps)).sum() + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def pair_accuracy_and_loss(diff: torch.Tensor, smoothing: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    """(accuracy over decided pairs (eps < 0.5), mean BT loss) of the head w on differences diff [n, D]."""
    s = diff.double() @ w.double()
    decided = smoothing < 0.5
    acc = (s[decided] > 0).double().mean().item() if decided.any() else float("nan")
    return acc, bradley_terry_loss(s, torch.zeros_like(s), 0.0, smoothing.double()).mean().item()


def choose_head(features: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, smoothing: torch.Tensor,
                groups: torch.Tensor, candidates: dict[str, list[int]], l2_grid=DEFAULT_L2_GRID,
                fraction: float = 0.2, seed: int = 0, select_by: str = "accuracy") -> dict:
    """Choose a feature set (a name in `candidates`: columns of features [T, D]) and an L2 strength on a
    validation part of the training pairs (chosen/rejected text indices [n], smoothing [n], prompt groups
    [n]); fitted on the rest, standardised by the fit part's texts. Returns {"features", "l2",
    "val_accuracy", "val_loss", "fit_pairs", "val_pairs", "table": [one row per candidate and strength]}."""
    fit_idx, val_idx = split_validation(groups, fraction, seed)
    fit_texts = torch.unique(torch.cat([chosen[fit_idx], rejected[fit_idx]]))
    sigma = feature_scale(features, fit_texts)
    raw = features[chosen].double() - features[rejected].double()  # [n, D]
    table = []
    for name, cols in candidates.items():
        diff = raw[:, cols] / sigma[cols]
        w = None
        for l2 in sorted(l2_grid, reverse=True):  # strong to weak, each warm-started from the previous
            w = fit_bt(diff[fit_idx], smoothing[fit_idx], l2, init=w)
            fit_acc, _ = pair_accuracy_and_loss(diff[fit_idx], smoothing[fit_idx], w)
            acc, loss = pair_accuracy_and_loss(diff[val_idx], smoothing[val_idx], w)
            table.append({"features": name, "l2": l2, "fit_accuracy": fit_acc, "val_accuracy": acc,
                          "val_loss": loss})
    def acc(r):  # a validation part of ties only has no accuracy: the loss decides
        return r["val_accuracy"] if r["val_accuracy"] == r["val_accuracy"] else 0.0

    if select_by == "accuracy":
        best = max(table, key=lambda r: (acc(r), -r["val_loss"]))
    elif select_by == "loss":
        best = min(table, key=lambda r: (r["val_loss"], -acc(r)))
    else:
        raise ValueError(f"unknown select_by {select_by!r} (accuracy or loss)")
    return {"features": best["features"], "l2": best["l2"], "val_accuracy": best["val_accuracy"],
            "val_loss": best["val_loss"], "fit_pairs": len(fit_idx), "val_pairs": len(val_idx),
            "select_by": select_by, "table": table}


def fit_members(features: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, smoothing: torch.Tensor,
                cols: list[int], l2: float, n_members: int = 1, seed: int = 0) -> torch.Tensor:
    """Heads on raw features (standardisation folded in) fitted on all the given pairs -> [N, len(cols)].
    One member: the plain fit. Several: member m is fitted on a bootstrap resample of the pairs (drawn with
    seed + m), so the members disagree where the data leave the head uncertain."""
    texts = torch.unique(torch.cat([chosen, rejected]))
    sigma = feature_scale(features[:, cols], texts)
    diff = (features[chosen][:, cols].double() - features[rejected][:, cols].double()) / sigma
    heads = []
    for m in range(n_members):
        weights = None
        if n_members > 1:
            draw = torch.randint(len(diff), (len(diff),), generator=torch.Generator().manual_seed(seed + m))
            weights = torch.bincount(draw, minlength=len(diff))
        heads.append(fit_bt(diff, smoothing, l2, weights) / sigma)
    return torch.stack(heads).float()
