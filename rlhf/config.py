"""Stage configs: one dataclass per stage, YAML files in `configs/`, CLI overrides on top.

Precedence is defaults < `--config FILE.yaml` < `--<field> VALUE` flags. Every field carries its help text in
`metadata["help"]`, which becomes the `--help` text. An unknown key, a wrong type or an invalid value fails
with a `ConfigError` that names the key and, where it came from a file, the file.

    cfg = parse_args(SFTConfig, ["--config", "configs/tiny/sft.yaml", "--max_steps", "5"])
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from rlhf import aliases


class ConfigError(ValueError):
    """A config problem, with a message that names the key (and the file) at fault."""


def option(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | None = None, **kw):
    """A dataclass field with help text (and optional allowed values) for `--help` and validation."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=metadata, **kw)
    return dataclasses.field(default=default, metadata=metadata, **kw)


@dataclasses.dataclass
class RunConfig:
    """Fields shared by every stage: where outputs go, seeding, resuming and tracking."""

    output_dir: str = option("runs/stage", help="Directory for config.yaml, log.jsonl, metrics.json, "
                             "checkpoints/ and the stage's artefact.")
    seed: int = option(0, help="Seed for data order, initialisation and sampling.")
    resume: bool = option(False, help="Continue from the latest checkpoint in output_dir/checkpoints.")
    overwrite: bool = option(False, help="Allow starting afresh in an output_dir that already holds a run "
                             "(its checkpoints are deleted).")
    log_every: int = option(1, help="Write a log.jsonl line (and tracker point) every this many optimiser steps.")
    report_to: str = option("none", help="Experiment tracker(s) through accelerate: none, all (every installed "
                            "one), or any of accelerate's trackers, comma-separated (tensorboard, trackio, wandb, "
                            "mlflow, comet_ml, aim, clearml, dvclive, swanlab); see rlhf/trackers.py.")

    # Fields that may differ between a run and its resumption (they do not change the result).
    RESUMABLE_CHANGES: typing.ClassVar[tuple[str, ...]] = (
        "output_dir", "resume", "overwrite", "log_every", "report_to")
    # Why a run of this config cannot continue with `resume: true` (refused when the config is loaded); empty:
    # it can.
    NOT_RESUMABLE: typing.ClassVar[str] = ""

    def validate(self) -> None:
        """Check values beyond their types. Subclasses extend this; errors name the key."""
        if self.log_every < 1:
            raise ConfigError("log_every must be >= 1")
        out = Path(self.output_dir)
        for p in (out, *out.parents):  # a file where the directory (or one above it) would go
            if p.exists() and not p.is_dir():
                raise ConfigError(f"output_dir {self.output_dir!r}: {p} is a file, not a directory")
        from rlhf.trackers import check_report_to

        check_report_to(self.report_to)  # accelerate's tracker names, their packages installed


# ---------------------------------------------------------------------------------------------- types


