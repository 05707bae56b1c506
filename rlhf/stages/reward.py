"""Stage 3: a reward model from preference pairs, a frozen pretrained backbone and a scalar head trained with
the Bradley-Terry loss -log sigma(R(chosen) - R(rejected)).

    python scripts/reward.py --config configs/reward.yaml
    accelerate launch --multi_gpu --num_processes 2 scripts/reward.py --config configs/tiny/reward.yaml
    rlhf reward --config configs/tiny/reward.yaml --num_epochs 5
    rlhf reward score --model runs/reward/model --input pairs.jsonl --output scored.jsonl

With the backbone frozen (the default), its last-token features are computed once per unique text (batched,
no grad, optionally bf16), cached on disk (`rlhf/feature_cache.py`) and reused by every epoch, run and
sweep: the head then trains in seconds. With `unfreeze_top_layers` > 0 or `use_peft`, every step runs the
backbone instead (the full-forward path).

Writes the output contract plus `<output_dir>/model/` (see `rlhf/reward.py`): train and held-out accuracy,
mean margin, loss, expected calibration error of sigma(r_c - r_r), and the reward mean and standard deviation
over the training responses (stored with the model for normalisation in stage 4).
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.config import ConfigError, RunConfig, option, require_at_least
from rlhf.distributed import (derive_batch_sizes, gather_rows, global_batch_indices, is_main_process,
                               make_accelerator, micro_batch, rank_slice, shards_parameters)
from rlhf.losses import bradley_terry_loss, expected_calibration_error, reward_centering_loss
from rlhf.fsio import atomic_write_jsonl, publish_dir, releases_run_lock


@dataclass
class RewardConfig(RunConfig):
    """Train a reward model on preference pairs (stage 3)."""

    output_dir: str = option("runs/reward", help="Where the reward model/ and the run files go.")
    model_name_or_path: str = option("smollm2-135m-instruct", help="Backbone: hub id, local model or adapter "
                                     "directory, or an alias (smollm2-135m-instruct, tiny-llama).")
    train_pairs: str = option("reward_data/pairs_train.jsonl", help="Preference pairs: any format "
                              "rlhf.preferences reads (TRL standard/conversational/implicit, HH-RLHF), file or hub; "
                              "several comma-separated sources are used together.")
    max_train_pairs: int = option(0, help="Use only the first this many pairs of each train_pairs source (0: all).")
    eval_pairs: str = option("reward_data/pairs_test.jsonl", help="Held-out pairs (empty: none).")
    pairs_format: str = option("auto", help="Format of the pair files.",
                               choices=("auto", "standard", "conversational", "implicit",
                                        "implicit_conversational", "hh"))
    dataset_split: str = option("train", help="Split to read for hub datasets.")
    skip_invalid: bool = option(False, help="Skip bad pair records (counted in a printed summary) instead of "
                                "stopping at the first one.")
    max_length: int = option(256, help="Tokens per prompt + response (cut on the left, keeping the end).")
    head: str = option("linear", help="Scalar head.", choices=("linear", "mlp"))
    mlp_hidden: int = option(256, help="Hidden width of the MLP head.")
    unfreeze_top_layers: int = option(0, help="Also train the top n backbone blocks (full-forward path).")
    use_peft: bool = option(False, help="Train LoRA adapters on the backbone with the head (full-forward "
                            "path); merged into the saved model.")
    lora_r: int = option(8, help="LoRA rank.")
    lora_alpha: int = option(16, help="LoRA alpha.")
    cache_features: bool = option(True, help="Cache frozen-backbone features on disk ($RLHF_CACHE/features).")
    feature_dtype: str = option("float32", help="Backbone precision for feature extraction.",
                                choices=("float32", "bfloat16"))
    extract_batch_size: int = option(16, help="Texts per backbone forward pass when extracting features.")
    share_prefix: bool = option(True, help="Run a batch's common token prefix (the chat template's opening) "
                                "once when extracting features, and only the suffixes per text.")
    learning_rate: float = option(1e-3, help="AdamW learning rate.")
    weight_decay: float = option(0.0, help="AdamW weight decay.")
    num_epochs: int = option(3, help="Passes over the training pairs.")
    global_batch_size: int = option(32, help="Pairs per optimiser step, over all processes.")
    per_device_batch_size: int = option(32, help="Pairs per forward/backward on one process.")
    margin: float = option(0.0, help="Bradley-Terry margin: -log sigma(r_c - r_r - margin).")
    label_smoothing: float = option(0.0, help="Label smoothing for noisy labels; tie pairs always get 0.5.")
    center_rewards_coef: float = option(0.0, help="Weight of the reward-centering term mean((r_c + r_r)^2).")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "max_length", "mlp_hidden", "extract_batch_size", "num_epochs",
                         "global_batch_size", "per_device_batch_size", "lora_r")
        require_at_least(self, 0, "max_train_pairs")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.unfreeze_top_layers < 0 or self.center_rewards_coef < 0:
            raise ConfigError("unfreeze_top_layers and center_rewards_coef must be >= 0")

    @property
    def frozen(self) -> bool:
        return self.unfreeze_top_layers == 0 and not self.use_peft


# ------------------------------------------------------------------------------------------ data


@dataclass
class PairSet:
    """Pairs as indices into a list of unique texts: chosen [N], rejected [N], smoothing [N]."""

    texts: list[str]
    chosen: torch.Tensor
    rejected: torch.Tensor
    smoothing: torch.Tensor

    def __len__(self) -> int:
        return len(self.chosen)


def load_pair_set(path: str, cfg: RewardConfig, tokenizer, texts: list[str], index: dict[str, int],
                  max_pairs: int = 0) -> PairSet:
    """Read pairs and render them; `texts`/`index` are shared across sets so a text is stored once."""
    from rlhf.preferences import read_pairs
    from rlhf.reward import render_texts

    pairs = []
    for part in [p.strip() for p in path.split(",") if p.strip()]:  # several files: their union
        got, summary = read_pairs(part, cfg.pairs_format, cfg.dataset_split, skip_invalid=cfg.skip_invalid)
        if summary.skipped and is_main_process():  # every rank reads the pairs; one reports
            print(summary)
        pairs += got[:max_pairs] if max_pairs else got
    if not pairs:
        raise ConfigError(f"no usable pairs in {path}")
    prompts = [p.prompt for p in pairs]
    ids = []
    for side in ("chosen", "rejected"):
        rendered = render_texts(tokenizer, prompts, [getattr(p, side) for p in pairs])
        for t in rendered:
            if t not in index:
                index[t] = len(texts)
                texts.append(t)
        ids.append(torch.tensor([index[t] for t in rendered]))
    smoothing = torch.tensor([0.5 if p.tie else cfg.label_smoothing for p in pairs], dtype=torch.float32)
    return PairSet(texts, ids[0], ids[1], smoothing)


@torch.no_grad()
def extract_features(model, texts: list[str], cfg: RewardConfig, accelerator) -> torch.Tensor:
    """Features [len(texts), H] of the frozen backbone, through the on-disk cache; missing texts are split
    over the processes, each writing its own cache shard."""
    from tqdm.auto import tqdm

    from rlhf.feature_cache import FeatureCache, text_key
    from rlhf.models import cache_root, model_fingerprint

    dtype = torch.bfloat16 if cfg.feature_dtype == "bfloat16" else torch.float32
    root = os.environ.get("RLHF_FEATURE_CACHE") or cache_root() / "features"
    cache = FeatureCache(root, model_fingerprint(cfg.model_name_or_path), dtype, cfg.max_length)
    keys = [text_key(t) for t in texts]
    if not cfg.cache_features:
        cache.index.clear()  # recompute everything (results still written, for later runs)
    missing = cache.missing(keys)
    accelerator.wait_for_everyone()  # every rank has its list before any rank writes a shard
    text_of = dict(zip(keys, texts))
    # Batches of similar length waste little on padding: sort by length (characters track tokens closely)
    # before dealing texts out, so each rank's batches are homogeneous too.
    missing = sorted(missing, key=lambda k: len(text_of[k]))
    mine = missing[accelerator.process_index::accelerator.num_processes]
    # extract with a bf16 copy when asked, so the saved (fp32) backbone keeps its exact weights
    original = model.backbone
    if dtype != torch.float32:
        model.backbone = copy.deepcopy(original).to(dtype)
    model.eval()
    tokens = shared = 0
    try:
        for i in tqdm(range(0, len(mine), cfg.extract_batch_size), desc="features",
                      disable=not accelerator.is_main_process or not mine):
            chunk = mine[i:i + cfg.extract_batch_size]
            batch = {k: v.to(accelerator.device) for k, v in model.encode([text_of[k] for k in chunk]).items()}
            with torch.no_grad():
                if cfg.share_prefix:
                    feats, prefix = model.features_shared_prefix(**batch)
                else:
                    feats, prefix = model.features(**batch), 0
            cache.put(chunk, feats.float())
            tokens += int(batch["attention_mask"].sum())
            shared += prefix * (len(chunk) - 1)  # prefix tokens not run again
    finally:
        model.backbone = original
    if mine and cfg.share_prefix:
        accelerator.print(f"[reward] shared prefixes saved {shared} of {tokens} backbone tokens "
                          f"({100 * shared / max(tokens, 1):.0f}%)")
    accelerator.wait_for_everyone()
    cache.reload()
    accelerator.print(f"[reward] features: {len(set(keys)) - len(missing)} cached, {len(missing)} computed "
                      f"({cache.dir})")
    return cache.get(keys), len(missing)


# ------------------------------------------------------------------------------------------ training


def pair_rewards(pairs: PairSet, idx: list[int], device, *, head=None, features=None, model=None,
                 encode=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected) [n] for pairs `idx`, in one call of `head` on cached features [N, H], or one
    forward of `model` on the texts tokenised by `encode`."""
    both = torch.cat([pairs.chosen[idx], pairs.rejected[idx]])  # [2n] text indices
    if features is not None:
        rewards = head(features[both].to(device)).squeeze(-1)
    else:
        rewards = model(**{k: v.to(device) for k, v in encode([pairs.texts[i] for i in both]).items()})
    return rewards[: len(idx)], rewards[len(idx):]


