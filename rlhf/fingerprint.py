"""What a stage's output depends on: the settings that change it and the content of the files it reads.

`rlhf run` keys each stage by `stage_key(stage, cfg)`: a hash of every output-changing field of the stage's
config and of the *content* of every input it reads (a data file, a model directory, the module of a
`reward_fn`), so editing a data set in place, retraining an upstream model or changing a reward function
reruns the stage, and a stage run with `--only` is keyed by what it actually consumed.

Every field of every stage config is classified in `NEUTRAL` (does not change the outputs: where they go,
logging and checkpoint cadence, an early stop that is resumed, a labeler's port) or `OUTPUT` (everything
else). A field in neither is treated as output-changing, and tests/test_pipeline.py fails until it is
classified.

Files are hashed by content (SHA-256, streamed; SmolLM2-135M's 517 MB float32 directory takes 1.1 s on one
busy CPU core): sizes and modification times are never trusted on their own, because an edit that keeps the size within the
timestamp's resolution, or a copy that keeps the time, would go unnoticed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from pathlib import Path

from rlhf.config import ConfigError

STAGE_OF = {"SFTConfig": "sft", "CollectConfig": "collect", "LabelConfig": "label", "RewardConfig": "reward",
            "PolicyConfig": "policy", "EvaluateConfig": "evaluate", "DPOConfig": "dpo"}

COMMON_NEUTRAL = {"output_dir", "resume", "overwrite", "log_every", "report_to"}

# stage -> fields that do not change what the stage writes as its product (beside the COMMON_NEUTRAL ones)
NEUTRAL: dict[str, set[str]] = {
    "sft": {"per_device_batch_size", "eval_every", "eval_at_start", "save_every", "keep_checkpoints",
            "stop_after_step", "sample_count", "sample_max_new_tokens"},
    "collect": set(),
    "label": {"host", "port"},
    "reward": set(),
    "policy": {"sample_every", "save_every", "stop_after_update"},
    "evaluate": set(),
    "dpo": {"per_device_batch_size", "save_every", "keep_checkpoints", "stop_after_step"},
}

# stage -> fields that change the stage's outputs
OUTPUT: dict[str, set[str]] = {
    "sft": {"seed", "model_name_or_path", "dataset", "dataset_split", "eval_dataset", "eval_split", "eval_fraction",
            "max_length", "completion_only_loss", "use_peft", "lora_r", "lora_alpha", "lora_dropout",
            "lora_target_modules", "learning_rate", "weight_decay", "lr_scheduler", "warmup_ratio", "warmup_steps",
            "num_epochs", "max_steps", "global_batch_size", "max_grad_norm", "bf16", "gradient_checkpointing"},
    "collect": {"seed", "model_name_or_path", "prompts", "prompts_split", "max_prompts", "k", "temperature",
                "top_p", "max_new_tokens", "max_prompt_tokens", "skip_invalid", "batch_size", "bf16"},
    "label": {"seed", "candidates", "labeler", "pair_rule", "human_pairs", "keep_ties", "sim_temperature",
              "sim_flip_rate", "reward_model"},
    "reward": {"seed", "model_name_or_path", "train_pairs", "max_train_pairs", "eval_pairs", "pairs_format",
               "dataset_split", "skip_invalid", "max_length", "head", "mlp_hidden", "unfreeze_top_layers", "use_peft",
               "lora_r", "lora_alpha", "cache_features", "feature_dtype", "extract_batch_size", "share_prefix",
               "learning_rate", "weight_decay", "num_epochs", "global_batch_size", "per_device_batch_size", "margin",
               "label_smoothing", "center_rewards_coef", "layers", "pooling", "logprob_features", "head_fit",
               "validation_fraction", "l2_grid", "select_by", "feature_sets", "ensemble_size", "bf16",
               "gradient_checkpointing"},
    "policy": {"seed", "model_name_or_path", "reward_model", "reward_fn", "normalize_rewards", "prompts",
               "prompts_split", "prompts_per_update", "k", "temperature", "top_p", "max_new_tokens",
               "missing_eos_penalty", "num_updates", "ppo_epochs", "minibatch_size", "clip_range", "beta",
               "kl_estimator", "target_kl", "kl_horizon", "baseline", "gamma", "lam", "vf_coef", "value_clip",
               "whiten_advantages", "reuse_step_forward", "share_prompts", "use_peft", "lora_r", "lora_alpha",
               "learning_rate", "max_grad_norm", "reward_weights", "reward_aggregate", "reward_lcb_k",
               "scale_rewards", "micro_batch_size", "bf16", "gradient_checkpointing",
               # the probe writes figures to the log (not the model): a run with other probe settings is
               # another run's log
               "probe_every", "probe_prompts", "probe_max_prompts", "probe_samples", "probe_gold_fn"},
    "evaluate": {"seed", "checkpoints", "names", "baseline", "reference", "reward_model", "normalize_rewards",
                 "prompts", "prompts_split", "max_prompts", "num_samples", "greedy", "temperature", "top_p",
                 "max_new_tokens", "batch_size", "bootstrap_samples", "confidence", "metrics", "plots"},
    "dpo": {"seed", "model_name_or_path", "train_pairs", "max_train_pairs", "eval_pairs", "pairs_format",
            "dataset_split", "skip_invalid", "max_length", "beta", "loss_type", "label_smoothing", "use_peft",
            "lora_r", "lora_alpha", "lora_dropout", "learning_rate", "lr_scheduler", "warmup_ratio", "weight_decay",
            "num_epochs", "max_steps", "global_batch_size", "max_grad_norm", "bf16", "gradient_checkpointing"},
}


def neutral_fields(stage: str) -> set[str]:
    return COMMON_NEUTRAL | NEUTRAL.get(stage, set())


def unclassified(stage: str, cfg_cls) -> list[str]:
    """Fields of `cfg_cls` that are in neither NEUTRAL nor OUTPUT for `stage` (hashed, to be safe)."""
    known = neutral_fields(stage) | OUTPUT.get(stage, set())
    return [f.name for f in dataclasses.fields(cfg_cls) if f.name not in known]


# ------------------------------------------------------------------------------------------ content


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Inside a model directory, what a stage wrote about its own run is not part of the model: its bookkeeping,
# and the model card (README.md, rlhf.model_card), which records the run's timings and metrics.
_NOT_CONTENT = {"checkpoints", "log.jsonl", "metrics.json", "DONE.json", "RUNNING.json", "inputs.json",
                "__pycache__", ".cache", "README.md"}


def path_digest(path: str | Path) -> str:
    """Content hash of a file, or of a directory's files (names and bytes, recursively; a model directory's
    weights, config and tokenizer files). Hidden files and run bookkeeping (checkpoints/, logs) are left out."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if any(part.startswith(".") or part in _NOT_CONTENT for part in rel.parts) or not p.is_file():
            continue
        h.update(f"{rel.as_posix()}\0{file_digest(p)}\n".encode())
    return h.hexdigest()


