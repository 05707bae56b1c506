"""TRL / transformers argument names read as the toolkit's own (rlhf/aliases.py), in YAML and on the command
line; TRL-named configs for SFT, reward and policy run on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.aliases import ALIASES, target
from rlhf.config import ConfigError, load_config, parse_args
from rlhf.stages.policy import PolicyConfig
from rlhf.stages.reward import RewardConfig
from rlhf.stages.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[1]
TRL = ROOT / "configs/tiny/trl"


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_the_issue_names_are_all_in_the_table():
    for name in ("num_train_epochs", "logging_steps", "save_steps", "save_total_limit", "eval_steps",
                 "lr_scheduler_type", "resume_from_checkpoint", "num_generations", "max_completion_length",
                 "epsilon", "num_iterations", "center_rewards_coefficient"):
        assert name in ALIASES, name
    # every alias points at a real field of some stage
    classes = (SFTConfig, RewardConfig, PolicyConfig)
    for name in ALIASES:
        assert any(target(c, name) for c in classes), name


def test_trl_sft_config_resolves_to_the_native_one(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    trl = load_config(SFTConfig, TRL / "sft.yaml")
    native = SFTConfig(model_name_or_path="tiny-llama", dataset="reward_data/sft_train.jsonl",
                       output_dir="runs/tiny/trl_sft", max_length=128, learning_rate=3e-3, lr_scheduler="cosine",
                       warmup_steps=2, num_epochs=1.0, max_steps=6, per_device_batch_size=4, global_batch_size=8,
                       log_every=1, save_every=3, keep_checkpoints=1, eval_every=3, resume=False, seed=0)
    assert trl == native
    err = capsys.readouterr().err
    assert "num_train_epochs (TRL/transformers name) read as num_epochs" in err
    assert "save_total_limit (TRL/transformers name) read as keep_checkpoints" in err
    assert "read as per_device_batch_size 4, global_batch_size 8" in err


def test_batch_sizes_count_the_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = parse_args(SFTConfig, ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "3"])
    assert (cfg.per_device_batch_size, cfg.global_batch_size) == (4, 24)
    cfg = parse_args(RewardConfig, ["--per_device_train_batch_size=8"])
    assert (cfg.per_device_batch_size, cfg.global_batch_size) == (8, 16)
    # policy: completions per optimiser step, and prompts per generation batch over k
    cfg = parse_args(PolicyConfig, ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
                                    "--num_generations", "4", "--steps_per_generation", "4"])
    assert (cfg.minibatch_size, cfg.prompts_per_update, cfg.k) == (16, 8, 4)  # 4 x 2 x 2; 4 x 2 x 4 / 4
    cfg = parse_args(PolicyConfig, ["--per_device_train_batch_size", "4", "--num_generations", "2",
                                    "--generation_batch_size", "16", "--max_steps", "6"])
    # batch 16 completions, minibatch 8: two optimiser steps per update, so 6 steps are 3 updates
    assert (cfg.minibatch_size, cfg.prompts_per_update, cfg.num_updates) == (8, 8, 3)


def test_a_fractional_warmup_steps_is_a_ratio(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("warmup_steps: 0.1\n")
    cfg = load_config(SFTConfig, path)
    assert (cfg.warmup_ratio, cfg.warmup_steps) == (0.1, 0)
    path.write_text("warmup_steps: 3\n")
    assert load_config(SFTConfig, path).warmup_steps == 3


def test_trl_dpo_list_loss_type(tmp_path):
    from rlhf.stages.dpo import DPOConfig

    path = tmp_path / "c.yaml"
    path.write_text("loss_type: [ipo]\nper_device_train_batch_size: 2\ngradient_accumulation_steps: 4\n")
    cfg = load_config(DPOConfig, path)
    assert (cfg.loss_type, cfg.per_device_batch_size, cfg.global_batch_size) == ("ipo", 2, 8)


def test_older_trl_boolean_scale_rewards(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("scale_rewards: false\nbaseline: group\n")
    assert load_config(PolicyConfig, path).scale_rewards == "none"
    path.write_text("scale_rewards: true\n")
    assert load_config(PolicyConfig, path).scale_rewards == "group"


def test_trl_policy_names_map_with_their_values():
    cfg = parse_args(PolicyConfig, ["--num_generations", "8", "--max_completion_length", "64", "--epsilon", "0.3",
                                    "--num_iterations", "2", "--per_device_train_batch_size", "16"])
    assert (cfg.k, cfg.max_new_tokens, cfg.clip_range, cfg.ppo_epochs) == (8, 64, 0.3, 2)
    assert (cfg.minibatch_size, cfg.prompts_per_update) == (16, 2)
    cfg = parse_args(RewardConfig, ["--center_rewards_coefficient", "0.01", "--num_train_epochs", "2"])
    assert (cfg.center_rewards_coef, cfg.num_epochs) == (0.01, 2)


@pytest.mark.parametrize("argv, cls, message", [
    (["--push_to_hub", "true"], SFTConfig, "'push_to_hub' is not supported by SFTConfig"),
    (["--hub_model_id", "me/model"], RewardConfig, "'hub_model_id' is not supported by RewardConfig"),
    (["--num_generations", "4"], SFTConfig, "'num_generations' has no equivalent in SFTConfig"),
    (["--num_train_epochs", "2"], PolicyConfig, "'num_train_epochs' has no equivalent in PolicyConfig"),
    (["--num_train_epochs", "2", "--num_epochs", "3"], SFTConfig, "either 'num_train_epochs' or 'num_epochs'"),
    (["--per_device_train_batch_size", "4", "--global_batch_size", "8"], SFTConfig,
     "either the TRL batch sizes or 'global_batch_size'"),
    (["--per_device_train_batch_size", "3", "--num_generations", "2"], PolicyConfig, "not a multiple of"),
    (["--resume_from_checkpoint", "runs/x/checkpoints/step-5"], SFTConfig, "checkpoint path is not supported"),
    (["--logging_steps", "0.1"], SFTConfig, "must be a whole number"),
    (["--num_train_epoch", "2"], SFTConfig, "unknown flag '--num_train_epoch'"),
])
def test_unsupported_and_conflicting_names_fail_naming_the_key(argv, cls, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_args(cls, argv)


def test_a_yaml_key_of_trl_with_no_equivalent_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_name_or_path: tiny-llama\npush_to_hub: true\n")
    with pytest.raises(ConfigError, match=r"key 'push_to_hub' in .*c\.yaml: .*not supported by SFTConfig"):
        load_config(SFTConfig, path)
    path.write_text("model_name_or_path: tiny-llama\nnum_train_epochz: 2\n")
    with pytest.raises(ConfigError, match="unknown key 'num_train_epochz'"):  # strict unknown-key error stays
        load_config(SFTConfig, path)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def test_trl_named_configs_run_sft_reward_and_policy_on_the_tiny_model(tmp_path, monkeypatch):
    from rlhf.stages import policy, reward, sft

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RLHF_FEATURE_CACHE", str(tmp_path / "features"))
    m = sft.main(["--config", str(TRL / "sft.yaml"), "--output_dir", str(tmp_path / "sft")])
    assert m["train/steps"] == 6 and m["train/global_batch_size"] == 8 and m["train/grad_accum"] == 2
    assert [p.name for p in (tmp_path / "sft/checkpoints").iterdir()] == ["step-000006"]  # save_total_limit 1
    assert [r["step"] for r in _log(tmp_path / "sft") if "eval/loss" in r] == [0, 3, 6]  # eval_steps 3

    m = reward.main(["--config", str(TRL / "reward.yaml"), "--output_dir", str(tmp_path / "reward")])
    saved = json.loads(json.dumps(m))
    assert (tmp_path / "reward/model").is_dir() and "train/accuracy" in json.dumps(saved)
    cfg = load_config(RewardConfig, tmp_path / "reward/config.yaml")
    assert (cfg.num_epochs, cfg.global_batch_size, cfg.per_device_batch_size, cfg.center_rewards_coef) == (
        2, 32, 16, 0.01)

    m = policy.main(["--config", str(TRL / "policy_grpo.yaml"), "--output_dir", str(tmp_path / "policy")])
    cfg = load_config(PolicyConfig, tmp_path / "policy/config.yaml")
    assert (cfg.k, cfg.minibatch_size, cfg.prompts_per_update, cfg.num_updates, cfg.max_new_tokens) == (
        2, 8, 4, 3, 8)
    assert [r["step"] for r in _log(tmp_path / "policy")] == [1, 2, 3]
    assert (tmp_path / "policy/model/model.safetensors").is_file()
    # each saved model carries its card (rlhf/model_card.py)
    from rlhf.model_card import read_metadata

    assert read_metadata(tmp_path / "sft/model")["tags"][:2] == ["rlhf", "sft"]
    reward_card = read_metadata(tmp_path / "reward/model")
    assert reward_card["pipeline_tag"] == "text-classification" and "reward-model" in reward_card["tags"]
    assert "rloo" in read_metadata(tmp_path / "policy/model")["tags"]
