"""The process group of a launch: the Accelerator, the processes' share of the machine, leaving together, and
the collectives that make an update on a gathered batch the same on N processes as on one.

`make_accelerator` builds the Accelerator of a launch (gloo where no GPU exists); `gather_rows` and
`gather_padded` give every rank the rows that one process would hold; `global_mean_share` and
`reduce_token_stats` make token means and statistics over a global minibatch (`rlhf.batching.minibatches`)
those of one process. Batch sizes and data order are in `rlhf.batching`, the sharded back ends in
`rlhf.backends`, row-seeded sampling in `rlhf.sampling`.
"""

from __future__ import annotations

import math
import os

import torch


def set_cpu_threads(num_processes_on_node: int) -> None:
    """Give each process an equal share of the cores when several run on one CPU machine."""
    if torch.cuda.is_available() or num_processes_on_node <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_processes_on_node))


def make_accelerator(*, bf16: bool, report_to: str, project_dir: str, micro_batch_size: int = 1):
    """An Accelerator for this launch; several processes on a machine without GPUs run on gloo.

    accelerate picks its multi-CPU (gloo) back end only when asked for the CPU, so a launch of N processes
    where no GPU exists (`accelerate launch --multi_gpu --num_processes N`, or `torchrun`) asks for it here.
    Under DeepSpeed, `micro_batch_size` fills the config's train_micro_batch_size_per_gpu ("auto" is
    otherwise read from a prepared DataLoader, which the stages do not use); it only labels DeepSpeed's
    throughput figures, since the stages cut their own micro-batches.
    """
    from accelerate import Accelerator

    from rlhf.trackers import log_with

    world = int(os.environ.get("WORLD_SIZE", "1"))
    set_cpu_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    accelerator = Accelerator(cpu=world > 1 and not torch.cuda.is_available(),
                              mixed_precision="bf16" if bf16 else "no",
                              log_with=log_with(report_to), project_dir=project_dir)
    ds = accelerator.state.deepspeed_plugin
    if ds is not None and ds.is_auto("train_micro_batch_size_per_gpu"):
        ds.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch_size
    return accelerator


def is_main_process() -> bool:
    """Rank 0 of the launch (or a plain process), for messages printed before or without an Accelerator."""
    return int(os.environ.get("RANK", "0")) == 0


def leave_process_group() -> bool:
    """End a launched run's process group on every rank together: a barrier, then destroy_process_group.
    True when there was a group to leave.

    Called once a command has finished without an error (`rlhf.cli.entry`), never after one: a rank that
    waits at the barrier for a peer that has failed would hang instead of exiting. Without it each process
    tears its group down at interpreter exit, which NCCL reports with a warning on every rank and which, with
    gloo, can abort a rank whose peer has already closed its connections. A no-op on one plain process.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        return True
    return False


def gather_rows(accelerator, rows: torch.Tensor) -> torch.Tensor:
    """Every rank's rows [n_rank, ...] concatenated in rank order [sum n_rank, ...], for metrics over shards of
    different sizes (`gather` and `gather_for_metrics` need equal shapes unless a prepared DataLoader padded
    the shards; these are the stages' own shards, taken by stride, so nothing is duplicated or dropped)."""
    if accelerator.num_processes == 1:
        return rows
    sizes = accelerator.gather(torch.tensor([rows.shape[0]], device=rows.device)).tolist()
    gathered = accelerator.gather(accelerator.pad_across_processes(rows, dim=0))  # [world * max(sizes), ...]
    most = max(sizes)
    return torch.cat([gathered[r * most:r * most + n] for r, n in enumerate(sizes)])


def gather_padded(accelerator, rows: torch.Tensor, pad_value: int, pad_first: bool = False) -> torch.Tensor:
    """Every rank's rows [n_rank, T_rank] padded along dim 1 to the longest T over the ranks (on the left with
    `pad_first`, as left-padded queries are) and concatenated in rank order [sum n_rank, max T]: for a batch
    generated in shards, the tensor one process holds when it generates the whole batch."""
    if accelerator.num_processes == 1:
        return rows
    return gather_rows(accelerator, accelerator.pad_across_processes(rows, dim=1, pad_index=pad_value,
                                                                     pad_first=pad_first))


# ---------------------------------------------------------------- token means over a global minibatch


def global_mean_share(local_mean: torch.Tensor, local_count: float, global_count: float,
                      num_processes: int) -> torch.Tensor:
    """This rank's loss for a mean over the tokens of a whole (global) minibatch, from its mean over its own.

    local_mean = (sum over this rank's tokens) / local_count; returned: that sum / global_count x
    num_processes. DDP, DeepSpeed and FSDP average gradients over processes, so the gradient that every rank
    steps with is that of (sum over all tokens) / global_count: the token mean one process takes over the
    whole minibatch (averaging each rank's own mean would weigh a token by 1 / its rank's count). On one
    process the factor is exactly 1."""
    return local_mean * (num_processes * local_count / max(global_count, 1))


def reduce_token_stats(accelerator, steps: list[dict], counts: list[float], maxima: tuple[str, ...] = ()) -> dict:
    """Token statistics of several optimiser steps, each over its global minibatch, averaged over the steps.

    steps[i] holds this rank's means over its counts[i] tokens of step i (the keys in `maxima`: maxima). A
    step's mean over all ranks is the count-weighted mean of the ranks' means, its maximum the largest of
    theirs (ranks without tokens left out): what one process computes over the whole minibatch. Collective
    (one gather): every rank passes the same number of steps and the same keys.
    """
    keys = list(steps[0])
    local = torch.tensor([[c, *(s[k] for k in keys)] for s, c in zip(steps, counts)],
                         dtype=torch.float64)  # [n_steps, 1 + n_keys]
    if accelerator.num_processes > 1:
        local = accelerator.gather(local.to(accelerator.device)).cpu()
    every = local.view(accelerator.num_processes, len(steps), 1 + len(keys))  # [world, n_steps, 1 + n_keys]
    count, values = every[..., :1], every[..., 1:]
    means = (values * count).sum(0) / count.sum(0).clamp(min=1)  # [n_steps, n_keys]
    peaks = values.masked_fill(count == 0, -math.inf).amax(0)
    peaks = torch.where(peaks.isinf(), values[0], peaks)  # no tokens anywhere: rank 0's placeholder
    is_max = torch.tensor([k in maxima for k in keys])
    return dict(zip(keys, torch.where(is_max, peaks, means).mean(0).tolist()))
