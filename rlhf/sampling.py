"""Sampling that is the same on one process and on many: row-seeded draws and the top-p nucleus.

`RowSeededSampler` draws each completion from its own seed (`row_seed`), so N processes sample what one
samples; `seeded_sampling_kwargs` hands it to `generate`. `nucleus` is the one top-p cut of the toolkit:
the sampler keeps its tokens, and `rlhf.losses.top_p_support` (ILQL's acting support) is built on it.
"""

from __future__ import annotations

import torch


def nucleus(probs: torch.Tensor, top_p: float, rank_by: torch.Tensor | None = None,
            stable: bool = True) -> torch.Tensor:
    """The top-p nucleus: probabilities [B, V] -> bool [B, V], True on the smallest set of most likely tokens
    whose probabilities sum to at least `top_p`: a token is kept while the tokens ranked above it hold less
    than top_p, so the most likely one always is.

    Tokens are ranked by `rank_by` (log-probs or logits, which separate tokens whose probabilities round to
    the same float; default: `probs`), ties broken by index; with `stable` false, tied tokens come in the order
    of torch's default sort instead (its own, per row). The mass is summed in `probs`' own dtype."""
    order = torch.argsort(probs if rank_by is None else rank_by, dim=-1, descending=True, stable=stable)
    sorted_probs = probs.gather(-1, order)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
    return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, before < top_p)


def row_seed(seed: int, step: int, row: int) -> int:
    """The sampling seed of global row `row` of step `step`: the same on any number of processes."""
    return (seed * 1_000_003 + step) * 1_000_033 + row


class RowSeededSampler:
    """A `generate` logits processor that samples each row from its own random stream.

    Row r's token at position t is drawn from softmax(logits / temperature), cut to the top-p nucleus, by
    inverse-CDF sampling with uniform u[r, t] from a generator seeded by `row_seed(seed, step, first_row + r)`.
    A row's tokens therefore depend only on (seed, step, its global row number) and its logits, not on which
    process samples it or on its neighbours in the batch, so N processes reproduce one process's samples.
    The processor returns scores that are 0 at the drawn token and -inf elsewhere: run `generate` with
    do_sample=False (its argmax then picks the drawn token; no other warper applies).
    """

    def __init__(self, seed: int, step: int, first_row: int, n_rows: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0):
        self.temperature, self.top_p = temperature, top_p
        self.uniforms = torch.stack([  # [n_rows, max_new_tokens]
            torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(row_seed(seed, step, first_row + r)),
                       dtype=torch.float64)
            for r in range(n_rows)])
        self.start = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        t = input_ids.shape[1] - self.start
        probs = torch.softmax(scores.double() / self.temperature, dim=-1)  # [N, V]
        if self.top_p < 1.0:  # renormalised over the nucleus
            # torch's default sort orders tied tokens at the nucleus's edge, as this sampler always has
            probs = probs.masked_fill(~nucleus(probs, self.top_p, stable=False), 0.0)
            probs = probs / probs.sum(-1, keepdim=True)
        cdf = probs.cumsum(-1)
        u = self.uniforms[:, t].to(cdf.device)[:, None] * cdf[:, -1:]  # [N, 1], scaled to the total mass
        token = torch.searchsorted(cdf, u).clamp(max=probs.shape[-1] - 1)  # [N, 1]
        token = torch.where(probs.gather(-1, token) > 0, token, probs.argmax(-1, keepdim=True))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, token, 0.0)


def seeded_sampling_kwargs(seed: int, step: int, first_row: int, n_rows: int, max_new_tokens: int,
                           temperature: float, top_p: float) -> dict:
    """`generate` keyword arguments for row-seeded sampling (see RowSeededSampler)."""
    from transformers import LogitsProcessorList

    sampler = RowSeededSampler(seed, step, first_row, n_rows, max_new_tokens, temperature, top_p)
    return {"do_sample": False, "logits_processor": LogitsProcessorList([sampler]),
            "max_new_tokens": max_new_tokens}
