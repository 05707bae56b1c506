"""`rlhf dialogue|pomdp|dt`: one dispatcher (rlhf/subcommands.py), the output contract of rlhf.runs, `resume`
honoured or refused when the config is read, `report_to` reaching the trackers, and each command run from its
shipped config (made short with flags)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from rlhf.cli import main as cli_main
from rlhf.config import ConfigError, load_config

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
MODULES = ("dialogue", "pomdp", "dt")
CONTRACT = ("config.yaml", "log.jsonl", "metrics.json")


def commands(module: str) -> dict:
    return importlib.import_module(f"rlhf.{module}.cli").COMMANDS


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every scalar tensorboard holds under run/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(run.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


# ------------------------------------------------------------------------------------------- dispatcher


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("flag", [["--help"], ["-h"], []])
def test_help_lists_every_command_and_succeeds(module, flag, capsys):
    assert cli_main([module, *flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rlhf {module} <command>")
    for name, command in commands(module).items():
        assert f"  {name:<10} {command.help}" in out


@pytest.mark.parametrize("module", MODULES)
def test_unknown_command_is_one_line_naming_the_commands(module, capsys):
    assert cli_main([module, "trian"]) == 2
    err = capsys.readouterr().err
    assert f"unknown {module} command 'trian'" in err and ", ".join(commands(module)) in err
    assert cli_main([module, "--config", "x.yaml"]) == 2
    assert "'--config' before a command" in capsys.readouterr().err


@pytest.mark.parametrize("module", MODULES)
def test_command_help_shows_its_config_fields(module, capsys):
    for name, command in commands(module).items():
        with pytest.raises(SystemExit) as info:
            cli_main([module, name, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: rlhf {module} {name}") and "--output_dir" in out
        assert command.config_class().__name__ in out


# --------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("module,command", [("dialogue", "train"), ("pomdp", "train")])
def test_resume_is_refused_when_the_config_is_read(module, command, tmp_path, capsys):
    cls = commands(module)[command].config_class()
    assert cls.NOT_RESUMABLE
    with pytest.raises(ConfigError, match="key 'resume'.*no checkpoint"):
        load_config(cls, None, {"resume": "true"})
    yaml_file = tmp_path / "resume.yaml"
    yaml_file.write_text("resume: true\n")
    with pytest.raises(ConfigError, match="key 'resume'"):
        load_config(cls, yaml_file)
    assert load_config(cls, yaml_file, {"resume": "false"}).resume is False  # a flag may still turn it off
    out = tmp_path / "run"
    assert cli_main([module, command, "--resume", "true", "--output_dir", str(out)]) == 2
    assert "key 'resume'" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("module,command", [(m, c) for m in MODULES for c in commands(m)
                                            if (m, c) not in {("dialogue", "train"), ("pomdp", "train")}])
def test_every_other_command_accepts_resume(module, command):
    cls = commands(module)[command].config_class()
    assert not cls.NOT_RESUMABLE or (module, command) == ("pomdp", "evaluate")  # shares train's config


def test_dialogue_data_and_evaluate_redo_their_run_on_resume(tmp_path, capsys):
    data = tmp_path / "data"
    args = ["dialogue", "data", "--output_dir", str(data), "--episodes_per_policy", "3"]
    assert cli_main(args) == 0
    first = (data / "trajectories.jsonl").read_bytes()
    assert cli_main(args) == 2  # the run exists
    err = capsys.readouterr().err
    assert "--overwrite true" in err and "--resume" in err  # data resumes, so the message offers it
    (data / "trajectories.jsonl").unlink()  # as if interrupted
    assert cli_main(args + ["--resume", "true"]) == 0
    assert (data / "trajectories.jsonl").read_bytes() == first
    assert cli_main(args + ["--resume", "true", "--seed", "3"]) == 2  # a different config is no resumption
    assert "cannot resume" in capsys.readouterr().err


def test_existing_run_of_a_command_that_cannot_resume_offers_only_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["pomdp", "train", "--config", str(ROOT / "configs/pomdp/train_tiny.yaml"), "--total_steps", "200",
            "--eval_every", "200", "--final_eval_episodes", "1", "--output_dir", str(run)]
    assert cli_main(args) == 0
    capsys.readouterr()
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite true to start over" in err and "--resume" not in err


# ------------------------------------------------------------------------------------- output contract


def test_dialogue_commands_write_the_output_contract_and_reach_tensorboard(tmp_path):
    """From the shipped configs, made short: data, then bc and ilql in one run (BC phase, then the value phase,
    whose tracker steps follow the BC phase's), then evaluate; each writes config.yaml, log.jsonl, metrics.json."""
    data, run, ev = tmp_path / "data", tmp_path / "ilql", tmp_path / "eval"
    assert cli_main(["dialogue", "data", "--config", str(ROOT / "configs/dialogue/data.yaml"),
                     "--episodes_per_policy", "4", "--output_dir", str(data)]) == 0
    small = ["--hidden", "32", "--layers", "1", "--bc_steps", "4", "--bc_batch_size", "4", "--value_steps", "3",
             "--value_batch_size", "4", "--head_width", "16", "--log_every", "2"]
    assert cli_main(["dialogue", "train", "--config", str(ROOT / "configs/dialogue/train.yaml"), *small,
                     "--data", str(data / "trajectories.jsonl"), "--output_dir", str(run),
                     "--report_to", "tensorboard"]) == 0
    assert cli_main(["dialogue", "evaluate", "--config", str(ROOT / "configs/dialogue/evaluate.yaml"), "--run",
                     str(run), "--episodes", "3", "--output_dir", str(ev), "--report_to", "tensorboard"]) == 0
    for out, product in ((data, "trajectories.jsonl"), (run, "heads"), (ev, "eval.json")):
        assert all((out / name).is_file() for name in CONTRACT) and (out / product).exists(), out
        assert json.loads((out / "metrics.json").read_text())["num_processes"] == 1
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], "bc/nll" in r) for r in log] == [(2, True), (4, True), (2, False), (3, False)]
    tracked = scalars(run)
    assert [step for step, _ in tracked["bc/nll"]] == [2, 4]
    value_tag = "ilql/q_loss"
    assert [step for step, _ in tracked[value_tag]] == [4 + 2, 4 + 3]  # after the BC phase's steps
    assert tracked[value_tag][-1][1] == pytest.approx(log[-1][value_tag])
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["eval/episodes"] == 3 and 0 <= metrics["eval/success"] <= 1
    assert scalars(ev)["eval/success"][0][1] == pytest.approx(metrics["eval/success"])


