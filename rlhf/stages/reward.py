"""Stage 3: a reward model from preference pairs, a frozen pretrained backbone and a scalar head trained with
the Bradley-Terry loss -log sigma(R(chosen) - R(rejected)).

    python scripts/reward.py --config configs/reward.yaml
    accelerate launch --multi_gpu --num_processes 2 scripts/reward.py --config configs/tiny/reward.yaml
    rlhf reward --config configs/tiny/reward.yaml --num_epochs 5
    rlhf reward score --model runs/reward/model --input pairs.jsonl --output scored.jsonl

With the backbone frozen (the default), its features are computed once per unique text in one backbone pass
(batched, no grad, optionally bf16), cached on disk (`rlhf/feature_cache.py`) and reused by every run and
sweep: by default the last-token and response-mean states of every third layer (`layers`, `pooling`) and the
response's mean and minimum token log-prob (`logprob_features`). The default `head_fit: validated` then
chooses the feature set and the L2 strength of a linear head on a validation part of the training pairs and
refits it on all of them (`rlhf/head_fit.py`; printed and stored in reward_config.json), optionally as an
ensemble of `ensemble_size` heads on bootstrap resamples. `head_fit: sgd` trains the head with AdamW for
`num_epochs` instead (the earlier default; needed for an MLP head). With `unfreeze_top_layers` > 0 or
`use_peft`, every step runs the backbone instead (the full-forward path, SGD).

Writes the output contract plus `<output_dir>/model/` (see `rlhf/reward.py`): train and held-out accuracy,
mean margin, loss, expected calibration error of sigma(r_c - r_r), and the reward mean and standard deviation
over the training responses (stored with the model for normalisation in stage 4).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.backends import micro_batch, shards_parameters
from rlhf.batching import derive_batch_sizes, global_batch_indices, rank_slice
from rlhf.config import ConfigError, RunConfig, option, require_at_least
from rlhf.distributed import gather_rows, is_main_process, make_accelerator
from rlhf.losses import bradley_terry_loss, expected_calibration_error, reward_centering_loss
from rlhf.fsio import atomic_write_json, atomic_write_jsonl, publish_dir, releases_run_lock


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
    head: str = option("linear", help="Scalar head (mlp needs head_fit: sgd).", choices=("linear", "mlp"))
    layers: str = option("every:3", help="Backbone layers whose states are features: final, all, every:N (the "
                         "final layer and every N-th below it) or a comma list (1 = first block; -1 = final).")
    pooling: str = option("both", help="Pooling of each layer's states: the last token, the mean over the "
                          "response tokens, or both.", choices=("last", "mean", "both"))
    logprob_features: bool = option(True, help="Add the response's mean and minimum token log-prob under the "
                                    "backbone as features.")
    head_fit: str = option("validated", help="validated: L2 logistic regression on standardised features, the "
                           "feature set and strength chosen on validation pairs, refit on all; sgd: AdamW for "
                           "num_epochs on every feature (the earlier default).", choices=("validated", "sgd"))
    validation_fraction: float = option(0.2, help="Share of the training pairs (whole prompts) held back to "
                                        "choose the features and the strength (head_fit validated).")
    l2_grid: str = option("3e-4,1e-3,3e-3,1e-2,3e-2,0.1,0.3,1", help="L2 strengths tried (comma list).")
    select_by: str = option("accuracy", help="Validation criterion (ties broken by the other).",
                            choices=("accuracy", "loss"))
    feature_sets: str = option("auto", help="Feature sets tried (head_fit validated): auto (every combination "
                               "of final/all extracted layers, last/both poolings, with/without log-probs) or "
                               "transformers (only what AutoModelForSequenceClassification computes: the final "
                               "layer's last token, so the export is plain transformers).",
                               choices=("auto", "transformers"))
    ensemble_size: int = option(1, help="Heads on bootstrap resamples of the training pairs (head_fit validated); "
                                "scores are their mean, the policy stage can use their spread.")
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
    bf16: bool = option(False, help="bf16 autocast (mixed precision) for training; weights stay fp32 (for the "
                        "frozen path's features see feature_dtype).")
    gradient_checkpointing: bool = option(False, help="Full-forward path: recompute the backbone's activations "
                                          "in backward to save memory (same gradients).")

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
        require_at_least(self, 1, "ensemble_size")
        if self.head_fit == "validated":
            if self.head == "mlp":
                raise ConfigError("head 'mlp' trains with head_fit 'sgd' (head_fit 'validated' fits a linear head)")
            if not self.frozen:
                raise ConfigError("head_fit 'validated' needs a frozen backbone; with unfreeze_top_layers or "
                                  "use_peft set head_fit 'sgd'")
            if not 0 < self.validation_fraction < 1:
                raise ConfigError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        elif self.ensemble_size > 1:
            raise ConfigError("ensemble_size > 1 needs head_fit 'validated'")
        try:
            grid = [float(x) for x in self.l2_grid.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"l2_grid must be a comma list of numbers, got {self.l2_grid!r}") from None
        if not grid or not all(math.isfinite(x) and x > 0 for x in grid):
            raise ConfigError(f"l2_grid needs finite strengths > 0, got {self.l2_grid!r}")
        layers = self.layers.strip()
        if not (layers in ("final", "all") or (layers.startswith("every:") and layers[6:].isdigit()
                                                  and int(layers[6:]) >= 1)
                or all(x.strip().lstrip("-").isdigit() for x in layers.split(","))):
            raise ConfigError(f"layers must be final, all, every:N or a comma list of layer numbers, got "
                              f"{self.layers!r}")

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
    prompt_chars: list[int] | None = None  # per text (parallel to texts): where its response starts
    groups: torch.Tensor | None = None  # [N] prompt of each pair (pairs of one prompt stay on one side of a split)

    def __len__(self) -> int:
        return len(self.chosen)


def load_pair_set(path: str, cfg: RewardConfig, tokenizer, texts: list[str], index: dict[str, int],
                  max_pairs: int = 0, prompt_chars: list[int] | None = None) -> PairSet:
    """Read pairs and render them; `texts`/`index` (and `prompt_chars`, parallel to texts) are shared across
    sets so a text is stored once."""
    from rlhf.preferences import read_pairs
    from rlhf.reward import prompt_lengths, render_texts

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
        chars = prompt_lengths(tokenizer, prompts, rendered) if prompt_chars is not None else None
        for j, t in enumerate(rendered):
            if t not in index:
                index[t] = len(texts)
                texts.append(t)
                if prompt_chars is not None:
                    prompt_chars.append(chars[j])
        ids.append(torch.tensor([index[t] for t in rendered]))
    smoothing = torch.tensor([0.5 if p.tie else cfg.label_smoothing for p in pairs], dtype=torch.float32)
    group_of: dict[str, int] = {}
    groups = torch.tensor([group_of.setdefault(json.dumps(p.prompt, sort_keys=True), len(group_of)) for p in pairs])
    return PairSet(texts, ids[0], ids[1], smoothing, prompt_chars, groups)


def feature_keys(texts: list[str], prompt_chars: list[int] | None, spec) -> list[str]:
    """Cache keys of the texts: where a response starts is part of what is pooled, so part of the key."""
    from rlhf.feature_cache import text_key

    if not spec.needs_response_mask:
        return [text_key(t) for t in texts]
    return [text_key(f"{t}\0{prompt_chars[i]}") for i, t in enumerate(texts)]


def reuse_superset_features(cache, spec, texts, prompt_chars, keys, hidden: int) -> None:
    """Fill `cache` from a sibling cache of more features (say every third layer with both poolings, from an
    earlier run or sweep) where it holds the missing texts: a subset of features costs no backbone pass."""
    from rlhf.feature_cache import FeatureCache
    from rlhf.reward import FeatureSpec

    want = set(cache.missing(keys))
    for directory in cache.siblings():
        if not want or not (directory / "spec.json").is_file():
            continue
        other_spec = FeatureSpec.from_dict(json.loads((directory / "spec.json").read_text()))
        try:
            cols = other_spec.columns(spec, hidden)
        except ValueError:
            continue
        other = FeatureCache.at(directory)
        other_keys = feature_keys(texts, prompt_chars, other_spec)
        pick = {k: ok for k, ok in zip(keys, other_keys) if k in want and ok in other.index}
        if pick:
            cache.put(list(pick), other.get(list(pick.values()))[:, cols])
            want -= set(pick)
            print(f"[reward] features: {len(pick)} taken from the cache of {other_spec.tag()} ({directory})")


@torch.no_grad()
def extract_features(model, texts: list[str], cfg: RewardConfig, accelerator,
                     prompt_chars: list[int] | None = None) -> torch.Tensor:
    """Features [len(texts), D] (`model.spec`) of the frozen backbone, through the on-disk cache (one entry per
    text holding every feature); missing texts are split over the processes, each writing its own cache
    shard. Each missing text goes through the backbone once, whatever the features."""
    from tqdm.auto import tqdm

    from rlhf.feature_cache import FeatureCache
    from rlhf.models import cache_root, model_fingerprint

    dtype = torch.bfloat16 if cfg.feature_dtype == "bfloat16" else torch.float32
    root = os.environ.get("RLHF_FEATURE_CACHE") or cache_root() / "features"
    cache = FeatureCache(root, model_fingerprint(cfg.model_name_or_path), dtype, cfg.max_length, model.spec.tag())
    chars = prompt_chars if model.spec.needs_response_mask else None
    keys = feature_keys(texts, prompt_chars, model.spec)
    if not cfg.cache_features:
        cache.index.clear()  # recompute everything (results still written, for later runs)
    elif cache.missing(keys) and accelerator.is_main_process:
        reuse_superset_features(cache, model.spec, texts, prompt_chars, keys, model.backbone.config.hidden_size)
        accelerator.wait_for_everyone()
    elif cache.missing(keys):
        accelerator.wait_for_everyone()
        cache.reload()
    missing = cache.missing(keys)
    accelerator.wait_for_everyone()  # every rank has its list before any rank writes a shard
    text_of = dict(zip(keys, texts))
    chars_of = dict(zip(keys, chars)) if chars is not None else None
    # Batches of similar length waste little on padding: sort by length (characters track tokens closely)
    # before dealing texts out, so each rank's batches are homogeneous too.
    missing = sorted(missing, key=lambda k: len(text_of[k]))
    mine = missing[accelerator.process_index::accelerator.num_processes]
    # extract with a bf16 copy when asked, so the saved (fp32) backbone keeps its exact weights
    original = model.backbone
    if dtype != torch.float32:
        model.backbone = copy.deepcopy(original).to(dtype)
    model.eval()
    tokens = shared = rows = calls = 0
    try:
        for i in tqdm(range(0, len(mine), cfg.extract_batch_size), desc="features",
                      disable=not accelerator.is_main_process or not mine):
            chunk = mine[i:i + cfg.extract_batch_size]
            encoded = model.encode([text_of[k] for k in chunk],
                                   None if chars_of is None else [chars_of[k] for k in chunk])
            batch = {k: v.to(accelerator.device) for k, v in encoded.items()}
            with torch.no_grad():
                if cfg.share_prefix:
                    feats, prefix = model.features_shared_prefix(**batch)
                else:
                    feats, prefix = model.features(**batch), 0
            cache.put(chunk, feats.float())
            rows += len(chunk)
            calls += 2 if prefix else 1
            tokens += int(batch["attention_mask"].sum())
            shared += prefix * (len(chunk) - 1)  # prefix tokens not run again
    finally:
        model.backbone = original
    if mine and cfg.share_prefix:
        accelerator.print(f"[reward] shared prefixes saved {shared} of {tokens} backbone tokens "
                          f"({100 * shared / max(tokens, 1):.0f}%)")
    if not missing:
        accelerator.print("[reward] backbone passes: 0 (every feature cached)")
    if mine:
        print(f"[reward] backbone passes: {rows} texts, one pass each ({calls} forward calls"
              + (", shared prefixes run once per batch" if cfg.share_prefix else "")
              + f"), features {model.spec.tag()} ({model.spec.dim(model.backbone.config.hidden_size)} values)")
    accelerator.wait_for_everyone()
    cache.reload()
    if accelerator.is_main_process and not (cache.dir / "spec.json").is_file() and cache.dir.is_dir():
        (cache.dir / "spec.json").write_text(json.dumps(model.spec.to_dict()))  # for reuse by subsets
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
        rewards = head(features[both].to(device)).mean(-1)  # an ensemble's mean; one head: its output
    else:
        chars = [pairs.prompt_chars[i] for i in both] if pairs.prompt_chars is not None else None
        rewards = model(**{k: v.to(device) for k, v in encode([pairs.texts[i] for i in both], chars).items()})
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


def save_model(accelerator, model, out: Path, eval_set, features) -> None:
    """The main process publishes model/ atomically (an older one stays whole until replaced), then the held-out
    margins; every rank waits for it."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with publish_dir(out / "model", what="model") as tmp:
            model.save(tmp)
        if eval_set is not None:
            write_eval_margins(model, eval_set, features, out / "eval_margins.json", accelerator.device)
    accelerator.wait_for_everyone()


