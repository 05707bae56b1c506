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


# ------------------------------------------------------------------------------- preference losses


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float = 0.0,
                       label_smoothing: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per-pair Bradley-Terry loss -log sigma(r_c - r_r - margin), with label smoothing eps:

        (1 - eps) * -log sigma(d) + eps * -log sigma(-d),   d = r_c - r_r - margin

    r_chosen, r_rejected: [N]; margin and label_smoothing: scalars or [N]. Returns [N].
    eps = 0.5 is the loss of a tie (both orders equally likely); a small eps models label noise
    (the "conservative" DPO/RM variant). The margin follows Llama 2's reward model (Touvron et al., 2023).
    Equal rewards, no margin, give log 2 whatever eps.
    """
    d = r_chosen - r_rejected - margin
    return -(1 - label_smoothing) * F.logsigmoid(d) - label_smoothing * F.logsigmoid(-d)


def reward_centering_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """mean((r_c + r_r)^2) over pairs [N] -> scalar: pulls rewards toward zero mean, where Bradley-Terry
    alone leaves the offset free (Eisenstein et al., 2023, "Helping or Herding?"; TRL's
    center_rewards_coefficient)."""
    return ((r_chosen + r_rejected) ** 2).mean()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 10) -> float:
    """ECE of predicted probabilities [N] against 0/1 outcomes [N], with equal-width bins on [0, 1]:
    sum over bins of (bin size / N) * |mean outcome - mean probability|."""
    probs, labels = probs.double().flatten(), labels.double().flatten()
    bins = torch.clamp((probs * n_bins).long(), max=n_bins - 1)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.double().mean() * (labels[sel].mean() - probs[sel].mean()).abs()
    return float(ece)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last real token of each row: attention_mask [B, T] of 0/1 -> [B].

    Works for left and right padding alike and never looks at token ids, so a pad token equal to EOS
    cannot move it.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # [T]
    return (attention_mask.long() * positions).argmax(dim=1)