def module_file(spec: str) -> Path:
    """The source file of the module in a 'module:function' spec; ConfigError where there is none."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"reward_fn {spec!r}: expected 'module:function'")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as e:  # a parent package that is missing
        raise ConfigError(f"reward_fn {spec!r}: cannot find module '{module}' ({e})") from None
    if found is None:
        raise ConfigError(f"reward_fn {spec!r}: no module named '{module}' (is it on PYTHONPATH?)")
    return Path(found.origin) if found.origin and found.origin not in ("built-in", "frozen") else Path()


def inputs_of(stage: str, cfg) -> dict[str, str]:
    """{"field" or "field[i]": content hash} for every output-changing setting that names a local file or
    directory, and the source file of a `reward_fn` module. Hub names and the toolkit's model aliases
    (`tiny-llama`, the embedded SmolLM2) are keyed by their name alone, as part of the settings."""
    out: dict[str, str] = {}
    neutral = neutral_fields(stage)
    for f in dataclasses.fields(cfg):
        if f.name in neutral or (f.name.startswith("probe_") and not getattr(cfg, "probe_every", 0)):
            continue  # (the policy's probe files are read only when it probes)
        value = getattr(cfg, f.name)
        if f.name == "reward_model" and getattr(cfg, "reward_fn", ""):
            continue  # the policy stage scores with its reward functions and never reads the model
        if f.name in ("reward_fn", "probe_gold_fn") and value:  # comma-separated 'module:function' specs
            specs = [x.strip() for x in value.split(",") if x.strip()]
            for spec in specs:
                src = module_file(spec)
                out[f.name if len(specs) == 1 else f"{f.name}:{spec}"] = (file_digest(src) if src.is_file()
                                                                         else "unhashable")
            continue
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v:
                continue
            key = f"{f.name}[{i}]" if isinstance(value, list) else f.name
            parts = [v] if Path(v).expanduser().exists() or "," not in v else [p.strip() for p in v.split(",")]
            for part in parts:  # a comma-separated list of files (train_pairs: "a.jsonl,b.jsonl")
                if part and Path(part).expanduser().exists():
                    out[key if len(parts) == 1 else f"{key}:{part}"] = path_digest(Path(part).expanduser())
    return out


def stage_key(stage: str, values: dict, inputs: dict[str, str]) -> str:
    """16 hex digits over the output-changing settings and the inputs' content hashes."""
    neutral = neutral_fields(stage)
    kept = {k: v for k, v in sorted(values.items()) if k not in neutral}
    blob = json.dumps({"config": kept, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
