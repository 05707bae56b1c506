"""Tests of stage configs (rlhf.config): YAML files, CLI flags, precedence, validation and `rlhf <stage> --help`."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from pathlib import Path

import pytest
import yaml

from rlhf.cli import main as cli_main
from rlhf.config import ConfigError, load_config, parse_args, read_yaml, save_config
from rlhf.stages.collect import CollectConfig
from rlhf.stages.evaluate import EvaluateConfig
from rlhf.stages.label import LabelConfig
from rlhf.stages.dpo import DPOConfig
from rlhf.stages.policy import PolicyConfig
from rlhf.stages.reward import RewardConfig
from rlhf.stages.sft import SFTConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

# Stage name (a config file's stem up to its first "_") -> that stage's config dataclass.
# Every YAML under configs/ (except configs/accelerate/) must map to an entry here: add new stages as they land.
STAGE_CONFIGS = {"sft": SFTConfig, "collect": CollectConfig, "label": LabelConfig, "reward": RewardConfig,
                 "policy": PolicyConfig, "dpo": DPOConfig, "evaluate": EvaluateConfig}
# The sibling modules' configs are configs/<module>/<command>[_<experiment>].yaml, <command> one of the module's
# `rlhf <module> <command>` commands (its cli.COMMANDS), as the pipeline's are configs/<stage>[_<variant>].yaml.
MODULES = ("dialogue", "pomdp", "dt")
for _module in MODULES:
    for _name, _command in importlib.import_module(f"rlhf.{_module}.cli").COMMANDS.items():
        STAGE_CONFIGS[f"{_module}/{_name}"] = _command.config_class()
PIPELINES = {"quickstart"}  # `rlhf run` pipeline files: checked by resolving every stage they name


def stage_yaml_files() -> list[Path]:
    files = sorted(p for p in CONFIGS.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    return [p for p in files if "accelerate" not in p.relative_to(CONFIGS).parts[:1]]


def stage_of(path: Path) -> str:
    """"<module>/<stem up to _>" in a module's directory (configs/dt/train_cartpole.yaml -> dt/train), else the
    stem up to "_" (configs/tiny/sft_lora.yaml -> sft)."""
    parts = path.relative_to(CONFIGS).parts if path.is_absolute() else path.parts
    stem = path.stem.split("_", 1)[0]
    return f"{parts[0]}/{stem}" if len(parts) > 1 and parts[0] in MODULES else stem


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(cls, path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(cls, path)
    return str(info.value)


# ------------------------------------------------------------------------------------- shipped configs


def test_configs_directory_has_stage_files():
    files = stage_yaml_files()
    names = {str(p.relative_to(CONFIGS)) for p in files}
    assert {"sft.yaml", "tiny/sft.yaml", "tiny/sft_lora.yaml"} <= names
    assert not any(n.startswith("accelerate/") for n in names)
    assert stage_of(Path("sft_lora.yaml")) == "sft" and stage_of(Path("sft.yaml")) == "sft"
    assert stage_of(Path("dt/train_cartpole.yaml")) == "dt/train"
    assert stage_of(Path("pomdp/train_tmaze_drqn.yaml")) == "pomdp/train"


@pytest.mark.parametrize("module", MODULES)
def test_module_configs_are_named_command_underscore_experiment(module):
    """configs/<module>/<command>[_<experiment>].yaml: the file names the command that reads it."""
    commands = importlib.import_module(f"rlhf.{module}.cli").COMMANDS
    files = sorted((CONFIGS / module).glob("*.yaml"))
    assert files
    bad = [p.name for p in files if p.stem.split("_", 1)[0] not in commands]
    assert not bad, f"configs/{module}/: {bad} do not start with one of {list(commands)}"


@pytest.mark.parametrize("path", stage_yaml_files(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_parses_into_its_stage_dataclass(path: Path):
    stage = stage_of(path)
    if stage in PIPELINES:
        from rlhf.pipeline import load_pipeline, resolve

        root, stages = load_pipeline(str(path), [])
        for name, section in stages.items():
            cfg = resolve(name, section, root, set(stages))
            assert cfg.output_dir == str(root / name)
        return
    if stage not in STAGE_CONFIGS:
        pytest.fail(f"{path.relative_to(ROOT)}: stage '{stage}' has no config class in STAGE_CONFIGS; add "
                    f"'{stage}': <its config dataclass> to STAGE_CONFIGS in tests/test_config.py", pytrace=False)
    cls = STAGE_CONFIGS[stage]
    cfg = load_config(cls, path)
    assert type(cfg) is cls
    raw = read_yaml(path)
    assert raw, f"{path} is empty"
    if "trl" in path.relative_to(CONFIGS).parts:  # TRL-named configs (rlhf/aliases.py): tests/test_aliases.py
        from rlhf.aliases import ALIASES, BATCH_KEYS

        assert all(key in ALIASES or key in BATCH_KEYS or hasattr(cfg, key) for key in raw)
        return
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():  # every value in the file reaches the dataclass, with the field's type
        got = getattr(cfg, key)
        if hints[key] is float:
            assert isinstance(got, float) and got == pytest.approx(float(value)), key
        else:
            assert got == value, key
    for f in dataclasses.fields(cls):  # and every other field keeps its default
        if f.name not in raw:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert getattr(cfg, f.name) == default, f.name


def test_tiny_sft_config_concrete_values():
    cfg = load_config(SFTConfig, CONFIGS / "tiny" / "sft.yaml")
    assert cfg.model_name_or_path == "tiny-llama"
    assert cfg.learning_rate == pytest.approx(3e-3)
    assert (cfg.max_steps, cfg.global_batch_size, cfg.per_device_batch_size) == (20, 8, 4)
    lora = load_config(SFTConfig, CONFIGS / "tiny" / "sft_lora.yaml")
    assert lora.use_peft is True and (lora.lora_r, lora.lora_alpha) == (8, 16)
    assert lora.lora_dropout == 0.0 and lora.lora_target_modules == ["all-linear"]


# ---------------------------------------------------------------------------------- keys and types


def test_misspelt_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, "max_steps: 3\nlearning_rat: 0.1\n")
    msg = config_error(SFTConfig, path)
    assert "learning_rat" in msg
    assert str(path) in msg
    assert "did you mean 'learning_rate'" in msg


def test_misspelt_key_with_no_close_match_has_no_suggestion(tmp_path):
    path = write(tmp_path, "zzzzqqq: 1\n")
    msg = config_error(SFTConfig, path)
    assert "'zzzzqqq'" in msg and str(path) in msg and "did you mean" not in msg


@pytest.mark.parametrize("line, key", [
    ("max_steps: abc", "max_steps"),
    ("use_peft: maybe", "use_peft"),
    ("global_batch_size: 2.5", "global_batch_size"),
    ("model_name_or_path: 123", "model_name_or_path"),
    ("learning_rate: fast", "learning_rate"),
    ("max_steps: true", "max_steps"),
    ("lora_target_modules: 7", "lora_target_modules"),
    ("seed: null", "seed"),
])
def test_wrong_type_names_key_and_file(tmp_path, line, key):
    path = write(tmp_path, f"seed: 1\n{line}\n")
    msg = config_error(SFTConfig, path)
    assert f"'{key}'" in msg
    assert str(path) in msg


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    assert yaml.safe_load("learning_rate: 1e-4")["learning_rate"] == "1e-4"  # PyYAML (YAML 1.1) reads a string
    cfg = load_config(SFTConfig, write(tmp_path, "learning_rate: 1e-4\nlora_dropout: 0\n"))
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == 1e-4
    assert isinstance(cfg.lora_dropout, float) and cfg.lora_dropout == 0.0  # an int where a float is wanted


def test_yaml_booleans_and_lists(tmp_path):
    cfg = load_config(SFTConfig, write(tmp_path, "use_peft: yes\nbf16: off\nlora_target_modules: [q_proj, v_proj]\n"))
    assert cfg.use_peft is True and cfg.bf16 is False
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]


# ------------------------------------------------------------------------------------ file problems


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "seed: 1\nmax_steps: 2\n  bad: 3\n")
    msg = config_error(SFTConfig, path)
    assert f"{path}:3:" in msg
    assert "invalid YAML" in msg


def test_non_mapping_top_level_names_file(tmp_path):
    path = write(tmp_path, "- seed\n- 1\n")
    msg = config_error(SFTConfig, path)
    assert str(path) in msg and "mapping" in msg and "list" in msg


def test_missing_config_file_names_it(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = config_error(SFTConfig, path)
    assert str(path) in msg and "not found" in msg


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(SFTConfig, write(tmp_path, "# nothing\n")) == SFTConfig()


# ------------------------------------------------------------------------------------------ validate


@pytest.mark.parametrize("line, key", [
    ("eval_fraction: 1.5", "eval_fraction"),
    ("lr_scheduler: exponential", "lr_scheduler"),
    ("learning_rate: 0", "learning_rate"),
    ("max_length: 0", "max_length"),
    ("warmup_ratio: 1.0", "warmup_ratio"),
    ("log_every: 0", "log_every"),
    ("report_to: mlflow", "report_to"),
    ("save_every: -1", "save_every"),
])
def test_invalid_values_name_the_key_and_file(tmp_path, line, key):
    path = write(tmp_path, line + "\n")
    msg = config_error(SFTConfig, path)
    assert key in msg and str(path) in msg


def test_invalid_choice_lists_allowed_values(tmp_path):
    msg = config_error(SFTConfig, write(tmp_path, "lr_scheduler: exponential\n"))
    assert "'exponential'" in msg and "cosine" in msg and "linear" in msg and "constant" in msg


def test_invalid_value_from_flag_is_an_error():
    with pytest.raises(ConfigError, match="eval_fraction"):
        parse_args(SFTConfig, ["--eval_fraction", "1.5"])


# ---------------------------------------------------------------------------------------- precedence


def test_precedence_defaults_file_flags(tmp_path):
    defaults = SFTConfig()
    assert (defaults.max_steps, defaults.seed, defaults.learning_rate, defaults.lora_r) == (-1, 0, 2e-5, 16)

    path = write(tmp_path, "max_steps: 20\nseed: 3\nlearning_rate: 1.0e-3\n")
    from_file = parse_args(SFTConfig, ["--config", str(path)])
    assert (from_file.max_steps, from_file.seed, from_file.learning_rate, from_file.lora_r) == (20, 3, 1e-3, 16)

    cfg = parse_args(SFTConfig, ["--config", str(path), "--max_steps", "5", "--lora_r", "4"])
    assert cfg.max_steps == 5  # flag beats file
    assert cfg.lora_r == 4  # flag beats default
    assert cfg.seed == 3 and cfg.learning_rate == 1e-3  # file beats default
    assert cfg.lr_scheduler == "cosine" and cfg.output_dir == "runs/sft"  # default where nothing is given

    # Flag order relative to --config does not matter; a negative number is a value, not a flag.
    cfg = parse_args(SFTConfig, ["--max_steps", "-1", "--config", str(path)])
    assert cfg.max_steps == -1 and cfg.seed == 3


def test_no_arguments_gives_defaults():
    assert parse_args(SFTConfig, []) == SFTConfig()


# ---------------------------------------------------------------------------------------------- flags


def test_unknown_flag_names_it():
    with pytest.raises(ConfigError) as info:
        parse_args(SFTConfig, ["--max_steps", "2", "--learning_rat", "0.1"])
    msg = str(info.value)
    assert "'--learning_rat'" in msg and "did you mean 'learning_rate'" in msg


def test_bool_flag_without_value_means_true():
    assert parse_args(SFTConfig, ["--use_peft"]).use_peft is True
    cfg = parse_args(SFTConfig, ["--use_peft", "--max_steps", "3"])
    assert cfg.use_peft is True and cfg.max_steps == 3
    assert parse_args(SFTConfig, ["--completion_only_loss", "false"]).completion_only_loss is False
    assert parse_args(SFTConfig, ["--use_peft", "true"]).use_peft is True


def test_bool_flag_with_bad_value_names_it():
    with pytest.raises(ConfigError, match="use_peft"):
        parse_args(SFTConfig, ["--use_peft", "maybe"])


def test_non_bool_flag_without_value_is_an_error():
    with pytest.raises(ConfigError, match="--max_steps"):
        parse_args(SFTConfig, ["--max_steps"])


def test_list_flag_is_comma_separated():
    assert parse_args(SFTConfig, ["--lora_target_modules", "q_proj,v_proj"]).lora_target_modules == ["q_proj", "v_proj"]
    assert parse_args(SFTConfig, ["--lora_target_modules", "[k_proj, o_proj]"]).lora_target_modules == ["k_proj", "o_proj"]
    assert parse_args(SFTConfig, ["--lora_target_modules", "all-linear"]).lora_target_modules == ["all-linear"]


def test_numeric_flags_parse_to_field_types():
    cfg = parse_args(SFTConfig, ["--learning_rate", "1e-4", "--max_steps", "7", "--model_name_or_path", "123"])
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == 1e-4
    assert isinstance(cfg.max_steps, int) and cfg.max_steps == 7
    assert cfg.model_name_or_path == "123"  # a string field takes any flag text


def test_wrong_type_flag_names_key_and_flags():
    with pytest.raises(ConfigError) as info:
        parse_args(SFTConfig, ["--global_batch_size", "2.5"])
    assert "'global_batch_size'" in str(info.value) and "command-line" in str(info.value)


# ------------------------------------------------------------------------------------------ round trip


def test_save_then_load_round_trips(tmp_path):
    cfg = dataclasses.replace(
        SFTConfig(), learning_rate=1e-4, use_peft=True, lora_target_modules=["q_proj", "v_proj"], max_steps=12,
        output_dir="runs/x y", eval_dataset="", lr_scheduler="linear", eval_fraction=0.25, bf16=True, seed=7,
    )
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    back = load_config(SFTConfig, path)
    assert back == cfg
    assert isinstance(back.learning_rate, float) and back.lora_target_modules == ["q_proj", "v_proj"]
    assert load_config(SFTConfig, (save_config(SFTConfig(), path), path)[1]) == SFTConfig()


# -------------------------------------------------------------------------------------------- the CLI


def test_sft_help_lists_every_field_with_its_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "4000")  # one line per option: no wrapping inside help texts
    with pytest.raises(SystemExit) as info:
        cli_main(["sft", "--help"])
    assert info.value.code in (0, None)
    out = " ".join(capsys.readouterr().out.split())
    assert "--config" in out
    for f in dataclasses.fields(SFTConfig):
        words = " ".join(f.metadata["help"].split()[:4])
        assert words, f"{f.name} has no help text"
        assert f"--{f.name} [VALUE] {words}" in out, (f.name, words)  # the flag, then its own help text
    assert "One of: cosine, linear, constant." in out  # choices are listed


def test_cli_bad_config_returns_2_with_message(tmp_path, capsys):
    path = write(tmp_path, "max_steps: 2\nlearning_rat: 0.1\n")
    assert cli_main(["sft", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert "learning_rat" in captured.err and str(path) in captured.err
    assert captured.err.startswith("rlhf sft: error:")
    assert "Traceback" not in captured.err + captured.out


def test_cli_unknown_flag_and_stage_return_2(capsys):
    assert cli_main(["sft", "--nope", "1"]) == 2
    assert "'--nope'" in capsys.readouterr().err
    assert cli_main(["nostage"]) == 2
    assert "unknown stage 'nostage'" in capsys.readouterr().err


def test_help_shows_defaults_and_survives_percent_signs(monkeypatch):
    """A '%' in a help text or a default must reach --help literally (argparse %-formats help strings)."""
    from rlhf.config import RunConfig, build_parser, option

    @dataclasses.dataclass
    class PercentConfig(RunConfig):
        top_p_label: str = option("top 90%", help="Shown as 90% of mass.")

    monkeypatch.setenv("COLUMNS", "4000")
    out = " ".join(build_parser(PercentConfig, "x").format_help().split())
    assert "--top_p_label [VALUE] Shown as 90% of mass. [str] (default: 'top 90%')" in out
    out = " ".join(build_parser(SFTConfig, "rlhf sft").format_help().split())
    assert "--max_steps [VALUE] Optimiser steps; > 0 overrides num_epochs. [int] (default: -1)" in out
    assert "(default: ['all-linear'])" in out
