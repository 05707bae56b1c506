"""TRL and transformers argument names, read as the toolkit's own (in YAML and on the command line).

A `trl sft` / `trl reward` / `trl grpo` config names its fields after `transformers.TrainingArguments` and TRL's
configs; each such name is mapped here once, in `ALIASES`, to the toolkit's field. An alias applies to every
stage whose config has its field; reading one prints a one-line notice naming the toolkit's field:

    rlhf sft: num_train_epochs (TRL/transformers name) read as num_epochs

The batch sizes are counted differently and are converted, with the number of processes of the launch
(`WORLD_SIZE`, set by accelerate and torchrun; 1 for a plain process):

    SFT, reward:  per_device_batch_size = per_device_train_batch_size
                  global_batch_size     = per_device_train_batch_size x gradient_accumulation_steps x processes
    policy (as TRL's GRPO/RLOO, whose batch sizes count completions):
                  minibatch_size        = per_device_train_batch_size x gradient_accumulation_steps x processes
                  prompts_per_update    = generation batch / k, the generation batch being
                                          per_device_train_batch_size x processes x steps_per_generation
                                          (steps_per_generation defaults to gradient_accumulation_steps), or
                                          generation_batch_size where given

A key that TRL or transformers define but that has no equivalent here (push_to_hub, say) fails with an error
that names it as not supported; every other unknown key keeps the strict unknown-key error of `rlhf.config`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Any

# TRL / transformers name -> the toolkit's field, or a tuple of fields of which the first that the stage's
# config has is meant (a data set is `dataset` in SFT, `train_pairs` in reward, `prompts` in policy).
ALIASES: dict[str, str | tuple[str, ...]] = {
    "num_train_epochs": "num_epochs",
    "logging_steps": "log_every",
    "save_steps": "save_every",
    "save_total_limit": "keep_checkpoints",
    "eval_steps": "eval_every",
    "lr_scheduler_type": "lr_scheduler",
    "resume_from_checkpoint": "resume",
    "num_generations": "k",
    "max_completion_length": "max_new_tokens",
    "response_length": "max_new_tokens",  # PPOConfig
    "epsilon": "clip_range",
    "cliprange": "clip_range",  # PPOConfig
    "cliprange_value": "value_clip",  # PPOConfig
    "num_iterations": "ppo_epochs",
    "num_ppo_epochs": "ppo_epochs",  # PPOConfig
    "kl_coef": "beta",  # PPOConfig
    "center_rewards_coefficient": "center_rewards_coef",
    "max_steps": "num_updates",  # the policy stage (SFT has max_steps itself): optimiser steps -> updates
    "dataset_name": ("dataset", "train_pairs", "prompts"),  # TRL's ScriptArguments
    "dataset_train_split": ("dataset_split", "prompts_split"),
    "dataset_test_split": ("eval_split",),
}

# Batch-size names, converted together (see the module's docstring).
BATCH_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
              "generation_batch_size")


def _error(message: str):
    from rlhf.config import ConfigError

    return ConfigError(message)


def notice(message: str) -> None:
    """A one-line notice on stderr, from the main process of a launch only."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr)


@functools.lru_cache(maxsize=1)
def foreign_keys() -> frozenset[str]:
    """Every field name of transformers' TrainingArguments and of TRL's configs (imported on first use only:
    it is asked about keys that are neither the toolkit's fields nor aliases)."""
    names: set[str] = set()
    try:
        from transformers import TrainingArguments

        names |= {f.name for f in dataclasses.fields(TrainingArguments)}
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        import trl

        for cls in ("SFTConfig", "RewardConfig", "GRPOConfig", "RLOOConfig", "DPOConfig", "KTOConfig",
                    "ModelConfig", "ScriptArguments"):
            if hasattr(trl, cls):
                names |= {f.name for f in dataclasses.fields(getattr(trl, cls))}
    except ImportError:  # pragma: no cover - trl is a dependency
        pass
    return frozenset(names | set(ALIASES) | set(BATCH_KEYS))