@torch.no_grad()
def pair_metrics(model, pairs: PairSet, features, cfg: RewardConfig, accelerator, prefix: str) -> dict:
    """Accuracy, mean margin, loss and ECE over all pairs (sharded over processes, then gathered)."""
    model.eval()
    mine = list(range(accelerator.process_index, len(pairs), accelerator.num_processes))
    rc_all, rr_all, sm_all = [], [], []
    for i in range(0, len(mine), cfg.per_device_batch_size):
        idx = mine[i:i + cfg.per_device_batch_size]
        rc, rr = pair_rewards(pairs, idx, accelerator.device, head=model.head, features=features, model=model,
                              encode=model.encode)
        rc_all.append(rc.float()), rr_all.append(rr.float()), sm_all.append(pairs.smoothing[idx].to(rc.device))
    # ranks may hold one pair more than others (stride shards): gather_rows pads, gathers and trims
    rc = gather_rows(accelerator, torch.cat(rc_all))
    rr = gather_rows(accelerator, torch.cat(rr_all))
    sm = gather_rows(accelerator, torch.cat(sm_all))
    model.train()
    decided = sm < 0.5  # ties have no right answer
    d = rc - rr
    return {f"{prefix}/accuracy": (d[decided] > 0).float().mean().item() if decided.any() else float("nan"),
            f"{prefix}/margin": d[decided].mean().item() if decided.any() else float("nan"),
            f"{prefix}/loss": bradley_terry_loss(rc, rr, cfg.margin, sm).mean().item(),
            # each pair in both orientations: P(chosen > rejected) with outcome 1, its complement with outcome 0
            f"{prefix}/ece": expected_calibration_error(
                torch.cat([torch.sigmoid(d[decided]), torch.sigmoid(-d[decided])]).cpu(),
                torch.cat([torch.ones(int(decided.sum())), torch.zeros(int(decided.sum()))]))
            if decided.any() else float("nan"),
            f"{prefix}/pairs": len(d)}