def _type_hints(cls) -> dict[str, Any]:
    """Types of the dataclass fields only (class-level constants such as RESUMABLE_CHANGES are not keys)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp) -> str:
    base, optional = _unwrap_optional(tp)
    origin = typing.get_origin(base)
    if origin is list:
        (inner,) = typing.get_args(base) or (str,)
        name = f"list of {inner.__name__}"
    else:
        name = getattr(base, "__name__", str(base))
    return f"{name} or null" if optional else name


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value: Any, tp, *, from_cli: bool) -> Any:
    """Convert `value` to type `tp` or raise TypeError. CLI strings are parsed; YAML values are checked."""
    base, optional = _unwrap_optional(tp)
    if value is None or (from_cli and optional and str(value).lower() in {"null", "none", "~"}):
        if optional:
            return None
        raise TypeError("null is not allowed")
    if typing.get_origin(base) is list:
        (inner,) = typing.get_args(base) or (str,)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = yaml.safe_load(text)
            else:
                value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, inner, from_cli=from_cli or isinstance(v, str)) for v in value]
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise TypeError(f"expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool):
            raise TypeError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise TypeError(f"expected an integer, got {type(value).__name__} {value!r}")
    if base is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string; accept it as a number.
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")
    if base is str:
        if isinstance(value, str):
            return value
        if from_cli:
            return str(value)
        raise TypeError(f"expected a string, got {type(value).__name__} {value!r} (quote it in YAML)")
    raise TypeError(f"unsupported field type {tp}")


# ----------------------------------------------------------------------------------------- loading


def _suggest(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with the same key twice (YAML would silently keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first on line {first})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file (and line, for syntax errors and duplicate keys)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {e.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of key: value, got {type(data).__name__}")
    return data


def from_dict(cls, values: dict[str, Any], *, source: str | None = None, base=None, from_cli: bool = False):
    """Build `cls` from `values` on top of `base` (or the defaults), checking keys and types."""
    hints = _type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    where = f" in {source}" if source else ""
    kwargs = dataclasses.asdict(base) if base is not None else {}
    values = aliases.resolve(cls, values, source=source, base=base)  # TRL/transformers names
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"unknown key '{key}'{where} for {cls.__name__}{_suggest(str(key), names)}")
        try:
            kwargs[key] = _coerce(value, hints[key], from_cli=from_cli)
        except TypeError as e:
            raise ConfigError(f"key '{key}'{where}: {e} (expected {_type_name(hints[key])})") from None
    try:
        cfg = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}{where}: {e}") from None
    check(cfg, source=source)
    return cfg


# Ranges checked for a field of this name in any config, before the config's own validate(). Every float
# field must also be finite (NaN and inf are refused everywhere).
POSITIVE_INTS = {
    "batch_size", "bc_batch_size", "bootstrap_samples", "buffer_size", "context_len", "extract_batch_size",
    "eval_episodes", "global_batch_size", "head_width", "hidden_size", "k", "kl_horizon",
    "latent_size", "lora_alpha", "lora_r", "max_length", "max_new_tokens", "max_prompt_tokens", "minibatch_size",
    "mlp_hidden", "n_head", "n_layer", "num_candidates", "num_envs", "num_updates", "per_device_batch_size",
    "port", "ppo_epochs", "prompts_per_update", "seq_len", "total_steps", "train_every",
    "value_batch_size", "value_trunk_batch_size", "window"}
NON_NEGATIVE_INTS = {
    "seed", "eval_every", "save_every", "sample_every", "keep_checkpoints", "stop_after_step", "stop_after_update",
    "max_prompts", "max_train_pairs", "final_eval_episodes", "unfreeze_top_layers", "warmup_steps", "burn_in",
    "learning_starts", "sample_count", "sample_max_new_tokens", "value_trunk_layers"}
POSITIVE_FLOATS = {"learning_rate", "bc_lr", "value_lr"}
NON_NEGATIVE_FLOATS = {"weight_decay", "clip_range", "target_kl", "vf_coef", "value_clip", "center_rewards_coef",
                       "sim_temperature", "label_smoothing", "lora_dropout"}


def _check_ranges(cfg, where: str) -> None:
    hints = _type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, (base, _) = getattr(cfg, f.name), _unwrap_optional(hints[f.name])
        if value is None:
            continue
        floats = value if typing.get_origin(base) is list and typing.get_args(base) == (float,) else \
            [value] if base is float else []
        for v in floats:
            if not math.isfinite(v):
                raise ConfigError(f"key '{f.name}'{where}: must be a finite number, got {v}")
        if f.name in POSITIVE_INTS and base is int and value < 1:
            raise ConfigError(f"key '{f.name}'{where}: must be >= 1, got {value}")
        if f.name in NON_NEGATIVE_INTS and base is int and value < 0:
            raise ConfigError(f"key '{f.name}'{where}: must be >= 0, got {value}")
        if f.name in POSITIVE_FLOATS and base is float and not value > 0:
            raise ConfigError(f"key '{f.name}'{where}: must be > 0, got {value}")
        if f.name in NON_NEGATIVE_FLOATS and base is float and value < 0:
            raise ConfigError(f"key '{f.name}'{where}: must be >= 0, got {value}")


def check(cfg, *, source: str | None = None) -> None:
    """Validate choices, finite floats, the generic ranges above and the config's own `validate()`, naming
    the file in any error."""
    where = f" in {source}" if source else ""
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        if choices is not None and getattr(cfg, f.name) not in choices:
            raise ConfigError(f"key '{f.name}'{where}: {getattr(cfg, f.name)!r} is not one of {list(choices)}")
    _check_ranges(cfg, where)
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{e}{where}") from None


def load_config(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None):
    """Defaults < YAML file < overrides (strings from the command line are parsed to the field type)."""
    cfg = cls()
    if path is not None:
        cfg = from_dict(cls, read_yaml(path), source=str(path), base=cfg)
    if overrides:
        cfg = from_dict(cls, overrides, source="command-line flags", base=cfg, from_cli=True)
    elif path is None:
        check(cfg)
    if getattr(cfg, "resume", False) and getattr(cls, "NOT_RESUMABLE", ""):
        raise ConfigError(f"key 'resume': {cls.NOT_RESUMABLE}; start afresh (--overwrite true replaces a run "
                          "already in output_dir)")
    return cfg


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    """Write the resolved config as YAML that `load_config` reads back to an equal config."""
    from rlhf.fsio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False), what="config")


# ------------------------------------------------------------------------------------- command line


def build_parser(cls, prog: str, description: str = "") -> argparse.ArgumentParser:
    """An argparse parser with `--config` and one `--<field>` flag per field, help from the metadata."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description or (cls.__doc__ or "").strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
    )
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML file of field values; flags given here override it.")
    hints = _type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields (defaults < --config file < flags)")
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help", "")
        if "choices" in f.metadata:
            help_text += f" One of: {', '.join(map(str, f.metadata['choices']))}."
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{help_text} [{_type_name(hints[f.name])}] (default: {default!r})".replace("%", "%%")
        group.add_argument(f"--{f.name}", dest=f.name, metavar="VALUE", default=argparse.SUPPRESS,
                           nargs="?", const="true" if _unwrap_optional(hints[f.name])[0] is bool else None,
                           help=help_text)
    return parser


def parse_args(cls, argv: list[str] | None = None, prog: str = "rlhf", description: str = ""):
    """Parse `argv` into a config of type `cls`. Unknown flags raise ConfigError naming them."""
    parser = build_parser(cls, prog, description)
    args, unknown = parser.parse_known_args(argv)
    foreign, unknown = aliases.split_flags(cls, unknown) if unknown else ({}, unknown)
    if unknown:
        names = [f.name for f in dataclasses.fields(cls)]
        flag = next((u for u in unknown if u.startswith("--")), unknown[0])
        raise ConfigError(f"unknown flag '{flag}' for {prog}{_suggest(flag.lstrip('-'), names)}")
    values = vars(args)
    path = values.pop("config")
    values.update(foreign)
    for key, value in values.items():
        if value is None:
            raise ConfigError(f"flag '--{key}' needs a value")
    return load_config(cls, path, values)


def require_at_least(cfg, minimum: int, *names: str) -> None:
    """ConfigError naming the first of `names` whose value is below `minimum`."""
    for name in names:
        if getattr(cfg, name) < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {getattr(cfg, name)}")