def target(cls, key: str) -> str | None:
    """The toolkit field of `cls` that the TRL/transformers name `key` stands for (None: none here)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    want = ALIASES.get(key)
    for name in (want,) if isinstance(want, str) else (want or ()):
        if name in fields:
            return name
    return None


def is_foreign(key: str) -> bool:
    return key in ALIASES or key in BATCH_KEYS or key in foreign_keys()


def _stage(cls) -> str:
    return cls.__name__


def _integral(key: str, value: Any, where: str) -> Any:
    """TRL allows floats for some counts (a ratio below 1 for *_steps); here they must be whole numbers."""
    if isinstance(value, str):  # from the command line
        try:
            value = float(value) if not value.strip().lstrip("-").isdigit() else int(value)
        except ValueError:
            return value  # rlhf.config names the type error
    if isinstance(value, float):
        if not value.is_integer():
            raise _error(f"key '{key}'{where}: {value!r} must be a whole number here")
        return int(value)
    return value


def _convert(key: str, field: str, value: Any, tp: Any, where: str) -> Any:
    """The toolkit's value for an aliased one (None meaning 'off' in TRL, floats for counts, ...)."""
    if key == "resume_from_checkpoint":
        if value is None:
            return False
        if isinstance(value, str) and value.lower() not in {"true", "false", "yes", "no", "1", "0", "null", "none"}:
            raise _error(f"key 'resume_from_checkpoint'{where}: a checkpoint path is not supported here; "
                         "set output_dir to the run and resume: true (it continues from the latest checkpoint)")
        if isinstance(value, str) and value.lower() in {"null", "none"}:
            return False
        return value
    if value is None and key in ("center_rewards_coefficient",):
        return 0.0
    if value is None and key == "save_total_limit":
        return 0  # keep every checkpoint
    if tp is int or str(tp) == "int":
        return _integral(key, value, where)
    return value


def resolve(cls, values: dict[str, Any], *, source: str | None = None, base=None) -> dict[str, Any]:
    """`values` with TRL/transformers names replaced by the toolkit's fields (notices printed); raises for a
    TRL/transformers key that has no equivalent in `cls`. Keys that are `cls`'s own fields pass unchanged."""
    import typing

    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    where = f" in {source}" if source else ""
    out: dict[str, Any] = {}
    batch: dict[str, Any] = {}
    for key, value in values.items():
        if key == "report_to" and isinstance(value, (list, tuple)):  # TRL/transformers take a list
            value = ",".join(map(str, value)) or "none"
        if key == "loss_type" and isinstance(value, (list, tuple)) and len(value) == 1:  # TRL's DPO: a list
            value = value[0]
        if (key == "warmup_steps" and "warmup_ratio" in fields and isinstance(value, float) and 0 < value < 1
                and "warmup_ratio" not in values):  # transformers 5: a warmup_steps below 1 is a ratio
            out["warmup_ratio"] = value
            notice(f"rlhf: warmup_steps {value} (a ratio, as transformers reads it) read as warmup_ratio{where}")
            continue
        if key == "scale_rewards" and isinstance(value, bool) and key in fields:  # older TRL: a bool
            out[key] = "group" if value else "none"
            continue
        if key in fields:
            out[key] = value
            continue
        if key in BATCH_KEYS:
            batch[key] = value
            continue
        if key in ALIASES:
            field = target(cls, key)
            if field is None:
                raise _error(f"key '{key}'{where}: the TRL/transformers name '{key}' has no equivalent in "
                             f"{_stage(cls)} (not supported)")
            if field in values:
                raise _error(f"key '{key}'{where}: give either '{key}' or '{field}', not both")
            out[field] = _convert(key, field, value, hints[field], where)
            if key == "max_steps":
                continue  # converted with the batch sizes, below
            notice(f"rlhf: {key} (TRL/transformers name) read as {field}{where}")
            continue
        if key in foreign_keys():
            raise _error(f"key '{key}'{where}: the TRL/transformers argument '{key}' is not supported by "
                         f"{_stage(cls)}")
        out[key] = value  # unknown: rlhf.config raises its unknown-key error
    if batch:
        out.update(_batch_sizes(cls, batch, out, base, where))
    if "max_steps" in values and "max_steps" not in fields:
        out["num_updates"] = _updates(cls, out, base, where)
    return out


