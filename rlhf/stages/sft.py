"""Stage 1: supervised fine-tuning of the initial policy on demonstrations.

    python scripts/sft.py --config configs/sft.yaml                       # one process
    accelerate launch scripts/sft.py --config configs/sft.yaml            # many (any accelerate preset)
    rlhf sft --config configs/tiny/sft.yaml --max_steps 5                 # the same, through the CLI

The loop is written here on accelerate rather than with TRL's SFTTrainer because every stage of the toolkit
shares one output contract (config.yaml, log.jsonl with namespaced keys, metrics.json, step-numbered
checkpoints) and one data order that is a pure function of (seed, step). That makes three guarantees simple
and testable: a resumed run reproduces the uninterrupted one, N processes reproduce one process with the
same global batch (the loss is normalised by the global batch's target-token count), and global vs per-rank
batch sizes are named apart and checked at start.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from rlhf.backends import full_state_dict, micro_batch
from rlhf.batching import derive_batch_sizes, global_batch_indices, rank_slice
from rlhf.config import ConfigError, RunConfig, option, require_at_least
from rlhf.data import IGNORE_INDEX, TokenizedExample, collate, read_records, split_records, tokenize_sft
from rlhf.distributed import make_accelerator
from rlhf.losses import token_nll_sum
from rlhf.runs import RunLogger, latest_checkpoint, load_checkpoint, prepare_output_dir, save_checkpoint
from rlhf.fsio import atomic_write_jsonl, publish_dir, releases_run_lock


@dataclass
class SFTConfig(RunConfig):
    """Supervised fine-tuning (stage 1): train a causal LM on demonstrations."""

    output_dir: str = option("runs/sft", help="Where config.yaml, log.jsonl, metrics.json, checkpoints/ and "
                             "the trained model/ go.")
    model_name_or_path: str = option("smollm2-135m-instruct", help="Hub id, local model or PEFT adapter "
                                     "directory, or an alias: smollm2-135m-instruct (embedded), tiny-llama (tests).")
    dataset: str = option("reward_data/sft_train.jsonl", help="Training demonstrations: a local "
                          ".jsonl/.json/.parquet file or a hub dataset name.")
    dataset_split: str = option("train", help="Split to read when `dataset` is a hub dataset.")
    eval_dataset: str = option("reward_data/sft_test.jsonl", help="Held-out demonstrations (file or hub name); "
                               "empty to carve eval_fraction out of the training data instead.")
    eval_split: str = option("test", help="Split to read when `eval_dataset` is a hub dataset.")
    eval_fraction: float = option(0.0, help="With no eval_dataset: fraction of the training data held out.")
    max_length: int = option(256, help="Tokens per sequence; longer ones are cut on the right.")
    completion_only_loss: bool = option(True, help="Take the loss on completion (assistant) tokens only; "
                                        "false trains on all tokens.")
    use_peft: bool = option(False, help="Train LoRA adapters (peft) instead of all weights.")
    lora_r: int = option(16, help="LoRA rank.")
    lora_alpha: int = option(32, help="LoRA scaling numerator (scale = lora_alpha / lora_r).")
    lora_dropout: float = option(0.05, help="Dropout on the LoRA input.")
    lora_target_modules: list[str] = option(["all-linear"], help="Modules to adapt: 'all-linear' or names "
                                            "such as q_proj,v_proj.")
    learning_rate: float = option(2e-5, help="Peak learning rate (AdamW).")
    weight_decay: float = option(0.0, help="AdamW weight decay.")
    lr_scheduler: str = option("cosine", help="Decay after warmup.", choices=("cosine", "linear", "constant"))
    warmup_ratio: float = option(0.0, help="Fraction of the optimiser steps spent warming up linearly.")
    warmup_steps: int = option(0, help="Warm-up steps; overrides warmup_ratio when > 0.")
    num_epochs: float = option(1.0, help="Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = option(-1, help="Optimiser steps; > 0 overrides num_epochs.")
    global_batch_size: int = option(8, help="Examples per optimiser step, summed over all processes.")
    per_device_batch_size: int = option(8, help="Examples per forward/backward on one process; gradient "
                                        "accumulation = global / (per_device x processes).")
    max_grad_norm: float = option(1.0, help="Clip the gradient norm to this (<= 0: no clipping).")
    bf16: bool = option(False, help="bf16 autocast (mixed precision) on CPU or GPU; weights stay fp32.")
    gradient_checkpointing: bool = option(False, help="Recompute activations in backward to save memory.")
    eval_every: int = option(0, help="Evaluate every this many steps (0: only at the end).")
    eval_at_start: bool = option(True, help="Also evaluate before the first step, as the baseline (step 0).")
    save_every: int = option(0, help="Checkpoint every this many steps (0: only at the end).")
    keep_checkpoints: int = option(2, help="Newest checkpoints to keep (0 keeps all).")
    sample_count: int = option(4, help="At the end, greedy-decode this many held-out prompts and print them "
                               "(also written to samples.jsonl). 0: off.")
    sample_max_new_tokens: int = option(48, help="New tokens per printed sample.")
    stop_after_step: int = option(0, help="Checkpoint and stop at this step as if interrupted (the schedule "
                                  "still spans max_steps); continue later with --resume true. 0: off.")

    RESUMABLE_CHANGES = RunConfig.RESUMABLE_CHANGES + (
        "per_device_batch_size", "eval_every", "eval_at_start", "save_every", "keep_checkpoints",
        "stop_after_step", "sample_count", "sample_max_new_tokens")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "max_length", "lora_r", "global_batch_size", "per_device_batch_size")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps <= 0 and not self.num_epochs > 0:
            raise ConfigError("set max_steps > 0 or num_epochs > 0")
        require_at_least(self, 0, "eval_every", "save_every", "warmup_steps", "keep_checkpoints", "stop_after_step")


# ------------------------------------------------------------------------------------------ helpers


def load_sft_data(cfg: SFTConfig, tokenizer) -> tuple[list[TokenizedExample], list[TokenizedExample]]:
    train = read_records(cfg.dataset, cfg.dataset_split)
    if cfg.eval_dataset:
        held = read_records(cfg.eval_dataset, cfg.eval_split)
    else:
        train, held = split_records(train, cfg.eval_fraction, cfg.seed)
    if not train:
        raise ConfigError(f"dataset {cfg.dataset} has no records")

    def tok(records):
        return [tokenize_sft(r, tokenizer, cfg.max_length, cfg.completion_only_loss) for r in records]

    return tok(train), tok(held)


def build_model(cfg: SFTConfig):
    from rlhf.models import apply_lora, load_model

    model = load_model(cfg.model_name_or_path, trainable_adapter=cfg.use_peft)
    if hasattr(model, "peft_config") and not cfg.use_peft:
        model = model.merge_and_unload()  # full fine-tuning from an adapter starts from the merged weights
        model.requires_grad_(True)  # peft froze the base weights
    if cfg.use_peft and not hasattr(model, "peft_config"):
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           target_modules=cfg.lora_target_modules, base_name=cfg.model_name_or_path)
    if cfg.gradient_checkpointing:
        from rlhf.models import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)  # non-reentrant: frozen layers and adapters need no input hooks
    model.config.use_cache = False
    return model


def sequence_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [B, T, V]
    return token_nll_sum(logits, batch["labels"])


def optimizer_step(model, optimizer, scheduler, global_batch: list[TokenizedExample], sizes,
                   accelerator, pad_id: int, max_grad_norm: float) -> dict[str, float]:
    """One optimiser step on a global batch: this rank's share, in micro-batches, then clip, step, schedule.

    The loss is the summed token NLL divided by the target-token count of the whole global batch, so that
    gradient accumulation and any number of processes give the gradient of one big batch.
    """
    n_targets = sum(e.num_targets for e in global_batch)
    mine = rank_slice(global_batch, accelerator.process_index, accelerator.num_processes)
    nll_total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for m in range(sizes.grad_accum):
        micro = mine[m * sizes.per_device:(m + 1) * sizes.per_device]
        batch = {k: v.to(accelerator.device) for k, v in collate(micro, pad_id).items()}
        with micro_batch(accelerator, model, last=m == sizes.grad_accum - 1), accelerator.autocast():
            nll, _ = sequence_nll(model, batch)
            # DDP averages gradients over ranks; scaling by num_processes turns that into the global sum.
            loss = nll * accelerator.num_processes / n_targets
        accelerator.backward(loss)
        nll_total += nll.detach().double()
    # the prepared model's own parameters: FSDP2 replaces them with DTensors at prepare (a list taken before
    # would clip nothing), and accelerate takes its FSDP path only for exactly model.parameters()
    grad_norm = accelerator.clip_grad_norm_(list(model.parameters()),
                                            max_grad_norm if max_grad_norm > 0 else float("inf"))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"train/loss": accelerator.reduce(nll_total, reduction="sum").item() / n_targets,
            "train/lr": scheduler.get_last_lr()[0],
            "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),  # DeepSpeed: None
            "train/target_tokens": n_targets}


@torch.no_grad()
def sample_table(model, tokenizer, examples: list[TokenizedExample], max_new_tokens: int) -> list[dict]:
    """Greedy completions of the examples' prompts (the tokens before the first target), with references."""
    rows = []
    model.eval()
    for e in examples:
        start = next(i for i, t in enumerate(e.labels) if t != IGNORE_INDEX)
        prompt = torch.tensor([e.input_ids[:start]], device=model.device)
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, use_cache=True)
        rows.append({"source": e.source,
                     "prompt": e.prompt_text,
                     "response": tokenizer.decode(out[0, start:], skip_special_tokens=True).strip(),
                     "reference": tokenizer.decode([t for t in e.labels if t != IGNORE_INDEX],
                                                   skip_special_tokens=True).strip()})
    model.train()
    return rows


