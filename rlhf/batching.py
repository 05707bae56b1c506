"""Batch sizes and data order that are the same on one process and on many.

Global sizes are what the algorithm sees; per-rank (local) sizes are what one process holds. They are derived
in one place (`derive_batch_sizes`, `split_evenly`), and an uneven split fails at start with a message naming
the config key. The data order is a pure function of (seed, step): `global_batch_indices` picks the examples
of an optimiser step (or the prompts of a policy update), `minibatches` cuts a gathered batch into global
minibatches, and each rank takes its `rank_slice` of either. Being stateless, the order after a resume is
just the step number, and N processes see what one process sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.config import ConfigError

EXAMPLE_SEED_STRIDE = 100_003  # the order of SFT and reward examples: seed * stride + epoch seeds a permutation
PROMPT_SEED_STRIDE = 7_919  # the order of the policy stage's prompts


@dataclass(frozen=True)
class BatchSizes:
    global_batch: int  # examples per optimiser step, over all processes
    per_device: int  # examples in one forward/backward on one process (micro-batch)
    num_processes: int
    local_batch: int  # examples per optimiser step on one process = global_batch / num_processes
    grad_accum: int  # micro-batches per optimiser step on one process = local_batch / per_device

    def __str__(self) -> str:
        return (f"global batch {self.global_batch} = {self.num_processes} process(es) x {self.grad_accum} "
                f"accumulation step(s) x {self.per_device} per device")


def split_evenly(value: int, num_processes: int, name: str) -> int:
    """This rank's share of a global size `name` (a config key), or a ConfigError naming it."""
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")
    if value % num_processes:
        raise ConfigError(f"{name} {value} does not split evenly over {num_processes} processes; make it a "
                          f"multiple of {num_processes}")
    return value // num_processes


def derive_batch_sizes(global_batch: int, per_device: int, num_processes: int,
                       names: tuple[str, str] = ("global_batch_size", "per_device_batch_size")) -> BatchSizes:
    """Per-rank batch and gradient accumulation from the global batch; `names` are the config keys to blame."""
    if per_device < 1:
        raise ConfigError(f"{names[1]} must be >= 1, got {per_device}")
    local = split_evenly(global_batch, num_processes, names[0])
    if local % per_device:
        raise ConfigError(f"per-process batch {local} ({names[0]} {global_batch} / {num_processes} "
                          f"processes) is not a multiple of {names[1]} {per_device}")
    return BatchSizes(global_batch, per_device, num_processes, local, local // per_device)


def global_batch_indices(step: int, num_examples: int, global_batch: int, seed: int, *, name: str = "global_batch_size",
                         seed_stride: int = EXAMPLE_SEED_STRIDE) -> tuple[list[int], int]:
    """The dataset indices of optimiser step `step` and its epoch, as a pure function of (seed, step).

    Each epoch is a fresh permutation, seeded by seed * seed_stride + epoch, cut into full global batches (the
    remainder is left out of that epoch). A global batch larger than the data set is a ConfigError naming the
    config key `name`. The SFT and reward stages draw their examples with EXAMPLE_SEED_STRIDE, the policy
    stage its prompts with PROMPT_SEED_STRIDE: each keeps the order its runs have always had.
    """
    per_epoch = num_examples // global_batch
    if per_epoch == 0:
        raise ConfigError(f"{name} {global_batch} is larger than the data set ({num_examples} examples)")
    epoch, b = divmod(step, per_epoch)
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * seed_stride + epoch))
    return order[b * global_batch:(b + 1) * global_batch].tolist(), epoch


def rank_slice(indices: list, rank: int, num_processes: int) -> list:
    """This rank's contiguous share of a global batch (sizes checked by `derive_batch_sizes`)."""
    n = len(indices) // num_processes
    return indices[rank * n:(rank + 1) * n]


def minibatches(seed: int, step: int, epoch: int, n_rows: int, minibatch_size: int) -> list[torch.Tensor]:
    """The minibatches (row indices, each [minibatch_size]) of one pass over a global batch of `n_rows`: a
    seeded permutation cut in order. The same on every rank and any number of processes, and after a resume.

    A batch that every rank holds whole (gathered) is cut into these global minibatches; each rank takes its
    `rank_slice` of each (the gradient of a token mean over the global minibatch comes from
    `rlhf.distributed.global_mean_share`, statistics over it from `rlhf.distributed.reduce_token_stats`)."""
    if n_rows % minibatch_size:
        raise ConfigError(f"minibatch_size {minibatch_size} does not divide the batch of {n_rows} rows")
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + epoch)
    return list(torch.randperm(n_rows, generator=generator).split(minibatch_size))