def _updates(cls, resolved: dict[str, Any], base, where: str) -> int:
    """TRL's max_steps counts optimiser steps; an update of the policy stage takes
    ppo_epochs x (prompts_per_update x k / minibatch_size) of them."""
    current = base if base is not None else cls()
    get = lambda name: int(resolved.get(name, getattr(current, name)))
    steps = _as_int("max_steps", resolved["num_updates"], where)
    batch = get("prompts_per_update") * get("k")
    per_update = get("ppo_epochs") * max(1, batch // get("minibatch_size"))
    if steps % per_update:
        raise _error(f"key 'max_steps'{where}: {steps} optimiser steps is not a whole number of updates of "
                     f"{per_update} steps each")
    notice(f"rlhf: max_steps {steps} (TRL/transformers name) read as num_updates {steps // per_update}{where}")
    return steps // per_update


def _as_int(key: str, value: Any, where: str) -> int:
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < 1 or (isinstance(value, float) and not value.is_integer()):
        raise _error(f"key '{key}'{where}: expected an integer >= 1, got {value!r}")
    return number


def _batch_sizes(cls, batch: dict[str, Any], resolved: dict[str, Any], base, where: str) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(cls)}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    n = {k: _as_int(k, v, where) for k, v in batch.items()}
    current = base if base is not None else cls()
    if "minibatch_size" in fields:  # the policy stage: batch sizes count completions, as in TRL's GRPO/RLOO
        per_device = n.get("per_device_train_batch_size")
        accum = n.get("gradient_accumulation_steps", 1)
        if per_device is None:
            raise _error(f"key '{next(iter(batch))}'{where}: give per_device_train_batch_size with it "
                         "(the TRL batch sizes are converted together)")
        k = int(resolved.get("k", current.k))
        if "generation_batch_size" in n and "steps_per_generation" in n:
            raise _error(f"keys 'generation_batch_size' and 'steps_per_generation'{where}: give one of them")
        generation = n.get("generation_batch_size",
                           per_device * world * n.get("steps_per_generation", accum))
        if generation % k:
            raise _error(f"the generation batch {generation} (TRL batch sizes{where}) is not a multiple of "
                         f"num_generations / k = {k}")
        result = {"minibatch_size": per_device * accum * world, "prompts_per_update": generation // k}
    else:
        if set(n) & {"steps_per_generation", "generation_batch_size"}:
            key = next(k for k in ("steps_per_generation", "generation_batch_size") if k in n)
            raise _error(f"key '{key}'{where}: the TRL argument '{key}' is not supported by {_stage(cls)}")
        per_device = n.get("per_device_train_batch_size", int(resolved.get("per_device_batch_size",
                                                                              current.per_device_batch_size)))
        accum = n.get("gradient_accumulation_steps", 1)
        result = {"per_device_batch_size": per_device, "global_batch_size": per_device * accum * world}
    for key in result:
        if key in resolved:
            raise _error(f"key '{key}'{where}: give either the TRL batch sizes or '{key}', not both")
    given = " x ".join(f"{k} {v}" for k, v in n.items())
    notice(f"rlhf: {given} x {world} process{'es' if world > 1 else ''} (TRL/transformers names) read as "
           + ", ".join(f"{k} {v}" for k, v in result.items()) + where)
    return result


def split_flags(cls, unknown: list[str]) -> tuple[dict[str, str], list[str]]:
    """From argparse's unknown arguments, the `--name VALUE` / `--name=VALUE` pairs whose name is a
    TRL/transformers argument (to `resolve`), and the rest (still unknown)."""
    found: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(unknown):
        arg = unknown[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name and is_foreign(name):
            if not eq:
                if i + 1 < len(unknown) and not unknown[i + 1].startswith("--"):
                    value = unknown[i + 1]
                    i += 1
                else:
                    value = "true"
            found[name] = value
        else:
            rest.append(arg)
        i += 1
    return found, rest