@torch.no_grad()
def write_eval_margins(model, pairs: PairSet, features, path: Path, device) -> None:
    """r(chosen) - r(rejected) of every held-out pair, in file order, as a JSON list (for per-pair analysis)."""
    model.eval()
    margins = []
    for i in range(0, len(pairs), 64):
        idx = list(range(i, min(i + 64, len(pairs))))
        rc, rr = pair_rewards(pairs, idx, device, head=model.head, features=features, model=model,
                              encode=model.encode)
        margins += (rc - rr).float().tolist()
    atomic_write_json(path, margins, indent=None, what="eval_margins")


@releases_run_lock
def train(cfg: RewardConfig) -> dict:
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from rlhf.reward import RewardModel
    from rlhf.runs import RunLogger, prepare_output_dir

    hf_logging.disable_progress_bar()
    accelerator = make_accelerator(bf16=cfg.bf16, report_to=cfg.report_to, project_dir=cfg.output_dir)
    sizes = derive_batch_sizes(cfg.global_batch_size, cfg.per_device_batch_size, accelerator.num_processes)
    if shards_parameters(accelerator):  # every rank scores its own share of texts with the whole model
        raise ConfigError("the reward stage does not run under ZeRO-3 or FSDP (parameter sharding); use a "
                          "data-parallel preset such as multi_gpu or deepspeed_zero2")
    out = prepare_output_dir(cfg, accelerator)
    logger = RunLogger(accelerator, cfg, "rlhf-reward")
    started = time.time()

    # 1. Model and pairs (the main process first: it may convert the embedded backbone into the cache).
    with accelerator.main_process_first():
        try:
            model = RewardModel.from_backbone(cfg.model_name_or_path, head=cfg.head, mlp_hidden=cfg.mlp_hidden,
                                              max_length=cfg.max_length, seed=cfg.seed, layers=cfg.layers,
                                              pooling=cfg.pooling, logprobs=cfg.logprob_features)
        except ValueError as e:  # layers out of range for this backbone
            raise ConfigError(f"layers {cfg.layers!r}: {e}") from None
    texts, index, chars = [], {}, []
    train_set = load_pair_set(cfg.train_pairs, cfg, model.tokenizer, texts, index, cfg.max_train_pairs, chars)
    eval_set = (load_pair_set(cfg.eval_pairs, cfg, model.tokenizer, texts, index, prompt_chars=chars)
                if cfg.eval_pairs else None)
    if cfg.head_fit == "sgd" and len(train_set) < sizes.global_batch:  # refused: a last smaller batch would
        # not split evenly over ranks (the validated fit takes every pair at once and needs no batches)
        raise ConfigError(f"train_pairs: {len(train_set)} usable pairs, fewer than global_batch_size "
                          f"{sizes.global_batch}, so not one optimiser step would run; lower global_batch_size to "
                          f"at most {len(train_set)} or add pairs")
    model.freeze_backbone(cfg.unfreeze_top_layers)
    if cfg.use_peft:
        from peft import LoraConfig, get_peft_model

        from rlhf.models import quiet_peft

        with quiet_peft():
            model.backbone = get_peft_model(model.backbone, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                                       target_modules="all-linear"))
    if cfg.gradient_checkpointing and not cfg.frozen:
        from rlhf.models import enable_gradient_checkpointing

        enable_gradient_checkpointing(model.backbone)
    model.to(accelerator.device)

    # 2. Frozen backbone: features once per unique text, from the cache where possible.
    features, computed, extract_started = None, 0, time.time()
    if cfg.frozen:
        features, computed = extract_features(model, texts, cfg, accelerator, chars)
    extract_seconds = time.time() - extract_started
    if cfg.head_fit == "validated":
        return finish_validated(cfg, model, train_set, eval_set, features, accelerator, logger, out, started,
                                {"reward/unique_texts": len(texts), "reward/features_computed": computed,
                                 "reward/extract_seconds": extract_seconds})

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
    save_model(accelerator, core, out, eval_set, features)
    elapsed = time.time() - started
    metrics = logger.finish({
        **final, "reward/mean": core.mean, "reward/std": core.std, "reward/unique_texts": len(texts),
        "reward/features_computed": computed, "reward/extract_seconds": extract_seconds,
        "reward/seconds": elapsed, "reward/pairs_per_second": total_steps * sizes.global_batch / elapsed,
        "train/steps": total_steps,
        "model_dir": str(out / "model"),
    })
    accelerator.print(f"[reward] train accuracy {final['train/accuracy']:.3f}"
                      + (f", held-out accuracy {final['eval/accuracy']:.3f} (ECE {final['eval/ece']:.3f})"
                         if eval_set is not None else "") + f"; {elapsed:.1f} s; model in {out / 'model'}")
    return metrics


