"""Gradient checkpointing and bf16 for the policy stage and the reward stage's full-forward path: the same
gradients with checkpointing as without, and bf16 runs with fp32 weights kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def log_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update(load_file(f))
    return state


def policy_cfg(tmp_path, name, **overrides):
    from rlhf.stages.policy import PolicyConfig

    values = {"output_dir": str(tmp_path / name), "prompts": str(ROOT / "reward_data/prompts_train.jsonl"),
              "num_updates": "3", "max_new_tokens": "8", "share_prompts": "false",
              **{k: str(v) for k, v in overrides.items()}}
    return load_config(PolicyConfig, ROOT / "configs/tiny/policy.yaml", values)


@pytest.mark.parametrize("use_peft, baseline", [("false", "loo"), ("true", "gae")])
def test_policy_gradient_checkpointing_gives_the_same_training(tmp_path, use_peft, baseline, monkeypatch):
    """Three updates (two optimiser steps each, full fine-tuning; or LoRA with the value head) with and without
    checkpointing: the same logged statistics and the same trained weights, to float rounding."""
    import transformers.models.llama.modeling_llama as llama

    from rlhf.stages.policy import train

    calls, forward = [], llama.LlamaMLP.forward
    monkeypatch.setattr(llama.LlamaMLP, "forward", lambda self, x: calls.append(1) or forward(self, x))
    counts = []
    for name, gc in (("plain", "false"), ("gc", "true")):
        calls.clear()
        train(policy_cfg(tmp_path, name, use_peft=use_peft, baseline=baseline, gradient_checkpointing=gc))
        counts.append(len(calls))
    assert counts[1] > counts[0], counts  # checkpointing recomputed forwards in backward
    a, b = log_rows(tmp_path / "plain"), log_rows(tmp_path / "gc")
    for ra, rb in zip(a, b):
        for key in ("objective/scores", "objective/kl", "policy/approxkl", "policy/ratio_mean"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), (ra["step"], key)
    wa, wb = weights(tmp_path / "plain/model"), weights(tmp_path / "gc/model")
    assert wa.keys() == wb.keys()
    start = weights(Path(tmp_path / "plain/model")) if use_peft == "true" else None
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0), k
    # the updates did move the weights (the comparison is not between two untouched copies)
    from rlhf.models import load_model

    if use_peft == "false":
        base = load_model("tiny-llama").state_dict()
        assert max((wa[k] - base[k]).abs().max().item() for k in wa if k in base) > 1e-4
    else:
        assert max(v.abs().max().item() for k, v in start.items() if "lora_B" in k) > 1e-6


@pytest.mark.parametrize("peft", [False, True])
def test_reward_model_gradients_are_equal_with_checkpointing(peft, monkeypatch):
    """One backward of the reward model on the full-forward path (top block unfrozen, or LoRA adapters with a
    non-zero B so every adapter gets a gradient): every parameter's gradient equal with and without."""
    from peft import LoraConfig, get_peft_model

    from rlhf.models import enable_gradient_checkpointing, quiet_peft
    from rlhf.reward import RewardModel

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        m = RewardModel.from_backbone("tiny-llama", seed=0, max_length=64)
        m.freeze_backbone(0 if peft else 1)
        if peft:
            with quiet_peft():  # peft reads a property transformers 5 deprecated (rlhf.models.quiet_peft)
                m.backbone = get_peft_model(m.backbone, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                   init_lora_weights=False))
        if checkpointing:
            enable_gradient_checkpointing(m.backbone)
        m.train()
        out = m(**m.encode(["What is 2 + 2? 4", "Name a colour. Blue, or maybe red."]))
        before = len(calls)
        out.sum().backward()
        recomputed.append(len(calls) - before)  # MLP forwards run again in backward
        return {n: p.grad for n, p in m.named_parameters() if p.grad is not None}

    import transformers.models.llama.modeling_llama as llama

    calls, recomputed, forward = [], [], llama.LlamaMLP.forward
    monkeypatch.setattr(llama.LlamaMLP, "forward", lambda self, x: calls.append(1) or forward(self, x))
    plain, checkpointed = grads(False), grads(True)
    assert recomputed[0] == 0 and recomputed[1] > 0, recomputed  # checkpointing is engaged
    assert plain.keys() == checkpointed.keys() and len(plain) > 2
    for k in plain:
        assert plain[k].abs().max() > 0, k
        assert torch.allclose(plain[k], checkpointed[k], atol=1e-6, rtol=1e-5), k


