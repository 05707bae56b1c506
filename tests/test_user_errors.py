"""Every user error is one line, `rlhf <stage>: error: ...`, exit status 2, no traceback, and leaves nothing that
blocks the corrected command; values that would pass their types but break a run are refused by class (every
float finite, every count positive)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from rlhf.cli import main
from rlhf.config import ConfigError, load_config, read_yaml
from rlhf.data import DataError, read_records
from rlhf.pipeline import STAGES

ROOT = Path(__file__).resolve().parents[1]
TINY = {"sft": "sft", "collect": "collect", "label": "label", "reward": "reward", "policy": "policy",
        "evaluate": "evaluate", "dpo": "dpo"}


def cli(capsys, *argv: str) -> str:
    """Run `rlhf argv` in this process; return its one-line error (asserting exit 2 and one line)."""
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"rlhf {argv[0]}: error: "), err
    assert "Traceback" not in err
    return err


def stage_classes():
    import importlib

    return {name: getattr(importlib.import_module(m), c) for name, (m, c, _) in STAGES.items()}


def write_candidates(path: Path, n: int = 3, bom: bool = False) -> Path:
    from rlhf.tasks.qa.examples import build_examples, demonstration, prompt_record

    rows = []
    for ex in build_examples(seed=0)[0][:n]:
        rec = prompt_record(ex)
        rows.append({"prompt_id": ex.id, "prompt": rec["prompt"],
                     "candidates": [{"text": demonstration(ex)}, {"text": "I do not know."}],
                     "task": {k: v for k, v in rec.items() if k != "prompt"}})
    path.write_text(("\ufeff" if bom else "") + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # the tiny configs name reward_data/ relative to the repository


# ------------------------------------------------------------------------------------------ one line


def test_output_dir_naming_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    cands = write_candidates(tmp_path / "c.jsonl")
    err = cli(capsys, "label", "--candidates", str(cands), "--output_dir", str(tmp_path / "f"))
    assert "is a file, not a directory" in err
    err = cli(capsys, "label", "--candidates", str(cands), "--output_dir", str(tmp_path / "f" / "sub"))
    assert "is a file" in err


def test_missing_reward_fn_module_is_one_line(tmp_path, capsys):
    err = cli(capsys, "policy", "--config", "configs/tiny/policy.yaml", "--output_dir", str(tmp_path / "p"),
              "--reward_fn", "no_such_module_here:score")
    assert "no module named 'no_such_module_here'" in err
    err = cli(capsys, "policy", "--config", "configs/tiny/policy.yaml", "--output_dir", str(tmp_path / "p"),
              "--reward_fn", "no_colon")
    assert "expected 'module:function'" in err
    assert not (tmp_path / "p").exists()


def test_a_traceback_free_error_from_a_real_process(tmp_path):
    (tmp_path / "f").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", "policy", "--config", "configs/tiny/policy.yaml",
                           "--reward_fn", "no_such_module_here:f", "--output_dir", str(tmp_path / "f")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("rlhf policy: error: ") and "Traceback" not in proc.stderr


def test_a_run_refused_after_set_up_leaves_nothing_behind(tmp_path, capsys):
    """A data error found after the output directory was set up: the corrected command needs no --overwrite."""
    bad = tmp_path / "c.jsonl"
    write_candidates(bad)
    lines = bad.read_text().splitlines()
    lines[1] = lines[1].replace('"prompt_id"', '"score": NaN, "prompt_id"')
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "label"
    err = cli(capsys, "label", "--candidates", str(bad), "--output_dir", str(out), "--resume", "false")
    assert f"{bad}:2: NaN is not a number" in err
    assert not (out / "config.yaml").exists()
    write_candidates(bad)
    assert main(["label", "--candidates", str(bad), "--output_dir", str(out), "--resume", "false"]) == 0
    assert (out / "pairs.jsonl").is_file()


# ------------------------------------------------------------------------------------------ data


def test_a_byte_order_mark_is_accepted(tmp_path, capsys):
    cands = write_candidates(tmp_path / "c.jsonl", bom=True)
    assert len(read_records(str(cands))) == 3
    assert main(["label", "--candidates", str(cands), "--output_dir", str(tmp_path / "l")]) == 0
    (tmp_path / "d.json").write_text("\ufeff[{\"a\": 1}]", encoding="utf-8")
    assert read_records(str(tmp_path / "d.json"))[0].data == {"a": 1}
    (tmp_path / "c.yaml").write_text("\ufeffseed: 3\n", encoding="utf-8")
    assert read_yaml(tmp_path / "c.yaml") == {"seed": 3}
    from rlhf.preferences import read_pairs

    (tmp_path / "p.jsonl").write_text("\ufeff" + json.dumps({"prompt": "Q?", "chosen": "a", "rejected": "b"})
                                      + "\n", encoding="utf-8")
    assert len(read_pairs(str(tmp_path / "p.jsonl"))[0]) == 1


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_in_json_data_are_refused_naming_file_and_line(tmp_path, token):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n{"a": ' + token + '}\n')
    with pytest.raises(DataError, match=rf"d.jsonl:2: .*{token.lstrip('-')}"):
        read_records(str(path))
    path = tmp_path / "d.json"
    path.write_text('[\n {"a": 1},\n {"a": ' + token + '}\n]\n')
    with pytest.raises(DataError, match=r"d.json:3: "):
        read_records(str(path))
    from rlhf.preferences import read_pairs

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Q?", "chosen": "a", "rejected": "b"})[:-1] + ', "score": ' + token + "}\n")
    with pytest.raises(DataError, match=r"p.jsonl:1: "):
        read_pairs(str(path))


def test_duplicate_yaml_keys_name_the_key_and_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\nlabeler: simulated\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3:1: .*duplicate key 'seed' \(first on line 1\)"):
        read_yaml(path)
    err = cli(capsys, "label", "--config", str(path), "--output_dir", str(tmp_path / "l"))
    assert "duplicate key 'seed'" in err
    pipe = tmp_path / "p.yaml"
    pipe.write_text("output_dir: x\nstages:\n  label: {}\n  label: {}\n")
    err = cli(capsys, "run", str(pipe))
    assert "duplicate key 'label'" in err and "p.yaml:4" in err


# ------------------------------------------------------------------------------------------ values


def float_fields(cls) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if hints[f.name] is float]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_setting_of_every_stage_must_be_finite(value):
    checked = 0
    for stage, cls in stage_classes().items():
        for name in float_fields(cls):
            with pytest.raises(ConfigError, match=rf"key '{name}'.*finite"):
                load_config(cls, ROOT / f"configs/tiny/{TINY[stage]}.yaml", {name: value})
            checked += 1
    assert checked >= 30


@pytest.mark.parametrize("stage,key,value", [("policy", "beta", "nan"), ("policy", "clip_range", "inf"),
                                             ("reward", "margin", "nan"), ("label", "sim_temperature", "inf"),
                                             ("policy", "learning_rate", "inf"), ("sft", "learning_rate", "nan"),
                                             ("policy", "kl_horizon", "0"), ("reward", "global_batch_size", "0"),
                                             ("collect", "seed", "-1"), ("policy", "learning_rate", "0")])
def test_the_listed_values_are_one_line_errors(tmp_path, capsys, stage, key, value):
    err = cli(capsys, stage, "--config", f"configs/tiny/{TINY[stage]}.yaml", "--output_dir", str(tmp_path / "o"),
              f"--{key}", value)
    assert f"key '{key}'" in err
    assert not (tmp_path / "o").exists()


def test_yaml_nan_is_refused_too(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("beta: .nan\n")
    from rlhf.stages.policy import PolicyConfig

    with pytest.raises(ConfigError, match=r"key 'beta' in .*p.yaml: must be a finite number, got nan"):
        load_config(PolicyConfig, path)


def test_every_count_of_every_stage_must_be_positive():
    from rlhf.config import POSITIVE_INTS

    checked = 0
    for stage, cls in stage_classes().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in POSITIVE_INTS and hints[f.name] is int:
                with pytest.raises(ConfigError, match=rf"'?{f.name}'? .*>= 1|{f.name} must be"):
                    load_config(cls, ROOT / f"configs/tiny/{TINY[stage]}.yaml", {f.name: "0"})
                checked += 1
    assert checked >= 20


# ------------------------------------------------------------------------------------------ runs


def test_fewer_prompts_than_prompts_per_update_is_an_error_not_a_crash(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {i}."}) + "\n" for i in range(3)))
    err = cli(capsys, "policy", "--config", "configs/tiny/policy.yaml", "--prompts", str(prompts),
              "--output_dir", str(tmp_path / "o"), "--num_updates", "1")
    assert "holds 3 prompts, fewer than prompts_per_update 8" in err
    assert not (tmp_path / "o" / "config.yaml").exists()


def test_policy_max_grad_norm_zero_means_no_clipping_as_in_sft(tmp_path):
    from safetensors.torch import load_file

    from rlhf.stages.policy import PolicyConfig, train

    def run(name, norm):
        cfg = load_config(PolicyConfig, ROOT / "configs/tiny/policy.yaml",
                          {"output_dir": str(tmp_path / name), "num_updates": "2", "max_grad_norm": norm,
                           "prompts": str(ROOT / "reward_data/prompts_train.jsonl")})
        train(cfg)
        return load_file(tmp_path / name / "model" / "model.safetensors")

    zero, none = run("zero", "0"), run("none", "1e9")
    init = run("init", "1e-30")  # clipped to (almost) nothing: AdamW's normalised step still moves, differently
    assert all((zero[k] == none[k]).all() for k in zero)
    assert any(not (init[k] == none[k]).all() for k in init)


def test_fewer_pairs_than_a_global_batch_is_refused_not_trained_for_zero_steps(tmp_path, capsys):
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": f"yes {i}", "rejected": f"no {i}"}) + "\n"
                             for i in range(5)))
    # head_fit sgd trains in batches (the validated fit takes every pair at once and has no batch to miss)
    err = cli(capsys, "reward", "--config", "configs/tiny/reward.yaml", "--train_pairs", str(pairs),
              "--eval_pairs", "", "--output_dir", str(tmp_path / "r"), "--head_fit", "sgd")
    assert "5 usable pairs, fewer than global_batch_size 32" in err
    assert not (tmp_path / "r" / "config.yaml").exists() and not (tmp_path / "r" / "model").exists()
    assert main(["reward", "--config", "configs/tiny/reward.yaml", "--train_pairs", str(pairs), "--eval_pairs", "",
                 "--output_dir", str(tmp_path / "r"), "--global_batch_size", "5",
                 "--per_device_batch_size", "5", "--head_fit", "sgd"]) == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["train/steps"] == 3


def test_simulated_labels_for_prompts_without_a_reference_are_one_line(tmp_path, capsys):
    cands = tmp_path / "c.jsonl"
    cands.write_text(json.dumps({"prompt_id": "p0", "prompt": "Hi?", "candidates": ["a", "b"]}) + "\n")
    err = cli(capsys, "label", "--candidates", str(cands), "--output_dir", str(tmp_path / "l"))
    assert "c.jsonl:1: the simulated annotator needs the task's reference answer" in err
    assert not (tmp_path / "l" / "config.yaml").exists()


def test_a_checkpoint_write_that_fails_inside_torch_save_is_one_line(monkeypatch, capsys):
    """torch.save reports a failed write (here: /dev/full, as a full disk) as a RuntimeError of its stream writer,
    not an OSError; the command still ends with one line and status 1, no traceback."""
    import torch

    import rlhf.stages.sft as sft

    monkeypatch.setattr(sft, "main", lambda argv: torch.save({"w": torch.zeros(100_000)}, "/dev/full"))
    assert main(["sft"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlhf sft: error: a checkpoint could not be written"), err