def candidate_sets(spec, hidden: int, which: str = "auto") -> dict[str, tuple]:
    """Feature sets to choose from, as {name: (FeatureSpec, columns of spec's vector)}: the final layer or
    every extracted layer, last token or last + mean, with or without the log-prob statistics, and the
    log-probs alone (only what `spec` extracted; duplicates dropped). "transformers": the final layer's last
    token only."""
    from rlhf.reward import FeatureSpec

    top = spec.num_layers
    layer_sets = {"final": [top]} if top in spec.layers else {}
    if spec.layers and spec.layers != (top,):
        layer_sets["layers" + ",".join(map(str, spec.layers))] = list(spec.layers)
    poolings = {"last": ["last"], "mean": ["mean"], "both": ["last", "both"]}[spec.pooling]
    if which == "transformers":
        if top not in spec.layers or spec.pooling == "mean":
            raise ConfigError("feature_sets 'transformers' needs the final layer's last token among the "
                              "extracted features (layers including the final one, pooling last or both)")
        layer_sets, poolings, lp_options = {"final": [top]}, ["last"], [False]
    else:
        lp_options = [False, True] if spec.logprobs else [False]
    out, seen = {}, set()
    for lname, layers in layer_sets.items():
        for pooling in poolings:
            for lp in lp_options:
                sub = FeatureSpec(layers, pooling, lp, top)
                name = f"{lname}/{'last+mean' if pooling == 'both' else pooling}" + ("+logprobs" if lp else "")
                cols = tuple(spec.columns(sub, hidden))
                if cols not in seen:
                    seen.add(cols)
                    out[name] = (sub, list(cols))
    if spec.logprobs and which != "transformers":
        sub = FeatureSpec([], "last", True, top)
        out["logprobs"] = (sub, spec.columns(sub, hidden))
    return out