@releases_run_lock
def train(cfg: RewardConfig) -> dict:
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from rlhf.reward import RewardModel
    from rlhf.runs import RunLogger, prepare_output_dir

    hf_logging.disable_progress_bar()
    accelerator = make_accelerator(bf16=False, report_to=cfg.report_to, project_dir=cfg.output_dir)
    sizes = derive_batch_sizes(cfg.global_batch_size, cfg.per_device_batch_size, accelerator.num_processes)
    if shards_parameters(accelerator):  # every rank scores its own share of texts with the whole model
        raise ConfigError("the reward stage does not run under ZeRO-3 or FSDP (parameter sharding); use a "
                          "data-parallel preset such as multi_gpu or deepspeed_zero2")
    out = prepare_output_dir(cfg, accelerator)
    logger = RunLogger(accelerator, cfg, "rlhf-reward")
    started = time.time()

    # 1. Model and pairs (the main process first: it may convert the embedded backbone into the cache).
    with accelerator.main_process_first():
        model = RewardModel.from_backbone(cfg.model_name_or_path, head=cfg.head, mlp_hidden=cfg.mlp_hidden,
                                          max_length=cfg.max_length, seed=cfg.seed)
    texts, index = [], {}
    train_set = load_pair_set(cfg.train_pairs, cfg, model.tokenizer, texts, index, cfg.max_train_pairs)
    eval_set = load_pair_set(cfg.eval_pairs, cfg, model.tokenizer, texts, index) if cfg.eval_pairs else None
    model.freeze_backbone(cfg.unfreeze_top_layers)
    if cfg.use_peft:
        from peft import LoraConfig, get_peft_model

        model.backbone = get_peft_model(model.backbone, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                                   target_modules="all-linear"))
    model.to(accelerator.device)

    # 2. Frozen backbone: features once per unique text, from the cache where possible.
    features, computed, extract_started = None, 0, time.time()
    if cfg.frozen:
        features, computed = extract_features(model, texts, cfg, accelerator)
    extract_seconds = time.time() - extract_started

    # 3. Bradley-Terry training of the head (and any unfrozen part).
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    trainable = model.head if cfg.frozen else model
    trainable, optimizer = accelerator.prepare(trainable, optimizer)
    if cfg.frozen:
        model.head = trainable
    else:
        model = trainable
    core = accelerator.unwrap_model(model)
    steps_per_epoch = len(train_set) // sizes.global_batch
    total_steps = cfg.num_epochs * steps_per_epoch
    accelerator.print(f"[reward] {len(train_set)} train / {len(eval_set) if eval_set else 0} eval pairs, "
                      f"{len(texts)} unique texts; {total_steps} steps; {sizes}; "
                      f"{'frozen backbone, cached features' if cfg.frozen else 'full forward'}")
    model.train()
    for step in tqdm(range(total_steps), desc="reward", disable=not accelerator.is_main_process):
        indices, epoch = global_batch_indices(step, len(train_set), sizes.global_batch, cfg.seed)
        mine = rank_slice(indices, accelerator.process_index, accelerator.num_processes)
        loss_sum = torch.zeros((), device=accelerator.device)
        for m in range(sizes.grad_accum):
            idx = mine[m * sizes.per_device:(m + 1) * sizes.per_device]
            # through the DDP-wrapped module, so that its backward all-reduces the gradients (on the last
            # micro-batch of the step only)
            with micro_batch(accelerator, model.head if cfg.frozen else model, last=m == sizes.grad_accum - 1):
                rc, rr = pair_rewards(train_set, idx, accelerator.device, head=model.head if cfg.frozen else None,
                                      features=features, model=model, encode=core.encode)
                per_pair = bradley_terry_loss(rc, rr, cfg.margin, train_set.smoothing[idx].to(rc.device))
                loss = per_pair.sum() / sizes.global_batch
                if cfg.center_rewards_coef:
                    loss = loss + (cfg.center_rewards_coef * reward_centering_loss(rc, rr) * len(idx)
                                   / sizes.global_batch)
                accelerator.backward(loss * accelerator.num_processes)
            loss_sum += per_pair.detach().sum()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % cfg.log_every == 0 or step + 1 == total_steps:
            logger.log({"train/loss": accelerator.reduce(loss_sum, "sum").item() / sizes.global_batch,
                        "train/epoch": epoch}, step=step + 1)
        if (step + 1) % steps_per_epoch == 0 and eval_set is not None:
            logger.log(pair_metrics(core, eval_set, features, cfg, accelerator, "eval"), step=step + 1)

    # 4. Final metrics; reward statistics over the training responses for normalisation in stage 4.
    if cfg.frozen:
        model.head = accelerator.unwrap_model(model.head)
    final = pair_metrics(core, train_set, features, cfg, accelerator, "train")
    if eval_set is not None:
        final.update(pair_metrics(core, eval_set, features, cfg, accelerator, "eval"))
    responses = torch.unique(torch.cat([train_set.chosen, train_set.rejected]))
    with torch.no_grad():
        if features is not None:
            rewards = core.head(features[responses].to(accelerator.device)).squeeze(-1).float()
        else:
            rewards = torch.cat([core(**{k: v.to(accelerator.device) for k, v in core.encode(
                [texts[i] for i in responses[j:j + 16]]).items()}).float() for j in range(0, len(responses), 16)])
    core.mean, core.std = rewards.mean().item(), max(rewards.std().item(), 1e-6)
    if cfg.use_peft:
        core.backbone = core.backbone.merge_and_unload()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with publish_dir(out / "model", what="model") as tmp:  # an older model/ stays whole until replaced
            core.save(tmp)
    accelerator.wait_for_everyone()
    elapsed = time.time() - started
    metrics = logger.finish({
        **final, "reward/mean": core.mean, "reward/std": core.std, "reward/unique_texts": len(texts),
        "reward/features_computed": computed, "reward/extract_seconds": extract_seconds,
        "reward/seconds": elapsed, "reward/pairs_per_second": total_steps * sizes.global_batch / elapsed,
        "model_dir": str(out / "model"),
    })
    accelerator.print(f"[reward] train accuracy {final['train/accuracy']:.3f}"
                      + (f", held-out accuracy {final['eval/accuracy']:.3f} (ECE {final['eval/ece']:.3f})"
                         if eval_set is not None else "") + f"; {elapsed:.1f} s; model in {out / 'model'}")
    return metrics


