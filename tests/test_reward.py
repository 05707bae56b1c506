"""Reward model: Bradley-Terry math by hand, last-token pooling, frozen backbone, artefact, feature cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config import load_config
from rlhf.losses import bradley_terry_loss, expected_calibration_error, last_token_index, reward_centering_loss
from rlhf.reward import RewardModel, render_texts
from rlhf.stages.reward import RewardConfig, train

ROOT = Path(__file__).resolve().parents[1]
# The earlier default: the final layer's last-token state, a linear head trained by AdamW for num_epochs (the
# SGD and full-forward paths, and the plain-transformers layout of the saved model)
SGD = {"head_fit": "sgd", "layers": "final", "pooling": "last", "logprob_features": False}


# ------------------------------------------------------------------------------------------- math


def test_bradley_terry_by_hand():
    rc = torch.tensor([0.0, 1.0, 2.0, -1.0])
    rr = torch.tensor([0.0, 0.0, 0.5, 1.0])
    expected = [math.log(2), math.log(1 + math.exp(-1)), math.log(1 + math.exp(-1.5)), math.log(1 + math.exp(2))]
    torch.testing.assert_close(bradley_terry_loss(rc, rr), torch.tensor(expected), atol=1e-6, rtol=0)
    # margin shifts the difference: d = 1 - 0 - 0.5
    assert bradley_terry_loss(rc[1:2], rr[1:2], margin=0.5).item() == pytest.approx(math.log(1 + math.exp(-0.5)))
    # tie (eps = 0.5): the mean of both orders; equal rewards give log 2 whatever eps
    d = 1.5
    tie = (math.log(1 + math.exp(-d)) + math.log(1 + math.exp(d))) / 2
    assert bradley_terry_loss(torch.tensor([d]), torch.tensor([0.0]), label_smoothing=0.5).item() == pytest.approx(tie)
    assert bradley_terry_loss(torch.tensor([3.0]), torch.tensor([3.0]), label_smoothing=0.1).item() == pytest.approx(
        math.log(2))
    smooth = 0.9 * math.log(1 + math.exp(-d)) + 0.1 * math.log(1 + math.exp(d))
    assert bradley_terry_loss(torch.tensor([d]), torch.tensor([0.0]), label_smoothing=0.1).item() == pytest.approx(
        smooth, rel=1e-6)


def test_reward_centering_and_ece_by_hand():
    assert reward_centering_loss(torch.tensor([1.0, -2.0]), torch.tensor([1.0, 0.0])).item() == pytest.approx(
        (4 + 4) / 2)
    # bins of width 0.5: {0.2, 0.4} with outcomes {0, 1}: |0.5 - 0.3| = 0.2; {0.9, 0.7}: {1, 1}: |1 - 0.8| = 0.2
    probs = torch.tensor([0.2, 0.4, 0.9, 0.7])
    labels = torch.tensor([0.0, 1.0, 1.0, 1.0])
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.5 * 0.2 + 0.5 * 0.2)
    assert expected_calibration_error(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])) == 0.0


def test_last_token_index_left_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0],  # right padded, 3 tokens
                         [0, 0, 1, 1, 1],  # left padded
                         [1, 1, 1, 1, 1],
                         [1, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 0]


# -------------------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def tiny_rm():
    return RewardModel.from_backbone("tiny-llama", max_length=128, seed=0)


def test_pooling_is_right_for_left_right_padding_and_pad_equal_to_eos(tiny_rm):
    tok = tiny_rm.tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    texts = ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyes<|im_end|>",  # ends in EOS == pad
             "<|im_start|>user\nwhat is two plus two?<|im_end|>\n<|im_start|>assistant\nfour<|im_end|>\n"]
    alone = [tiny_rm.features(**tiny_rm.encode([t])) for t in texts]  # no padding at all
    right = tiny_rm.encode(texts)
    assert right["input_ids"][0, -1] == tok.pad_token_id  # the short text is padded with the EOS id
    feats_right = tiny_rm.features(**right)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    left = {"input_ids": torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids]),
            "attention_mask": torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])}
    pos = torch.arange(width).expand(2, width) - (width - torch.tensor([len(x) for x in ids])).unsqueeze(1)
    hidden = tiny_rm.backbone(**left, position_ids=pos.clamp(min=0)).last_hidden_state
    feats_left = hidden[:, -1]
    for i in range(2):
        torch.testing.assert_close(feats_right[i], alone[i][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(feats_left[i], alone[i][0], atol=1e-5, rtol=0)
    # the EOS-ended text is read at its EOS, not at the token before it
    assert not torch.allclose(alone[0][0], tiny_rm.features(**tiny_rm.encode([texts[0][:-len("<|im_end|>")]]))[0])


def test_shared_prefix_features_equal_full_forward_features(tiny_rm):
    prompts = ["What is 2 + 3?", "What is 2 + 30?", "What is the capital of France?", "What is 2 + 3?"]
    responses = ["2 + 3 = 5.", "It is 32, I think, but please check it yourself.", "Paris.", "Five."]
    batch = tiny_rm.encode(render_texts(tiny_rm.tokenizer, prompts, responses))  # right-padded, unequal lengths
    full = tiny_rm.features(**batch)
    shared, prefix = tiny_rm.features_shared_prefix(**batch)
    n_user = len(tiny_rm.tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"])
    assert prefix >= n_user + len("What is ")  # the template's opening and the question's start
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=0)
    # rows that share nothing, or left padding, take the plain forward
    other = tiny_rm.encode(["abc", "xyz uvw"])
    assert tiny_rm.features_shared_prefix(**other)[1] == 0
    torch.testing.assert_close(tiny_rm.features_shared_prefix(**other)[0], tiny_rm.features(**other))


def reward_config(tmp_path: Path, **overrides) -> RewardConfig:
    values = {"output_dir": str(tmp_path / "rm"), "train_pairs": str(tmp_path / "train.jsonl"),
              "eval_pairs": str(tmp_path / "test.jsonl"), **{k: str(v) for k, v in overrides.items()}}
    return load_config(RewardConfig, ROOT / "configs/tiny/reward.yaml", values)


def write_separable_pairs(tmp_path: Path, seed: int = 0):
    """Chosen responses end in an upbeat word, rejected ones in a downbeat word (different final-token
    features in any backbone); train and test use different prompts and words' contexts."""
    import random

    rng = random.Random(seed)
    good, bad = ["great", "correct", "yes", "right"], ["awful", "wrong", "no", "bad"]
    for name, n in (("train", 160), ("test", 80)):
        rows = []
        for i in range(n):
            q = f"Question {name} {i}: {rng.randint(0, 10**6)}?"
            filler = " ".join(rng.choice(["so", "well", "then", "ok"]) for _ in range(rng.randint(0, 3)))
            rows.append({"prompt": [{"role": "user", "content": q}],
                         "chosen": [{"role": "assistant", "content": f"{filler} {rng.choice(good)}".strip()}],
                         "rejected": [{"role": "assistant", "content": f"{filler} {rng.choice(bad)}".strip()}]})
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_FEATURE_CACHE", str(tmp_path / "features"))
    return tmp_path / "features"