def rlhf(*argv: str) -> None:
    """A command in its own process: accelerate's mixed precision is fixed once per process."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "rlhf.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_policy_runs_in_bf16_with_fp32_weights(tmp_path):
    rlhf("policy", "--config", "configs/tiny/policy.yaml", "--output_dir", str(tmp_path / "bf16"),
         "--num_updates", "3", "--max_new_tokens", "8", "--bf16", "true", "--gradient_checkpointing", "true")
    rows = log_rows(tmp_path / "bf16")
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(r["policy/approxkl"])) for r in rows)
    assert all(v.dtype == torch.float32 for v in weights(tmp_path / "bf16/model").values())


def reward_cfg(tmp_path, name, **overrides):
    from rlhf.stages.reward import RewardConfig

    values = {"output_dir": str(tmp_path / name), "train_pairs": str(ROOT / "reward_data/pairs_train.jsonl"),
              "eval_pairs": "", "max_train_pairs": "64", "num_epochs": "2", "global_batch_size": "16",
              "per_device_batch_size": "8", "head_fit": "sgd", "layers": "final", "pooling": "last",
              "logprob_features": "false",  # the head trained by SGD on the final layer (the full-forward path)
              **{k: str(v) for k, v in overrides.items()}}
    return load_config(RewardConfig, ROOT / "configs/tiny/reward.yaml", values)


@pytest.mark.parametrize("path", [{"unfreeze_top_layers": 1}, {"use_peft": "true", "lora_r": 4}])
def test_reward_full_forward_gradient_checkpointing_gives_the_same_training(tmp_path, path, monkeypatch):
    from rlhf.stages.reward import train

    monkeypatch.setenv("RLHF_FEATURE_CACHE", str(tmp_path / "features"))
    for name, gc in (("plain", "false"), ("gc", "true")):
        torch.manual_seed(0)  # peft draws the LoRA initialisation from the global generator
        train(reward_cfg(tmp_path, name, gradient_checkpointing=gc, **path))
    a, b = log_rows(tmp_path / "plain"), log_rows(tmp_path / "gc")
    assert len(a) == len(b) == 8
    for ra, rb in zip(a, b):
        assert ra["train/loss"] == pytest.approx(rb["train/loss"], abs=1e-6), ra["step"]
    assert a[0]["train/loss"] != pytest.approx(a[-1]["train/loss"], abs=1e-4)  # it trained
    wa, wb = weights(tmp_path / "plain/model"), weights(tmp_path / "gc/model")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0), k


def test_reward_full_forward_runs_in_bf16(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_FEATURE_CACHE", str(tmp_path / "features"))
    rlhf("reward", "--config", "configs/tiny/reward.yaml", "--output_dir", str(tmp_path / "bf16"), "--eval_pairs", "",
         "--max_train_pairs", "64", "--num_epochs", "2", "--global_batch_size", "16", "--per_device_batch_size", "8",
         "--unfreeze_top_layers", "1", "--bf16", "true", "--gradient_checkpointing", "true",
         "--head_fit", "sgd", "--layers", "final", "--pooling", "last", "--logprob_features", "false")
    rows = log_rows(tmp_path / "bf16")
    assert len(rows) == 8 and all(torch.isfinite(torch.tensor(r["train/loss"])) for r in rows)
    assert all(v.dtype == torch.float32 for v in weights(tmp_path / "bf16/model").values())
