"""rlhf dpo on TRL's DPOTrainer: the output contract, LoRA and full fine-tuning, every pair format the reward
stage reads, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf.config import load_config
from rlhf.stages.dpo import DPOConfig, read_dpo_pairs, train

ROOT = Path(__file__).resolve().parents[1]


def dpo_config(tmp_path: Path, name: str, **overrides) -> DPOConfig:
    values = {"output_dir": str(tmp_path / name), "train_pairs": str(ROOT / "reward_data/pairs_train.jsonl"),
              "eval_pairs": "", **{k: str(v) for k, v in overrides.items()}}
    return load_config(DPOConfig, ROOT / "configs/tiny/dpo.yaml", values)


def log_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def test_lora_dpo_writes_the_output_contract_and_raises_the_margin(tmp_path):
    from rlhf.model_card import read_metadata

    cfg = dpo_config(tmp_path, "run", max_steps=12, eval_pairs=str(ROOT / "reward_data/pairs_test.jsonl"))
    metrics = train(cfg)
    out = Path(cfg.output_dir)
    for name in ("config.yaml", "log.jsonl", "metrics.json", "model/adapter_model.safetensors", "model/README.md"):
        assert (out / name).is_file(), name
    assert not (out / "model/ref").exists()  # only the trained adapter is saved
    rows = [r for r in log_rows(out) if "train/loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[0]["train/rewards/margins"] == 0.0  # policy = reference at the first step
    # the tiny model learns the training pairs: mean margin of the last third above the first third's
    first = sum(r["train/rewards/margins"] for r in rows[:4]) / 4
    last = sum(r["train/rewards/margins"] for r in rows[-4:]) / 4
    assert last > first + 0.05, (first, last)
    assert "eval/rewards/accuracies" in metrics and metrics["train/steps"] == 12
    assert json.loads((out / "metrics.json").read_text()) == metrics
    card = read_metadata(out / "model")
    assert "dpo" in card["tags"] and card["library_name"] == "peft"


def test_full_fine_tuning_keeps_a_frozen_reference_and_saves_all_weights(tmp_path):
    from safetensors.torch import load_file

    from rlhf.models import load_model

    cfg = dpo_config(tmp_path, "full", use_peft="false", max_steps=3, learning_rate=1e-3)
    train(cfg)
    saved = load_file(Path(cfg.output_dir) / "model/model.safetensors")
    base = load_model("tiny-llama").state_dict()
    assert max((saved[k] - base[k]).abs().max().item() for k in saved if k in base) > 1e-5


def test_an_sft_adapter_that_dpo_continues_is_its_own_reference(tmp_path, recwarn):
    """DPO from a LoRA SFT adapter trains that adapter further, and the reference is the SFT policy (TRL's
    frozen copy of the adapter), not the base model under it: at the first step policy = reference, so the
    implicit rewards are 0, although the adapter moves the log-probs far from the base's."""
    from rlhf.models import apply_lora, load_model, load_tokenizer, save_pretrained

    torch.manual_seed(0)
    sft = apply_lora(load_model("tiny-llama"), r=8, alpha=16, dropout=0.0, target_modules=["all-linear"],
                     base_name="tiny-llama")
    with torch.no_grad():
        for name, param in sft.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)  # an SFT adapter that has learned something: B != 0
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        tuned = sft(ids).logits.log_softmax(-1)
        with sft.disable_adapter():
            base = sft(ids).logits.log_softmax(-1)
    assert (tuned - base).abs().max().item() > 0.1  # the base is not the SFT policy
    save_pretrained(sft, load_tokenizer("tiny-llama"), tmp_path / "sft")

    cfg = dpo_config(tmp_path, "run", model_name_or_path=str(tmp_path / "sft"), max_steps=2)
    train(cfg)
    first = [r for r in log_rows(Path(cfg.output_dir)) if "train/loss" in r][0]
    assert first["train/rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert first["train/rewards/rejected"] == pytest.approx(0.0, abs=1e-6)
    assert first["train/loss"] == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0)
    # saving the continued adapter reads its base locally (no hub lookup of the alias) and names it as before
    assert not [w for w in recwarn if "fetch remote file" in str(w.message)]
    saved = json.loads((Path(cfg.output_dir) / "model/adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "tiny-llama"


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = dpo_config(tmp_path, "full", max_steps=8, save_every=2)
    train(full)
    part = dpo_config(tmp_path, "part", max_steps=8, save_every=2, stop_after_step=5)
    assert train(part) == {"stopped_at_step": 5}
    train(dpo_config(tmp_path, "part", max_steps=8, save_every=2, stop_after_step=5, resume=True))
    a = [r for r in log_rows(Path(full.output_dir)) if "train/loss" in r]
    b = [r for r in log_rows(Path(part.output_dir)) if "train/loss" in r]
    assert [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b):
        for key in ("train/loss", "train/rewards/margins", "train/grad_norm"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), (ra["step"], key)
    from safetensors.torch import load_file

    wa = load_file(Path(full.output_dir) / "model/adapter_model.safetensors")
    wb = load_file(Path(part.output_dir) / "model/adapter_model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_reads_every_format_the_reward_stage_reads_and_leaves_ties_out(tmp_path):
    rows = [
        {"prompt": "What is 2 + 2?", "chosen": " 4", "rejected": " 5"},  # standard
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}]},  # conversational
        {"chosen": "\n\nHuman: Name a colour.\n\nAssistant: Blue.",
         "rejected": "\n\nHuman: Name a colour.\n\nAssistant: No."},  # HH-RLHF
        {"prompt": "Tie?", "chosen": " a", "rejected": " b", "tie": True},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DPOConfig(train_pairs=str(path))
    records, ties = read_dpo_pairs(str(path), cfg)
    assert ties == 1 and len(records) == 3
    assert records[0]["prompt"] == [{"role": "user", "content": "What is 2 + 2?"}]
    assert records[2]["chosen"][-1]["content"] == "Blue." and records[2]["prompt"][-1]["content"] == "Name a colour."


def test_metrics_reach_the_tracker(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = dpo_config(tmp_path, "tb", max_steps=3, report_to="tensorboard")
    train(cfg)
    steps = []
    for events in Path(cfg.output_dir).rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars("train/loss")]
    assert sorted(steps) == [1, 2, 3]
