"""Direct preference optimisation (Rafailov et al., 2023) on the same preference pairs as the reward stage.

    rlhf dpo --config configs/dpo.yaml
    rlhf dpo --config configs/tiny/dpo.yaml --max_steps 5
    accelerate launch --multi_gpu --num_processes 2 scripts/dpo.py --config configs/dpo.yaml

The training is TRL's `DPOTrainer`: its loss (sigmoid, IPO, hinge, robust, ...), its reference handling (the
starting policy: given a model with LoRA adapters, TRL keeps a frozen copy of them as a "ref" adapter, so an SFT
adapter that training continues is its own reference, not the base model; otherwise a frozen copy of the
model), its tokenisation of
conversational pairs through the chat template, and its loop on transformers' Trainer. The toolkit adds around it:

- the pairs: every format `rlhf.preferences` reads (TRL standard/conversational/implicit, HH-RLHF, the label
  stage's pairs.jsonl), files or hub splits, several comma-separated, exactly as the reward stage reads them;
  tie pairs carry no preference for DPO and are left out (counted in a notice);
- the output contract of every stage: config.yaml, log.jsonl with namespaced keys (`train/loss`,
  `train/rewards/margins`, `eval/rewards/accuracies`, ...), metrics.json, model/ with its model card;
- batch sizes named as in the other stages (global and per-device; the accumulation is derived);
- exact resume. Here the toolkit does not write its own `checkpoints/step-NNNNNN`: the checkpoints are the
  Trainer's own (`checkpoints/checkpoint-N`), since its resume restores the optimiser, the scheduler, every
  RNG and the position in the seeded data order, which is what an exact resume needs; `stop_after_step`
  stops there as if interrupted and `--resume true` continues from the newest one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from rlhf.config import ConfigError, RunConfig, option, require_at_least

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
              "apo_zero", "apo_down", "sigmoid_norm")


@dataclass
class DPOConfig(RunConfig):
    """Direct preference optimisation of the SFT policy on preference pairs (TRL's DPOTrainer)."""

    output_dir: str = option("runs/dpo", help="Where the DPO policy's model/ and the run files go.")
    model_name_or_path: str = option("runs/quickstart/sft/model", help="Initial policy, also the reference: "
                                     "hub id, local model or adapter directory, or an alias.")
    train_pairs: str = option("reward_data/pairs_train.jsonl", help="Preference pairs: any format the reward "
                              "stage reads (rlhf.preferences), file or hub; several comma-separated.")
    max_train_pairs: int = option(0, help="Use only the first this many pairs of each train_pairs source (0: all).")
    eval_pairs: str = option("reward_data/pairs_test.jsonl", help="Held-out pairs (empty: none).")
    pairs_format: str = option("auto", help="Format of the pair files.",
                               choices=("auto", "standard", "conversational", "implicit",
                                        "implicit_conversational", "hh"))
    dataset_split: str = option("train", help="Split to read for hub datasets.")
    skip_invalid: bool = option(False, help="Skip bad pair records (counted) instead of stopping at the first.")
    max_length: int = option(256, help="Tokens per prompt + response (TRL truncates from the end).")
    beta: float = option(0.1, help="DPO's beta: the strength of the implicit KL constraint to the reference.")
    loss_type: str = option("sigmoid", help="TRL's DPO loss.", choices=LOSS_TYPES)
    label_smoothing: float = option(0.0, help="Robust DPO / EXO label smoothing (probability of a flipped label).")
    use_peft: bool = option(True, help="Train LoRA adapters (the reference is the model with adapters off); "
                            "false: all weights, with a frozen copy as the reference.")
    lora_r: int = option(16, help="LoRA rank.")
    lora_alpha: int = option(32, help="LoRA alpha.")
    lora_dropout: float = option(0.0, help="LoRA dropout.")
    learning_rate: float = option(5e-5, help="Peak learning rate (AdamW).")
    lr_scheduler: str = option("linear", help="Decay after warmup (TRL's default: linear).",
                               choices=("cosine", "linear", "constant"))
    warmup_ratio: float = option(0.0, help="Fraction of the steps spent warming up (in [0, 1)).")
    weight_decay: float = option(0.0, help="AdamW weight decay.")
    num_epochs: float = option(1.0, help="Passes over the pairs (ignored when max_steps > 0).")
    max_steps: int = option(-1, help="Optimiser steps; > 0 overrides num_epochs.")
    global_batch_size: int = option(8, help="Pairs per optimiser step, over all processes.")
    per_device_batch_size: int = option(8, help="Pairs per forward/backward on one process.")
    max_grad_norm: float = option(1.0, help="Gradient-norm clip.")
    bf16: bool = option(False, help="bf16 mixed precision (TRL's own default is on; here off, as the other stages).")
    gradient_checkpointing: bool = option(False, help="Recompute activations in backward to save memory.")
    save_every: int = option(0, help="Checkpoint every this many steps (0: only when stopping).")
    keep_checkpoints: int = option(2, help="Newest checkpoints to keep (0 keeps all).")
    stop_after_step: int = option(0, help="Checkpoint and stop after this step, as if interrupted; continue with "
                                  "--resume true. 0: off.")

    RESUMABLE_CHANGES = RunConfig.RESUMABLE_CHANGES + ("save_every", "keep_checkpoints", "stop_after_step")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "max_length", "lora_r", "global_batch_size", "per_device_batch_size")
        require_at_least(self, 0, "max_train_pairs", "save_every", "keep_checkpoints", "stop_after_step")
        if not self.learning_rate > 0 or not self.beta > 0:
            raise ConfigError("learning_rate and beta must be > 0")
        if self.max_steps <= 0 and not self.num_epochs > 0:
            raise ConfigError("set max_steps > 0 or num_epochs > 0")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


