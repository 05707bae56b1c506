"""Pure loss math, with shapes in the docstrings. Trainers call these; they do not re-derive them inline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood and the number of target tokens.

    logits: [B, T, V] for positions 0..T-1; labels: [B, T] with IGNORE_INDEX where no loss is taken.
    Position t predicts labels[:, t + 1]. Returns (sum of NLL over targets, count of targets), both scalars.
    Summing (not averaging) per micro-batch lets the caller normalise by the global batch's target count,
    which makes gradient accumulation and data parallelism give the same gradient as one big batch.
    """
    shift_logits = logits[:, :-1, :].float()  # [B, T-1, V]
    shift_labels = labels[:, 1:]  # [B, T-1]
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="sum")
    return nll, (shift_labels != IGNORE_INDEX).sum()