# ------------------------------------------------------------------------------------------ scoring


@dataclass
class ScoreConfig(RunConfig):
    """Score pairs or completions with a trained reward model (`rlhf reward score`)."""

    output_dir: str = option("runs/reward_score", help="Where the run files go.")
    model: str = option("runs/reward/model", help="Reward model directory (from rlhf reward).")
    input: str = option("reward_data/pairs_test.jsonl", help="Pairs (any preference format) or completions "
                        "(records with 'prompt' and 'completion', or candidates.jsonl from rlhf collect).")
    output: str = option("", help="Scored JSONL (default: <output_dir>/scored.jsonl).")
    normalize: bool = option(False, help="Write (r - mean) / std with the statistics stored in the model.")
    batch_size: int = option(16, help="Texts per forward pass.")


def score_file(cfg: ScoreConfig) -> dict:
    """Add reward scores to every record: pairs get reward_chosen/reward_rejected, completions reward."""
    from rlhf.data import DataError, read_records
    from rlhf.reward import RewardModel

    model = RewardModel.load(cfg.model)
    records = read_records(cfg.input)
    out_path = Path(cfg.output or Path(cfg.output_dir) / "scored.jsonl")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rows, agree, n_pairs = [], 0, 0
    for rec in records:
        d = dict(rec.data)
        if "chosen" in d and "rejected" in d:
            from rlhf.preferences import parse_pair

            pair = parse_pair(rec)
            rc, rr = model.score([pair.prompt, pair.prompt], [pair.chosen, pair.rejected], normalize=cfg.normalize)
            d.update(reward_chosen=rc, reward_rejected=rr)
            agree += rc > rr
            n_pairs += 1
        elif "candidates" in d:
            texts = [c["text"] if isinstance(c, dict) else c for c in d["candidates"]]
            scores = model.score([d["prompt"]] * len(texts), texts, normalize=cfg.normalize)
            d["rewards"] = scores
        elif "prompt" in d and "completion" in d:
            d["reward"] = model.score([d["prompt"]], [d["completion"]], normalize=cfg.normalize)[0]
        else:
            raise DataError(f"{rec.source}: expected a pair (chosen, rejected), a completion (prompt, completion) "
                            "or candidates")
        rows.append(d)
    atomic_write_jsonl(out_path, rows, what="scored")
    metrics = {"score/records": len(rows), "output": str(out_path)}
    if n_pairs:
        metrics["score/pair_accuracy"] = agree / n_pairs
    print(f"[reward score] {len(rows)} records scored into {out_path}"
          + (f"; chosen scored higher in {100 * agree / n_pairs:.1f}% of {n_pairs} pairs" if n_pairs else ""))
    return metrics


def main(argv: list[str] | None = None) -> dict:
    from rlhf.config import parse_args

    argv = list(argv or [])
    if argv[:1] == ["score"]:
        return score_file(parse_args(ScoreConfig, argv[1:], prog="rlhf reward score"))
    return train(parse_args(RewardConfig, argv, prog="rlhf reward"))
