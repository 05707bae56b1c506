"""Batch sizes and data order that are the same on one process and on many.

Global sizes are what the algorithm sees; per-rank (local) sizes are what one process holds. They are
derived in one place, and an uneven split fails at start with a message naming the sizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from rlhf.config import ConfigError


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


def derive_batch_sizes(global_batch: int, per_device: int, num_processes: int) -> BatchSizes:
    if global_batch < 1 or per_device < 1:
        raise ConfigError(f"global_batch_size ({global_batch}) and per_device_batch_size ({per_device}) "
                          "must be >= 1")
    if global_batch % num_processes:
        raise ConfigError(f"global_batch_size {global_batch} does not split evenly over {num_processes} "
                          "processes")
    local = global_batch // num_processes
    if local % per_device:
        raise ConfigError(f"per-process batch {local} (global_batch_size {global_batch} / {num_processes} "
                          f"processes) is not a multiple of per_device_batch_size {per_device}")
    return BatchSizes(global_batch, per_device, num_processes, local, local // per_device)


def global_batch_indices(step: int, num_examples: int, global_batch: int, seed: int) -> tuple[list[int], int]:
    """The dataset indices of optimiser step `step` and its epoch, as a pure function of (seed, step).

    Each epoch is a fresh seeded permutation cut into full global batches (the remainder is left out of
    that epoch). Being stateless, the data position after a resume is just the step number.
    """
    per_epoch = num_examples // global_batch
    if per_epoch == 0:
        raise ConfigError(f"global_batch_size {global_batch} is larger than the data set ({num_examples} examples)")
    epoch, b = divmod(step, per_epoch)
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[b * global_batch:(b + 1) * global_batch].tolist(), epoch


def rank_slice(indices: list, rank: int, num_processes: int) -> list:
    """This rank's contiguous share of a global batch (sizes checked by `derive_batch_sizes`)."""
    n = len(indices) // num_processes
    return indices[rank * n:(rank + 1) * n]


def set_cpu_threads(num_processes_on_node: int) -> None:
    """Give each process an equal share of the cores when several run on one CPU machine."""
    if torch.cuda.is_available() or num_processes_on_node <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_processes_on_node))


def make_accelerator(*, bf16: bool, report_to: str, project_dir: str):
    """An Accelerator for this launch; several processes on a machine without GPUs run on gloo.

    accelerate picks its multi-CPU (gloo) back end only when asked for the CPU, so a launch of N processes
    where no GPU exists (`accelerate launch --multi_gpu --num_processes N`, or `torchrun`) asks for it here.
    """
    from accelerate import Accelerator

    world = int(os.environ.get("WORLD_SIZE", "1"))
    set_cpu_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return Accelerator(cpu=world > 1 and not torch.cuda.is_available(),
                       mixed_precision="bf16" if bf16 else "no",
                       log_with=None if report_to == "none" else report_to, project_dir=project_dir)