def test_frozen_training_learns_separable_pairs_and_keeps_the_backbone(tmp_path, cache_dir):
    from rlhf.models import resolve_model_path

    write_separable_pairs(tmp_path)
    cfg = reward_config(tmp_path, num_epochs=20, learning_rate=0.05, **SGD)
    metrics = train(cfg)
    assert metrics["eval/accuracy"] >= 0.9, metrics  # chance is 0.5
    assert metrics["train/accuracy"] >= 0.9
    # backbone weights bit-identical to the tiny model's; the head moved away from its initialisation
    saved = load_file(Path(cfg.output_dir) / "model" / "model.safetensors")
    base = load_file(Path(resolve_model_path("tiny-llama")) / "model.safetensors")
    for k, v in base.items():
        if k.startswith("model."):
            assert torch.equal(saved[k], v), k
    fresh = RewardModel.from_backbone("tiny-llama", max_length=128, seed=0)
    assert not torch.allclose(saved["score.weight"], fresh.head.weight)
    assert metrics["reward/std"] > 0 and math.isfinite(metrics["reward/mean"])


@pytest.mark.parametrize("settings", [SGD, {"feature_sets": "transformers"},
                                      {"feature_sets": "transformers", "ensemble_size": 3}],
                         ids=["sgd", "validated", "validated-ensemble"])
def test_transformers_loads_the_artefact_with_the_same_scores(tmp_path, cache_dir, settings):
    """A linear head on the final layer's last token (trained by SGD, or fitted on validation restricted to
    what transformers computes; an ensemble's mean is one such head) exports to plain transformers."""
    from transformers import AutoModelForSequenceClassification

    write_separable_pairs(tmp_path)
    cfg = reward_config(tmp_path, num_epochs=2, **settings)
    train(cfg)
    model_dir = Path(cfg.output_dir) / "model"
    rm = RewardModel.load(model_dir)
    hf = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    assert hf.config.num_labels == 1
    prompts = ["What is 2 + 3?", "Name a colour."]
    responses = ["2 + 3 = 5.", "Blue, I think, or maybe green."]
    ours = rm.score(prompts, responses)
    for text, score in zip(render_texts(rm.tokenizer, prompts, responses), ours):
        enc = rm.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            theirs = hf(**enc).logits[0, 0].item()
        assert abs(theirs - score) < 1e-4
    meta = json.loads((model_dir / "reward_config.json").read_text())
    assert meta["mean"] == pytest.approx(json.loads((Path(cfg.output_dir) / "metrics.json").read_text())["reward/mean"])
    normed = rm.score(prompts, responses, normalize=True)
    assert normed[0] == pytest.approx((ours[0] - meta["mean"]) / meta["std"], rel=1e-6)


