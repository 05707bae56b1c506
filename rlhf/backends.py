"""What a stage needs to run unchanged on every accelerate back end: one process, DDP, DeepSpeed ZeRO-2/3, FSDP2.

`shards_parameters` / `shards_optimizer` say what a rank does not hold whole; `micro_batch` synchronises
gradients on the last micro-batch (DeepSpeed's step included); `gathered_for_generation` gathers whole weights
once per generation phase under ZeRO-3/FSDP2 (`fsdp2_unsharded`); `full_state_dict` gathers the model for
saving. Checkpoints of a sharded optimiser go through `accelerator.save_state` (`rlhf.runs`).

Every use of a private or version-dependent name of torch or accelerate is in `_Internals`, at the end.
"""

from __future__ import annotations

import contextlib


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
    elif _Internals.is_fsdp2(accelerator):
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
    saved = [_Internals.reshard_after_forward(m) for m in modules]
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    for m in modules:
        m.unshard()
    try:
        yield
    finally:
        for m, setting in zip(modules, saved):
            m.reshard()
            _Internals.restore_reshard_after_forward(m, setting)


class _Internals:
    """The one adapter over private and version-dependent names of torch and accelerate.

    Why it is needed: torch's FSDP2 lets a module's reshard-after-forward setting be changed
    (`FSDPModule.set_reshard_after_forward`) but not read, so keeping the weights whole for a generation
    phase and putting the setting back afterwards reads FSDP2's private state; and accelerate's FSDP2 flag is
    newer than its FSDP support. Each method is gated on what the installed release has (these private names
    change without notice, so the gate is the attribute itself, not a version number); the rest of
    rlhf.backends uses public API only.
    """

    @staticmethod
    def is_fsdp2(accelerator) -> bool:
        # `Accelerator.is_fsdp2` exists only in releases that know FSDP2; before them, FSDP is version 1
        return getattr(accelerator, "is_fsdp2", False)

    @staticmethod
    def reshard_after_forward(module) -> tuple[bool | None, bool]:
        """(automatic, reshard) of an FSDP2 module: whether torch chooses the setting itself (None in releases
        without that choice) and whether parameters are resharded after forward (a parameter group that
        reshards has a post-forward mesh)."""
        state = module._get_fsdp_state()
        # newer releases hold a list of parameter groups per module, older ones a single group
        groups = getattr(state, "_fsdp_param_groups", None) or [state._fsdp_param_group]
        return (getattr(state, "_auto_reshard_after_forward", None),
                any(g is not None and g.post_forward_mesh_info is not None for g in groups))

    @staticmethod
    def restore_reshard_after_forward(module, setting: tuple[bool | None, bool]) -> None:
        """Put back what `reshard_after_forward` read: the public setter for the setting, and the private
        automatic flag, which the setter clears."""
        automatic, reshard = setting
        module.set_reshard_after_forward(reshard, recurse=False)
        if automatic is not None:
            module._get_fsdp_state()._auto_reshard_after_forward = automatic
