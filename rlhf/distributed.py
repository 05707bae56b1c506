"""Batch sizes, data order and sampling that are the same on one process and on many, and the few things a
stage needs to run unchanged on every accelerate back end (one process, DDP, DeepSpeed ZeRO-2/3, FSDP2).

Global sizes are what the algorithm sees; per-rank (local) sizes are what one process holds. They are
derived in one place, and an uneven split fails at start with a message naming the config key.
Back ends: `micro_batch` (gradient sync on the last micro-batch, DeepSpeed's step included),
`gathered_for_generation` (whole weights once per generation phase under ZeRO-3/FSDP2), `full_state_dict`
(the model gathered for saving), `shards_optimizer` (checkpoints through accelerator.save_state).
`RowSeededSampler` draws each completion from its own seed, so N processes sample what one samples;
`gather_padded`, `minibatches`, `global_mean_share` and `reduce_token_stats` make updates on a gathered batch
(the policy's) the same on N processes as on one: global minibatches, token means and statistics.
"""

from __future__ import annotations

import contextlib
import math
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


# ------------------------------------------------------------------------ minibatches of a global batch
# A batch that every rank holds whole (gathered) is cut into global minibatches, a pure function of
# (seed, step, epoch); each rank takes its `rank_slice` of each. The gradient of a token mean over the global
# minibatch comes from `global_mean_share`, and statistics over it from `reduce_token_stats`.


def minibatches(seed: int, step: int, epoch: int, n_rows: int, minibatch_size: int) -> list[torch.Tensor]:
    """The minibatches (row indices, each [minibatch_size]) of one pass over a global batch of `n_rows`: a
    seeded permutation cut in order. The same on every rank and any number of processes, and after a resume."""
    if n_rows % minibatch_size:
        raise ConfigError(f"minibatch_size {minibatch_size} does not divide the batch of {n_rows} rows")
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + epoch)
    return list(torch.randperm(n_rows, generator=generator).split(minibatch_size))


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

# ------------------------------------------------------------------------------ sharded back ends


def shards_parameters(accelerator) -> bool:
    """True under DeepSpeed ZeRO-3 and FSDP: no rank holds the whole model, so whole-model work (saving,
    generation) has to gather it, collectively."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    return (accelerator.distributed_type == DistributedType.DEEPSPEED
            and accelerator.state.deepspeed_plugin.zero_stage == 3)


def shards_optimizer(accelerator) -> bool:
    """True under DeepSpeed (ZeRO >= 1) and FSDP: each rank holds a shard of the optimiser state, so a
    checkpoint is written by every rank through `accelerator.save_state`."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def full_state_dict(accelerator, model) -> dict | None:
    """The whole model's state dict, gathered from the shards, for saving on the main process; None where
    every rank already holds the whole model (then save the unwrapped model as it is). Collective: every
    rank must call it."""
    if not shards_parameters(accelerator):
        return None
    return accelerator.get_state_dict(model)


@contextlib.contextmanager
def micro_batch(accelerator, model, last: bool):
    """One micro-batch of a gradient-accumulation step that the stage cuts itself.

    Gradients are synchronised only on the `last` micro-batch of the step: DDP and FSDP2 skip their
    all-reduce before it (`accelerator.no_sync`), and DeepSpeed, which steps its engine inside
    `accelerator.backward` whenever `accelerator.sync_gradients` is true, steps only then.
    """
    accelerator.sync_gradients = last
    try:
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            yield
    finally:
        accelerator.sync_gradients = True


@contextlib.contextmanager
def gathered_for_generation(accelerator, model):
    """Whole weights for one generation phase, gathered once rather than at every token's forward pass.

    `model` is the prepared (wrapped) model; generate with its unwrapped module inside the block.
      * DeepSpeed ZeRO-3: parameters gathered with deepspeed.zero.GatheredParameters and ZeRO's per-module
        fetch/release hooks lifted for the block (TRL's `unwrap_model_for_generation`).
      * FSDP2: every FSDP module unsharded once and kept unsharded across forward passes
        (`reshard_after_forward` off), resharded at the end.
      * one process, DDP, ZeRO-1/2: a no-op (every rank holds the whole model).
    Collective under ZeRO-3 and FSDP2: every rank must enter the block, even one with nothing to generate.
    Inside it no collective runs, so ranks may make different numbers of forward passes.
    """
    from accelerate.utils import DistributedType

    if not shards_parameters(accelerator):
        yield
    elif accelerator.distributed_type == DistributedType.DEEPSPEED:
        from trl.models.utils import unwrap_model_for_generation

        with unwrap_model_for_generation(model, accelerator):
            yield
    elif getattr(accelerator, "is_fsdp2", False):
        with fsdp2_unsharded(model):
            yield
    else:
        raise NotImplementedError("FSDP version 1 is not supported for generation; use the fsdp2 preset "
                                  "(configs/accelerate/fsdp2.yaml)")


@contextlib.contextmanager
def fsdp2_unsharded(model):
    """Unshard every FSDP2 (`fully_shard`) module of `model` once; keep the weights whole across forward
    passes; reshard and restore each module's reshard-after-forward setting on exit."""
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    saved = []
    for m in modules:
        state = m._get_fsdp_state()
        groups = getattr(state, "_fsdp_param_groups", None) or [state._fsdp_param_group]
        saved.append((getattr(state, "_auto_reshard_after_forward", None),
                      any(g is not None and g.post_forward_mesh_info is not None for g in groups)))
        m.set_reshard_after_forward(False, recurse=False)
    for m in modules:
        m.unshard()
    try:
        yield
    finally:
        for m, (auto, reshard) in zip(modules, saved):
            m.reshard()
            m.set_reshard_after_forward(reshard, recurse=False)
            if auto is not None:
                m._get_fsdp_state()._auto_reshard_after_forward = auto


# ------------------------------------------------------------------------------ reproducible sampling


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
        if self.top_p < 1.0:  # nucleus: keep the most likely tokens until their mass reaches top_p
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the strictly more likely tokens
            sorted_probs = sorted_probs.masked_fill(before >= self.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
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