def test_feature_cache_hits_on_a_second_run_and_misses_on_changes(tmp_path, cache_dir, monkeypatch):
    write_separable_pairs(tmp_path)
    first = train(reward_config(tmp_path, num_epochs=1))
    assert first["reward/features_computed"] == first["reward/unique_texts"] > 0

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran although every feature was cached")

    with monkeypatch.context() as m:
        m.setattr(RewardModel, "features", no_backbone)
        m.setattr(RewardModel, "features_shared_prefix", no_backbone)
        second = train(reward_config(tmp_path, num_epochs=1, overwrite=True))
    assert second["reward/features_computed"] == 0
    assert second["eval/accuracy"] == first["eval/accuracy"]

    # a changed text misses (only that text)
    rows = (tmp_path / "test.jsonl").read_text().splitlines()
    row = json.loads(rows[0])
    row["chosen"][0]["content"] += " indeed"
    (tmp_path / "test.jsonl").write_text("\n".join([json.dumps(row), *rows[1:]]) + "\n")
    third = train(reward_config(tmp_path, num_epochs=1, overwrite=True))
    assert third["reward/features_computed"] == 1

    # another length limit misses everything
    fourth = train(reward_config(tmp_path, num_epochs=1, overwrite=True, max_length=96))
    assert fourth["reward/features_computed"] == fourth["reward/unique_texts"]

    # so does a different backbone: the tiny model with one weight changed
    from rlhf.models import load_model, load_tokenizer

    other = load_model("tiny-llama")
    with torch.no_grad():
        other.model.norm.weight[0] += 0.5
    other.save_pretrained(tmp_path / "other")
    load_tokenizer("tiny-llama").save_pretrained(tmp_path / "other")
    fifth = train(reward_config(tmp_path, num_epochs=1, overwrite=True, model_name_or_path=tmp_path / "other"))
    assert fifth["reward/features_computed"] == fifth["reward/unique_texts"]