def finish_validated(cfg: RewardConfig, model, train_set: PairSet, eval_set: PairSet | None, features,
                     accelerator, logger, out: Path, started: float, extra: dict) -> dict:
    """head_fit 'validated': choose the feature set and L2 strength on a validation part of the training pairs
    (`rlhf.head_fit.choose_head`; held-out pairs are not passed to it), refit on all training pairs (as
    `ensemble_size` bootstrap members), save, and report. Deterministic, so every process computes the same."""
    from torch import nn

    from rlhf.head_fit import choose_head, fit_members

    hidden = model.backbone.config.hidden_size
    if len(torch.unique(train_set.groups)) < 2:
        raise ConfigError("head_fit 'validated' needs training pairs from at least 2 prompts (a validation part "
                          "holds whole prompts); with fewer use head_fit 'sgd'")
    sets = candidate_sets(model.spec, hidden, cfg.feature_sets)
    grid = [float(x) for x in cfg.l2_grid.split(",") if x.strip()]
    fit_started = time.time()
    choice = choose_head(features, train_set.chosen, train_set.rejected, train_set.smoothing, train_set.groups,
                         {name: cols for name, (_, cols) in sets.items()}, grid, cfg.validation_fraction,
                         cfg.seed, cfg.select_by)
    rank = ((lambda r: (r["val_accuracy"], -r["val_loss"])) if cfg.select_by == "accuracy"
            else (lambda r: (-r["val_loss"], r["val_accuracy"])))
    best_per_set = {}
    for row in choice["table"]:  # the best strength of each feature set, by the selection criterion
        if row["features"] not in best_per_set or rank(row) > rank(best_per_set[row["features"]]):
            best_per_set[row["features"]] = row
    accelerator.print(f"[reward] head chosen on {choice['val_pairs']} validation pairs (fitted on "
                      f"{choice['fit_pairs']}); best validation accuracy per feature set:")
    for name, row in best_per_set.items():
        mark = " <- chosen" if name == choice["features"] and row["l2"] == choice["l2"] else ""
        accelerator.print(f"  {name:<40} {sets[name][0].dim(hidden):>6} features  l2 {row['l2']:<8g} "
                          f"validation accuracy {row['val_accuracy']:.3f}, loss {row['val_loss']:.3f} "
                          f"(fit accuracy {row['fit_accuracy']:.3f}){mark}")
    spec, cols = sets[choice["features"]]
    weights = fit_members(features, train_set.chosen, train_set.rejected, train_set.smoothing, cols,
                          choice["l2"], cfg.ensemble_size, cfg.seed)  # [N, D_chosen], on all training pairs
    head = nn.Linear(len(cols), cfg.ensemble_size, bias=False)
    head.weight.data.copy_(weights)
    fit = {"method": "validated", **{k: v for k, v in choice.items() if k != "table"},
           "validation_fraction": cfg.validation_fraction, "ensemble_size": cfg.ensemble_size,
           "candidates": {name: {"features": s.to_dict(), "dim": len(c)} for name, (s, c) in sets.items()},
           "table": choice["table"]}  # (no timing: reward_config.json describes the model, alike on every run)
    fit_seconds = time.time() - fit_started
    model.set_head(head.to(accelerator.device), spec, fit)
    features = features[:, cols]
    final = pair_metrics(model, train_set, features, cfg, accelerator, "train")
    if eval_set is not None:
        final.update(pair_metrics(model, eval_set, features, cfg, accelerator, "eval"))
    responses = torch.unique(torch.cat([train_set.chosen, train_set.rejected]))
    with torch.no_grad():
        rewards = model.head(features[responses].to(accelerator.device)).mean(-1).float()
    model.mean, model.std = rewards.mean().item(), max(rewards.std().item(), 1e-6)
    save_model(accelerator, model, out, eval_set, features)
    elapsed = time.time() - started
    metrics = logger.finish({
        **final, "reward/mean": model.mean, "reward/std": model.std, **extra,
        "reward/head_features": choice["features"], "reward/head_l2": choice["l2"],
        "reward/val_accuracy": choice["val_accuracy"], "reward/ensemble_size": cfg.ensemble_size,
        "reward/fit_seconds": fit_seconds, "reward/seconds": elapsed, "model_dir": str(out / "model"),
    })
    accelerator.print(f"[reward] chose {choice['features']} at l2 {choice['l2']:g} (validation accuracy "
                      f"{choice['val_accuracy']:.3f}); refit on all {len(train_set)} training pairs"
                      + (f" as {cfg.ensemble_size} bootstrap members" if cfg.ensemble_size > 1 else "")
                      + f": train accuracy {final['train/accuracy']:.3f}"
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