def print_samples(rows: list[dict], width: int = 48) -> None:
    def cut(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 1] + "…"

    print(f"{'prompt':<{width}} | {'response':<{width}} | reference")
    print(f"{'-' * width}-+-{'-' * width}-+-{'-' * 20}")
    for r in rows:
        print(f"{cut(r['prompt']):<{width}} | {cut(r['response']):<{width}} | {cut(r['reference'])}")


@torch.no_grad()
def evaluate(model, examples, accelerator, batch_size: int, pad_id: int) -> dict[str, float]:
    """Held-out loss and perplexity, each rank taking every num_processes-th example (no duplicates)."""
    model.eval()
    mine = examples[accelerator.process_index::accelerator.num_processes]
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # [nll_sum, n_targets]
    # the same number of forward passes on every rank (under ZeRO-3/FSDP a forward pass is collective); a
    # rank out of examples runs one it then ignores
    longest = -(-len(examples) // accelerator.num_processes)
    for i in range(0, longest, batch_size):
        chunk = mine[i:i + batch_size]
        batch = {k: v.to(accelerator.device) for k, v in collate(chunk or examples[:1], pad_id).items()}
        with accelerator.autocast():
            nll, n = sequence_nll(model, batch)
        if chunk:
            totals += torch.stack([nll.double(), n.double()])
    totals = accelerator.reduce(totals, reduction="sum")
    model.train()
    loss = (totals[0] / totals[1].clamp(min=1)).item()
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0)), "eval/tokens": int(totals[1].item())}