def test_unfrozen_top_layer_trains_through_the_full_forward_path(tmp_path, cache_dir):
    write_separable_pairs(tmp_path)
    cfg = reward_config(tmp_path, num_epochs=2, unfreeze_top_layers=1, **SGD)
    metrics = train(cfg)
    assert metrics["reward/features_computed"] == 0  # no caching when the backbone trains
    from rlhf.models import resolve_model_path

    saved = load_file(Path(cfg.output_dir) / "model" / "model.safetensors")
    base = load_file(Path(resolve_model_path("tiny-llama")) / "model.safetensors")
    assert torch.equal(saved["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(saved["model.layers.1.mlp.up_proj.weight"], base["model.layers.1.mlp.up_proj.weight"])


def test_lora_reward_model_trains_adapters_and_saves_them_merged(tmp_path, cache_dir):
    write_separable_pairs(tmp_path)
    cfg = reward_config(tmp_path, num_epochs=2, use_peft=True, lora_r=4, lora_alpha=8, learning_rate=0.01, **SGD)
    metrics = train(cfg)
    assert metrics["reward/features_computed"] == 0  # the backbone trains: no feature cache
    from rlhf.models import resolve_model_path

    saved = load_file(Path(cfg.output_dir) / "model" / "model.safetensors")
    base = load_file(Path(resolve_model_path("tiny-llama")) / "model.safetensors")
    assert not any("lora" in k for k in saved)  # adapters merged into plain weights
    assert saved.keys() >= {k for k in base if k.startswith("model.")}
    assert not torch.equal(saved["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(saved["model.norm.weight"], base["model.norm.weight"])  # not a LoRA target
    # the merged artefact scores the training responses as the trained (unmerged) model did: the stored
    # reward mean and std were computed before the merge
    rm = RewardModel.load(Path(cfg.output_dir) / "model")
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    unique = {json.dumps([r["prompt"], r[side]]): (r["prompt"], r[side]) for r in rows for side in ("chosen", "rejected")}
    scores = torch.tensor(rm.score([p for p, _ in unique.values()], [c for _, c in unique.values()]))
    assert scores.mean().item() == pytest.approx(metrics["reward/mean"], abs=1e-4)
    assert scores.std().item() == pytest.approx(metrics["reward/std"], abs=1e-4)
    assert metrics["eval/accuracy"] >= 0.9


def test_reward_score_command_scores_pairs(tmp_path, cache_dir, capsys):
    from rlhf.cli import main

    write_separable_pairs(tmp_path)
    cfg = reward_config(tmp_path, num_epochs=20, learning_rate=0.05)
    train(cfg)
    out = tmp_path / "scored.jsonl"
    assert main(["reward", "score", "--model", str(Path(cfg.output_dir) / "model"), "--input",
                 str(tmp_path / "test.jsonl"), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 80
    rm = RewardModel.load(Path(cfg.output_dir) / "model")
    first = rows[0]
    assert first["reward_chosen"] == pytest.approx(rm.score([first["prompt"]], [first["chosen"]])[0], abs=1e-5)
    assert sum(r["reward_chosen"] > r["reward_rejected"] for r in rows) / len(rows) >= 0.9


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """Feature extraction sharded over 2 gloo processes, head trained with DDP on the same global batch:
    the same metrics and head weights as one process (1e-5; they differ only in float summation order)."""
    import os
    import subprocess
    import sys

    write_separable_pairs(tmp_path)
    common = ["--config", str(ROOT / "configs/tiny/reward.yaml"), "--train_pairs", str(tmp_path / "train.jsonl"),
              "--eval_pairs", str(tmp_path / "test.jsonl"), "--num_epochs", "3", "--global_batch_size", "32",
              *[x for k, v in SGD.items() for x in (f"--{k}", str(v).lower())]]
    runs = {
        "one": [sys.executable, str(ROOT / "scripts/reward.py"), *common, "--per_device_batch_size", "16"],
        "two": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "29535", str(ROOT / "scripts/reward.py"), *common,
                "--per_device_batch_size", "16"],
    }
    for name, cmd in runs.items():
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RLHF_FEATURE_CACHE": str(tmp_path / f"features-{name}")}
        proc = subprocess.run([*cmd, "--output_dir", str(tmp_path / name)], env=env, cwd=ROOT, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    m1, m2 = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert (m1["num_processes"], m2["num_processes"]) == (1, 2)
    assert m1["reward/features_computed"] == m2["reward/features_computed"] == m1["reward/unique_texts"]
    for key in ("train/accuracy", "eval/accuracy", "train/loss", "eval/loss", "reward/mean", "reward/std"):
        assert abs(m1[key] - m2[key]) < 1e-5, (key, m1[key], m2[key])
    w1, w2 = (load_file(tmp_path / n / "model" / "model.safetensors")["score.weight"] for n in ("one", "two"))
    torch.testing.assert_close(w1, w2, atol=1e-5, rtol=0)


def test_bf16_feature_extraction_leaves_the_saved_backbone_in_full_precision(tmp_path, cache_dir):
    from rlhf.models import resolve_model_path

    write_separable_pairs(tmp_path)
    cfg = reward_config(tmp_path, num_epochs=10, learning_rate=0.05, feature_dtype="bfloat16", **SGD)
    metrics = train(cfg)
    assert metrics["eval/accuracy"] >= 0.9
    saved = load_file(Path(cfg.output_dir) / "model" / "model.safetensors")
    base = load_file(Path(resolve_model_path("tiny-llama")) / "model.safetensors")
    for k, v in base.items():
        if k.startswith("model."):
            assert saved[k].dtype == torch.float32 and torch.equal(saved[k], v), k


def test_several_pair_files_and_max_train_pairs(tmp_path):
    """train_pairs may list several sources (their union); max_train_pairs keeps the first N of each."""
    from rlhf.models import load_tokenizer
    from rlhf.stages.reward import load_pair_set

    src = ROOT / "reward_data/pairs_train.jsonl"
    lines = src.read_text().splitlines()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(lines[:5]) + "\n")
    b.write_text("\n".join(lines[5:12]) + "\n")
    cfg = load_config(RewardConfig, None, {"train_pairs": f"{a},{b}"})
    tok = load_tokenizer("tiny-llama")
    assert len(load_pair_set(cfg.train_pairs, cfg, tok, [], {})) == 12
    assert len(load_pair_set(cfg.train_pairs, cfg, tok, [], {}, max_pairs=3)) == 6
    texts, index = [], {}
    one = load_pair_set(str(b), cfg, tok, texts, index)
    both = load_pair_set(f"{a},{b}", cfg, tok, texts, index, max_pairs=0)
    # the same text gets the same id across sets (stored once)
    assert torch.equal(both.chosen[5:], one.chosen) and torch.equal(both.rejected[5:], one.rejected)