def test_pomdp_train_and_evaluate_from_the_tiny_config_reach_tensorboard(tmp_path):
    run = tmp_path / "run"
    assert cli_main(["pomdp", "train", "--config", str(ROOT / "configs/pomdp/train_tiny.yaml"), "--total_steps",
                     "400", "--eval_every", "200", "--log_every", "200", "--final_eval_episodes", "4",
                     "--output_dir", str(run), "--report_to", "tensorboard"]) == 0
    assert all((run / name).is_file() for name in CONTRACT)
    assert [step for step, _ in scalars(run / "rlhf-pomdp")["eval/return_mean"]] == [200, 400]
    # evaluate: the run's config (report_to included) is the base; eval.json in the run, its numbers tracked
    assert cli_main(["pomdp", "evaluate", "--output_dir", str(run), "--final_eval_episodes", "3"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["episodes"] == 3
    assert scalars(run / "rlhf-pomdp-eval")["eval/return_mean"] == [(0, pytest.approx(result["return_mean"]))]


def test_dt_commands_from_the_shipped_configs(tmp_path):
    data, run, ev = tmp_path / "data", tmp_path / "train", tmp_path / "eval"
    assert cli_main(["dt", "data", "--config", str(ROOT / "configs/dt/data_cartpole.yaml"),
                     "--episodes_per_level", "2", "--max_episode_steps", "20", "--output_dir", str(data)]) == 0
    assert cli_main(["dt", "train", "--config", str(ROOT / "configs/dt/train_cartpole.yaml"), "--dataset",
                     str(data), "--max_steps", "4", "--batch_size", "4", "--hidden_size", "16", "--log_every", "2",
                     "--output_dir", str(run)]) == 0
    assert cli_main(["dt", "evaluate", "--config", str(ROOT / "configs/dt/evaluate_cartpole.yaml"), "--model",
                     str(run / "model"), "--episodes", "1", "--max_episode_steps", "10", "--output_dir", str(ev)]) == 0
    for out in (data, run, ev):
        assert all((out / name).is_file() for name in CONTRACT), out
    assert (ev / "eval.json").is_file()