# --------------------------------------------------------------------------------------------- train


@releases_run_lock
def train(cfg: SFTConfig) -> dict:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler
    from transformers.utils import logging as hf_logging

    from rlhf.models import count_parameters, load_model_weights, load_tokenizer, save_pretrained

    hf_logging.disable_progress_bar()  # per-file load/save bars would drown the stage's own progress bar

    accelerator = make_accelerator(bf16=cfg.bf16, report_to=cfg.report_to, project_dir=cfg.output_dir)
    sizes = derive_batch_sizes(cfg.global_batch_size, cfg.per_device_batch_size, accelerator.num_processes)
    ckpt = latest_checkpoint(cfg.output_dir) if cfg.resume else None
    out = prepare_output_dir(cfg, accelerator)
    set_seed(cfg.seed)

    # 1. Data: tokenise on the main process first (it converts the embedded model into the cache once).
    with accelerator.main_process_first():
        tokenizer = load_tokenizer(cfg.model_name_or_path)
        train_set, eval_set = load_sft_data(cfg, tokenizer)
        model = build_model(cfg)
    pad_id = tokenizer.pad_token_id
    steps_per_epoch = len(train_set) // sizes.global_batch
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.floor(cfg.num_epochs * steps_per_epoch))
    warmup = cfg.warmup_steps or round(cfg.warmup_ratio * total_steps)

    # 2. Optimiser and schedule. The scheduler is stepped by hand, once per optimiser step: accelerate's
    #    prepared scheduler would step num_processes times per call.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    start_step = 0
    if ckpt is not None:
        load_model_weights(unwrapped, ckpt / "model")
        start_step = load_checkpoint(accelerator, ckpt, optimizer, scheduler)["step"]
        accelerator.print(f"[sft] resumed from {ckpt} at step {start_step}")
    logger = RunLogger(accelerator, cfg, "rlhf-sft", resume_step=start_step if ckpt is not None else None)

    trainable, total = count_parameters(unwrapped)
    accelerator.print(f"[sft] {cfg.model_name_or_path}: {trainable:,} of {total:,} parameters train; "
                      f"{len(train_set)} train / {len(eval_set)} eval examples; {total_steps} steps; {sizes}")

    def checkpoint(step: int) -> None:
        save_checkpoint(accelerator, out, step, lambda d: save_pretrained(unwrapped, tokenizer, d), optimizer,
                        scheduler, {"epoch": step // max(steps_per_epoch, 1)}, cfg.keep_checkpoints)

    # after a resume, the baseline evaluated before the first step comes from the log
    baseline = next((r for r in logger.resumed if r.get("step") == 0 and "eval/loss" in r), {})
    if cfg.eval_at_start and eval_set and start_step == 0:
        baseline = evaluate(model, eval_set, accelerator, sizes.per_device, pad_id)
        logger.log(baseline, step=0)
        accelerator.print(f"[sft] before training: eval/loss {baseline['eval/loss']:.4f}")

    # 3. Train: each optimiser step sees one global batch, split over ranks, then into micro-batches.
    model.train()
    bar = tqdm(total=total_steps, initial=start_step, desc="sft", disable=not accelerator.is_main_process)
    started, tokens_seen, last = time.time(), 0, {}
    for step in range(start_step, total_steps):
        indices, epoch = global_batch_indices(step, len(train_set), sizes.global_batch, cfg.seed)
        stats = optimizer_step(model, optimizer, scheduler, [train_set[i] for i in indices], sizes,
                               accelerator, pad_id, cfg.max_grad_norm)
        done = step + 1
        tokens_seen += stats["train/target_tokens"]
        bar.update(1)
        bar.set_postfix(loss=f"{stats['train/loss']:.4f}")
        last = {**stats, "train/epoch": epoch}
        if done % cfg.log_every == 0 or done == total_steps:
            logger.log(last, step=done)
        if cfg.eval_every and done % cfg.eval_every == 0 and done < total_steps and eval_set:
            logger.log(evaluate(model, eval_set, accelerator, sizes.per_device, pad_id), step=done)
        if cfg.save_every and done % cfg.save_every == 0 and done < total_steps:
            checkpoint(done)
        if done == cfg.stop_after_step and done < total_steps:
            if not (cfg.save_every and done % cfg.save_every == 0):
                checkpoint(done)
            bar.close()
            accelerator.print(f"[sft] stopped after step {done} of {total_steps}; continue with --resume true")
            return {"stopped_at_step": done}
    bar.close()

    # 4. Final evaluation, checkpoint and artefact.
    final_eval = evaluate(model, eval_set, accelerator, sizes.per_device, pad_id) if eval_set else {}
    if final_eval and start_step < total_steps:  # (resumed from the final checkpoint: already in the log)
        logger.log(final_eval, step=total_steps)
    if start_step < total_steps:
        checkpoint(total_steps)
    accelerator.wait_for_everyone()
    full_state = full_state_dict(accelerator, model)  # collective; None unless ZeRO-3/FSDP shard the weights
    if accelerator.is_main_process:
        with publish_dir(out / "model", what="model") as tmp:  # an older model/ stays whole until replaced
            save_pretrained(unwrapped, tokenizer, tmp, state_dict=full_state)
        if cfg.sample_count and eval_set and full_state is None:  # (sharded weights: no sample table)
            spread = eval_set[:: max(1, len(eval_set) // cfg.sample_count)][: cfg.sample_count]
            rows = sample_table(unwrapped, tokenizer, spread, cfg.sample_max_new_tokens)
            atomic_write_jsonl(out / "samples.jsonl", rows, what="samples")
            print_samples(rows)
    accelerator.wait_for_everyone()
    elapsed = time.time() - started
    metrics = logger.finish({
        **last, **final_eval, "train/steps": total_steps, "train/global_batch_size": sizes.global_batch,
        "train/per_device_batch_size": sizes.per_device, "train/grad_accum": sizes.grad_accum,
        "train/trainable_parameters": trainable, "train/seconds": elapsed,
        "train/target_tokens_per_second": tokens_seen / elapsed if elapsed > 0 else 0.0,
        "model_dir": str(out / "model"),
        **({"eval/loss_at_start": baseline["eval/loss"]} if baseline else {}),
    })
    accelerator.print(f"[sft] done: train/loss {metrics.get('train/loss', float('nan')):.4f}"
                      + (f", eval/loss {final_eval['eval/loss']:.4f}, eval/perplexity "
                         f"{final_eval['eval/perplexity']:.2f}" if final_eval else "")
                      + f"; model in {out / 'model'}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    from rlhf.config import parse_args

    cfg = parse_args(SFTConfig, argv, prog="rlhf sft")
    return train(cfg)
