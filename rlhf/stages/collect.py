"""Stage 2a: sample k completions per prompt from a policy, for labelling into preference pairs.

    python scripts/collect.py --config configs/collect.yaml
    accelerate launch --multi_gpu --num_processes 2 scripts/collect.py --config configs/tiny/collect.yaml
    rlhf collect --config configs/tiny/collect.yaml --k 4 --temperature 0.7

Writes `<output_dir>/candidates.jsonl`, one line per prompt:

    {"prompt_id": "arith-add-0000", "prompt": [{"role": "user", "content": "What is 50 + 98?"}],
     "candidates": [{"text": "50 + 98 = 148.", "num_tokens": 9, "ended_with_eos": true}, ...],
     "task": {...fields of the prompt record, e.g. reference and aliases...},
     "provenance": {"model": ..., "model_hash": ..., "temperature": ..., "top_p": ..., "max_new_tokens": ...,
                    "seed": ..., "batch_seed": ..., "time": ...}}

Sampling is reproducible: each batch of prompts is sampled under its own seed (seed, batch index), so the
same seed gives the same candidates whatever the number of processes, and a different seed different ones.
A run that is interrupted resumes with `--resume true`: prompts already in candidates.jsonl are not sampled
again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.config import ConfigError, RunConfig, option, require_at_least
from rlhf.distributed import make_accelerator
from rlhf.rollout import MAX_PROMPT_TOKENS, load_prompts, sample
from rlhf.runs import RunLogger, prepare_output_dir
from rlhf.fsio import append_jsonl, atomic_write_text, read_jsonl, releases_run_lock


@dataclass
class CollectConfig(RunConfig):
    """Sample k completions per prompt (stage 2a)."""

    output_dir: str = option("runs/collect", help="Where candidates.jsonl, config.yaml, log.jsonl and "
                             "metrics.json go.")
    model_name_or_path: str = option("smollm2-135m-instruct", help="Policy to sample from: hub id, local "
                                     "model or adapter directory, or an alias (smollm2-135m-instruct, tiny-llama).")
    prompts: str = option("reward_data/prompts_train.jsonl", help="Prompts: .jsonl/.json/.parquet or a hub "
                          "dataset; each record has 'prompt' (string or chat messages) and optionally 'id'.")
    prompts_split: str = option("train", help="Split to read when `prompts` is a hub dataset.")
    max_prompts: int = option(0, help="Use only the first this many prompts (0: all).")
    k: int = option(2, help="Completions per prompt (>= 2).")
    temperature: float = option(1.0, help="Sampling temperature (> 0).")
    top_p: float = option(1.0, help="Nucleus sampling: keep the smallest set of tokens with this much mass.")
    max_new_tokens: int = option(48, help="New tokens per completion; a completion that reaches it without "
                                 "EOS is marked ended_with_eos: false.")
    max_prompt_tokens: int = option(MAX_PROMPT_TOKENS, help="A prompt longer than this (after the chat template) is an "
                                    "error naming its file and line.")
    skip_invalid: bool = option(False, help="Leave out bad prompt records (counted and listed in a printed "
                                "summary) instead of stopping at the first one.")
    batch_size: int = option(8, help="Prompts per generate call (each expanded to k sequences), per process.")
    bf16: bool = option(False, help="Sample with bf16 weights (faster on CPUs with native bf16 and on GPUs).")

    def validate(self) -> None:
        super().validate()
        if self.k < 2:
            raise ConfigError(f"k must be >= 2 (pairs need two completions), got {self.k}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        require_at_least(self, 1, "max_new_tokens", "batch_size", "max_prompt_tokens")
        if self.max_prompts < 0:
            raise ConfigError(f"max_prompts must be >= 0, got {self.max_prompts}")


# ------------------------------------------------------------------------------------------ helpers


@torch.no_grad()
def sample_batch(model, tokenizer, prompts: list[dict], cfg: CollectConfig, batch_seed: int) -> list[list[dict]]:
    """k candidates for each prompt of one batch, sampled with KV cache under `batch_seed`."""
    torch.manual_seed(batch_seed)
    samples = sample(model, tokenizer, [p["prompt"] for p in prompts], cfg.k, model.device, do_sample=True,
                     temperature=cfg.temperature, top_p=cfg.top_p, top_k=0, max_new_tokens=cfg.max_new_tokens)
    lengths, ended = samples.lengths.tolist(), samples.ended.tolist()
    return [[{"text": samples.texts[r], "num_tokens": lengths[r], "ended_with_eos": ended[r]}
             for r in range(b * cfg.k, (b + 1) * cfg.k)] for b in range(len(prompts))]


# --------------------------------------------------------------------------------------------- run


@releases_run_lock
def run(cfg: CollectConfig) -> dict:
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from rlhf.models import load_model, load_tokenizer, model_fingerprint

    hf_logging.disable_progress_bar()
    accelerator = make_accelerator(bf16=False, report_to=cfg.report_to, project_dir=cfg.output_dir)
    out = prepare_output_dir(cfg, accelerator)
    path = out / "candidates.jsonl"
    if accelerator.is_main_process and not cfg.resume:
        atomic_write_text(path, "", what="candidates")
        for stale in out.glob("candidates.rank*.jsonl"):  # shards of an earlier run
            stale.unlink()
    logger = RunLogger(accelerator, cfg, "rlhf-collect", resume_step=0 if cfg.resume else None)

    # 1. Prompts and model (the main process first: it may convert the embedded model into the cache).
    with accelerator.main_process_first():
        tokenizer = load_tokenizer(cfg.model_name_or_path)
        prompts = load_prompts(cfg.prompts, cfg.prompts_split, tokenizer, max_prompts=cfg.max_prompts,
                               max_prompt_tokens=cfg.max_prompt_tokens, skip_invalid=cfg.skip_invalid, who="collect")
        model = load_model(cfg.model_name_or_path, dtype=torch.bfloat16 if cfg.bf16 else torch.float32)
    model.to(accelerator.device).eval()
    provenance = {"model": cfg.model_name_or_path, "model_hash": model_fingerprint(cfg.model_name_or_path),
                  "temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
                  "k": cfg.k, "seed": cfg.seed}

    # 2. Batches are numbered over the whole prompt list and dealt round-robin to the processes; a batch's
    #    seed depends only on (seed, batch number), so the candidates do not depend on the process count.
    done = set()
    if path.exists():
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:  # shards left by an interrupted multi-process run: fold them in first
            merge_shards(out, path, [p["prompt_id"] for p in prompts], accelerator.num_processes)
        accelerator.wait_for_everyone()
        done = {row["prompt_id"] for row in read_written(path, repair=accelerator.is_main_process)}
        accelerator.wait_for_everyone()
    batches = [prompts[i:i + cfg.batch_size] for i in range(0, len(prompts), cfg.batch_size)]
    mine = [(n, b) for n, b in enumerate(batches) if n % accelerator.num_processes == accelerator.process_index]
    todo = [(n, b) for n, b in mine if any(p["prompt_id"] not in done for p in b)]
    bar = tqdm(total=len(prompts), initial=len(done), desc="collect", disable=not accelerator.is_main_process)
    started, stats = time.time(), {"completions": 0, "tokens": 0, "ended_with_eos": 0}
    for n, batch in todo:
        batch_seed = cfg.seed * 1_000_003 + n
        rows = sample_batch(model, tokenizer, batch, cfg, batch_seed)
        lines = []
        for p, cands in zip(batch, rows):
            if p["prompt_id"] in done:  # already written before an interruption
                continue
            stamp = {**provenance, "batch_seed": batch_seed, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            lines.append({"prompt_id": p["prompt_id"], "prompt": p["prompt"], "candidates": cands,
                          "task": p["task"], "provenance": stamp})
            stats["completions"] += len(cands)
            stats["tokens"] += sum(c["num_tokens"] for c in cands)
            stats["ended_with_eos"] += sum(c["ended_with_eos"] for c in cands)
        # 3. Each process appends whole batches to its own shard; the main process merges them in order.
        shard = path if accelerator.num_processes == 1 else out / f"candidates.rank{accelerator.process_index}.jsonl"
        append_jsonl(shard, lines, what="candidates")
        bar.update(len(batch) * accelerator.num_processes)
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and accelerator.num_processes > 1:
        merge_shards(out, path, [p["prompt_id"] for p in prompts], accelerator.num_processes)
    accelerator.wait_for_everyone()

    totals = torch.tensor([stats["completions"], stats["tokens"], stats["ended_with_eos"]], dtype=torch.float64,
                          device=accelerator.device)
    totals = accelerator.reduce(totals, reduction="sum").tolist()
    elapsed = time.time() - started
    # counts over the whole file, so that a resumed run reports what an uninterrupted one does; the rate is
    # this session's
    whole = [c for row in read_jsonl(path)[0] for c in row["candidates"]]
    metrics = {"collect/prompts": len(prompts), "collect/k": cfg.k, "collect/completions_sampled": len(whole),
               "collect/mean_tokens": sum(c["num_tokens"] for c in whole) / max(len(whole), 1),
               "collect/eos_fraction": sum(c["ended_with_eos"] for c in whole) / max(len(whole), 1),
               "collect/completions_this_session": totals[0], "collect/seconds": elapsed,
               "collect/tokens_per_second": totals[1] / elapsed if elapsed > 0 else 0.0,
               "candidates": str(path)}
    logger.log(metrics, step=1)
    metrics = logger.finish(metrics)
    accelerator.print(f"[collect] {len(prompts)} prompts x {cfg.k} completions in {path} "
                      f"(mean {metrics['collect/mean_tokens']:.1f} tokens, "
                      f"{100 * metrics['collect/eos_fraction']:.0f}% ended with EOS, {elapsed:.0f} s)")
    return metrics


def read_written(path: Path, repair: bool) -> list[dict]:
    """Rows already in candidates.jsonl. A last line torn by an interruption is dropped (and, with `repair`,
    cut from the file) so that its prompts are sampled again; any other bad line is an error."""
    rows, notes = read_jsonl(path, repair=repair, what="candidates line")
    for note in notes if repair else []:
        print(f"[collect] {note}; its prompts are sampled again", flush=True)
    return rows


def merge_shards(out: Path, path: Path, order: list[str], num_processes: int) -> None:
    """Fold the per-rank shards into candidates.jsonl in prompt order (atomically), then remove them.

    Shards come from this run or from an interrupted one, with any number of processes: every
    candidates.rank*.jsonl is read. A shard line torn by a kill, or damaged otherwise, is dropped and named (its
    prompt is sampled again on resume); the merged file is written whole before any shard is removed."""
    rows = {}
    shards = sorted(out.glob("candidates.rank*.jsonl"))
    if not shards and num_processes == 1:
        return
    for file in ([path] if path.exists() else []) + shards:
        found, notes = read_jsonl(file, on_damaged="drop" if file != path else "raise", what="candidates line")
        for note in notes:
            print(f"[collect] {note}; its prompts are sampled again", flush=True)
        for row in found:
            rows[row["prompt_id"]] = row
    atomic_write_text(path, "".join(json.dumps(rows[pid], ensure_ascii=False) + "\n" for pid in order if pid in rows),
                      what="candidates")
    for shard in shards:
        shard.unlink()


def main(argv: list[str] | None = None) -> dict:
    from rlhf.config import parse_args

    return run(parse_args(CollectConfig, argv, prog="rlhf collect"))