# ------------------------------------------------------------------------------------------ data


def read_dpo_pairs(sources: str, cfg: DPOConfig, max_pairs: int = 0) -> tuple[list[dict], int]:
    """TRL conversational records {prompt, chosen, rejected} from every source (comma-separated), ties left
    out: (records, number of ties)."""
    from rlhf.distributed import is_main_process
    from rlhf.preferences import read_pairs

    records, ties = [], 0
    for part in [p.strip() for p in sources.split(",") if p.strip()]:
        got, summary = read_pairs(part, cfg.pairs_format, cfg.dataset_split, skip_invalid=cfg.skip_invalid)
        if summary.skipped and is_main_process():
            print(summary)
        for pair in got[:max_pairs] if max_pairs else got:
            if pair.tie:
                ties += 1
                continue
            records.append({"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected})
    if not records:
        raise ConfigError(f"no usable (non-tie) pairs in {sources}")
    return records, ties


# ------------------------------------------------------------------------------------------ train


def _namespaced(logs: dict) -> dict:
    """The Trainer's log keys in the toolkit's namespaces: eval_x -> eval/x, x -> train/x."""
    out = {}
    for key, value in logs.items():
        if not isinstance(value, (int, float)):
            continue
        if key.startswith("eval_"):
            out["eval/" + key.removeprefix("eval_")] = value
        elif key.startswith("train_"):  # the Trainer's end-of-run summary (train_runtime, ...)
            out["train/" + key.removeprefix("train_")] = value
        else:
            out["train/" + key] = value
    return out


def train(cfg: DPOConfig) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint
    from transformers.utils import logging as hf_logging
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    from rlhf.batching import derive_batch_sizes
    from rlhf.distributed import make_accelerator
    from rlhf.models import apply_lora, checkpointing_args, load_model, load_tokenizer, quiet_peft, save_pretrained
    from rlhf.runs import CHECKPOINTS, RunLogger, prepare_output_dir

    hf_logging.disable_progress_bar()
    accelerator = make_accelerator(bf16=cfg.bf16, report_to=cfg.report_to, project_dir=cfg.output_dir)
    sizes = derive_batch_sizes(cfg.global_batch_size, cfg.per_device_batch_size, accelerator.num_processes)
    ckpt_root = Path(cfg.output_dir) / CHECKPOINTS
    ckpt = get_last_checkpoint(str(ckpt_root)) if cfg.resume and ckpt_root.is_dir() else None
    out = prepare_output_dir(cfg, accelerator)
    started = time.time()

    train_records, ties = read_dpo_pairs(cfg.train_pairs, cfg, cfg.max_train_pairs)
    eval_records = read_dpo_pairs(cfg.eval_pairs, cfg)[0] if cfg.eval_pairs else None
    if ties:
        accelerator.print(f"[dpo] {ties} tie pairs left out (they state no preference)")
    with accelerator.main_process_first():
        tokenizer = load_tokenizer(cfg.model_name_or_path)
        model = load_model(cfg.model_name_or_path, trainable_adapter=cfg.use_peft)
    ref_model = None
    if hasattr(model, "peft_config") and not cfg.use_peft:
        model = model.merge_and_unload().requires_grad_(True)
    if cfg.use_peft and not hasattr(model, "peft_config"):
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           target_modules=["all-linear"], base_name=cfg.model_name_or_path)
    if not cfg.use_peft:  # a frozen copy of the starting policy (TRL would reload it from the hub id)
        ref_model = load_model(cfg.model_name_or_path)
        if hasattr(ref_model, "peft_config"):
            ref_model = ref_model.merge_and_unload()
        ref_model = ref_model.eval().requires_grad_(False)

    steps_per_epoch = max(1, len(train_records) // sizes.global_batch)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.floor(cfg.num_epochs * steps_per_epoch))
    args = TRLDPOConfig(
        output_dir=str(ckpt_root), seed=cfg.seed, data_seed=cfg.seed, max_steps=total_steps,
        per_device_train_batch_size=sizes.per_device, per_device_eval_batch_size=sizes.per_device,
        gradient_accumulation_steps=sizes.grad_accum, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, bf16=cfg.bf16, **checkpointing_args(cfg.gradient_checkpointing),
        beta=cfg.beta, loss_type=[cfg.loss_type], label_smoothing=cfg.label_smoothing, max_length=cfg.max_length,
        logging_steps=cfg.log_every, save_strategy="steps" if cfg.save_every else "no",
        save_steps=cfg.save_every or total_steps, save_total_limit=cfg.keep_checkpoints or None,
        eval_strategy="no", report_to="none", disable_tqdm=not accelerator.is_main_process,
        dataloader_drop_last=True, use_cpu=accelerator.device.type == "cpu", dataset_num_proc=None,
    )
    logger = RunLogger(accelerator, cfg, "rlhf-dpo", resume_step=_step_of(ckpt) if ckpt else None)

    class ToolkitContract(TrainerCallback):
        """log.jsonl lines (namespaced) and the stop-after-step checkpoint."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "train_runtime" in (logs or {}):  # the run's summary: in metrics.json, not a step's line
                return
            row = _namespaced(logs or {})  # a training step's statistics, or an evaluation's
            if row and state.global_step > 0:
                logger.log(row, step=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if cfg.stop_after_step and state.global_step == cfg.stop_after_step < total_steps:
                control.should_save = True
                control.should_training_stop = True

    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(train_records),
                         eval_dataset=Dataset.from_list(eval_records) if eval_records else None,
                         processing_class=tokenizer, callbacks=[ToolkitContract()])
    with quiet_peft():  # TRL's reference pass reads the deprecated `is_gradient_checkpointing` too
        result = trainer.train(resume_from_checkpoint=ckpt)
        step = trainer.state.global_step
        if step < total_steps:
            accelerator.print(f"[dpo] stopped after step {step} of {total_steps}; continue with --resume true")
            return {"stopped_at_step": step}
        final_eval = trainer.evaluate() if eval_records else {}  # logged through on_log
    if accelerator.is_main_process:
        core = accelerator.unwrap_model(trainer.model)
        for name in [n for n in getattr(core, "peft_config", {}) if n != "default"]:
            core.delete_adapter(name)  # a reference adapter TRL may add: the saved policy is the trained one
        save_pretrained(core, tokenizer, out / "model")
    accelerator.wait_for_everyone()
    logged = [h for h in trainer.state.log_history if "loss" in h]  # the step logs (not the run summary)
    metrics = logger.finish({
        **(_namespaced(logged[-1]) if logged else {}), "train/loss_mean": result.training_loss,
        "train/runtime": result.metrics.get("train_runtime"), **_namespaced(final_eval), "train/steps": total_steps,
        "train/global_batch_size": sizes.global_batch, "train/grad_accum": sizes.grad_accum,
        "train/pairs": len(train_records), "train/ties_left_out": ties, "dpo/seconds": time.time() - started,
        "model_dir": str(out / "model"),
    })
    accelerator.print(f"[dpo] done: train/loss {metrics.get('train/loss', float('nan')):.4f}"
                      + (f", eval/rewards/accuracies {final_eval.get('eval_rewards/accuracies', float('nan')):.3f}"
                         if final_eval else "") + f"; model in {out / 'model'}")
    return metrics


def _step_of(checkpoint: str) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[1])


def main(argv: list[str] | None = None) -> dict:
    from rlhf.config import parse_args

    return train(parse_args(DPOConfig, argv, prog="rlhf dpo"))
