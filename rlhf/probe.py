"""Proxy against gold during policy training: a fixed set of held-out prompts scored every few updates.

A policy optimised against a learned reward model can raise the reward model's score (the proxy) while the
quality it stands for (the gold judge) falls: over-optimisation (Gao et al., 2022, "Scaling laws for reward
model overoptimization"). Their picture plots both scores against the policy's KL to its reference; the probe
records the three numbers as training goes, so the turn is seen rather than inferred:

    probe/proxy   the score the policy optimises (the reward model, ensemble aggregate included), mean
    probe/gold    the gold judge's score of the same completions, mean
    probe/kl      the sequence KL to the reference (k1, summed over the response tokens), mean

The completions are drawn with row seeds that depend only on (probe seed, row), so every probe samples the
same random numbers: a change between two probes is the policy's, not the draw's. Every process computes
the whole probe (the prompts are few), so no gather is needed and sharded back ends stay collective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rlhf.rollout import length_mask, sample
from rlhf.sampling import seeded_sampling_kwargs

PROBE_SEED_OFFSET = 1_000_003  # probe draws use seeds apart from the training updates' (seed, update) draws


@dataclass
class HeldOutProbe:
    """Held-out prompts (records as `rlhf.rollout.load_prompts` returns them) and how to sample them."""

    prompts: list[dict]
    samples: int  # completions per prompt
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int

    def run(self, model, tokenizer, device, *, proxy: Callable, gold: Callable, policy_logprobs: Callable,
            reference_logprobs: Callable, context: Callable | None = None) -> dict[str, float]:
        """Sample, score by proxy and gold, and measure the KL to the reference.

        model: the policy (unwrapped; put in eval mode here, and back); proxy, gold: f(prompts, completions,
        records) -> [N] scores (a tensor or a list); policy_logprobs, reference_logprobs: f(sequences [N, T],
        mask [N, T], n_query) -> [N, T_r]; context: a function returning the context manager that sampling and
        the log-prob passes run in (weights gathered under ZeRO-3/FSDP2, autocast)."""
        from contextlib import nullcontext

        was_training = model.training
        model.eval()
        n = len(self.prompts) * self.samples
        with torch.no_grad(), (context() if context is not None else nullcontext()):
            out = sample(model, tokenizer, [p["prompt"] for p in self.prompts], self.samples, device,
                         **seeded_sampling_kwargs(self.seed + PROBE_SEED_OFFSET, 0, 0, n, self.max_new_tokens,
                                                  self.temperature, self.top_p))
            rmask = length_mask(out.lengths, out.response.shape[1])  # [N, T_r]
            kl = ((policy_logprobs(out.sequences, out.mask, out.n_query).float()
                   - reference_logprobs(out.sequences, out.mask, out.n_query).float()) * rmask).sum(1)  # [N]
        model.train(was_training)
        records = [p for p in self.prompts for _ in range(self.samples)]
        prompts = [r["prompt"] for r in records]
        as_tensor = lambda x: torch.as_tensor(x, dtype=torch.float64).flatten().cpu()
        proxy_scores = as_tensor(proxy(prompts, out.texts, records))
        gold_scores = as_tensor(gold(prompts, out.texts, records))
        return {"probe/proxy": proxy_scores.mean().item(), "probe/gold": gold_scores.mean().item(),
                "probe/kl": kl.double().mean().item(), "probe/length": out.lengths.double().mean().item()}
