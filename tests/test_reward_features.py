"""Richer frozen reward features, the validated head fit, ensembles, and the saved model's round trip."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch

from rlhf.config import ConfigError, load_config
from rlhf.head_fit import fit_bt, fit_members, split_validation
from rlhf.losses import ensemble_score, logprob_stats, masked_mean_pool
from rlhf.reward import FeatureSpec, RewardModel, prompt_lengths, render_texts
from rlhf.stages.reward import RewardConfig, candidate_sets, train

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- math


def test_pooling_logprob_stats_and_ensemble_score_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # [1, 3, 2]
    assert masked_mean_pool(hidden, torch.tensor([[0, 1, 1]])).tolist() == [[4.0, 5.0]]
    assert masked_mean_pool(hidden, torch.tensor([[0, 0, 0]])).tolist() == [[0.0, 0.0]]
    logp = torch.tensor([[-1.0, -3.0, -0.5, -9.0], [-2.0, -2.0, -2.0, -2.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(logprob_stats(logp, mask), torch.tensor([[-1.5, -3.0], [0.0, 0.0]]))
    members = torch.tensor([[1.0, 3.0], [2.0, 2.0], [0.0, 4.0]])
    assert ensemble_score(members).tolist() == [2.0, 2.0, 2.0]
    assert ensemble_score(members, "lcb", k=1.0).tolist() == [1.0, 2.0, 0.0]  # population std 1, 0, 2
    assert ensemble_score(members, "lcb", k=0.5).tolist() == [1.5, 2.0, 1.0]
    assert ensemble_score(members, "min").tolist() == [1.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="aggregate"):
        ensemble_score(members, "max")


def test_feature_spec_parsing_and_columns():
    assert FeatureSpec.parse("every:3", "last", False, 10).layers == (1, 4, 7, 10)
    assert FeatureSpec.parse("final", "last", False, 10).layers == (10,)
    assert FeatureSpec.parse("-1,2", "mean", False, 10).layers == (2, 10)
    assert FeatureSpec.parse("all", "both", True, 3).layers == (1, 2, 3)
    with pytest.raises(ValueError, match="out of range"):
        FeatureSpec.parse("11", "last", False, 10)
    full = FeatureSpec([2, 3], "both", True, 3)  # [last2 | mean2 | last3 | mean3 | logprobs], H = 4
    assert full.dim(4) == 18
    assert full.columns(FeatureSpec([3], "last", False, 3), 4) == [8, 9, 10, 11]
    assert full.columns(FeatureSpec([3], "both", True, 3), 4) == list(range(8, 18))
    assert full.columns(FeatureSpec([], "last", True, 3), 4) == [16, 17]
    with pytest.raises(ValueError, match="not in"):
        FeatureSpec([2], "last", False, 3).columns(FeatureSpec([3], "last", False, 3), 4)
    assert FeatureSpec([3], "last", False, 3).transformers_expressible
    assert not FeatureSpec([3], "both", False, 3).transformers_expressible
    names = candidate_sets(full, 4)
    assert list(names) == ["final/last", "final/last+logprobs", "final/last+mean", "final/last+mean+logprobs",
                           "layers2,3/last", "layers2,3/last+logprobs", "layers2,3/last+mean",
                           "layers2,3/last+mean+logprobs", "logprobs"]
    assert names["final/last"][1] == [8, 9, 10, 11]
    assert list(candidate_sets(full, 4, "transformers")) == ["final/last"]


def test_fit_bt_matches_the_hand_solution():
    # three pairs right along +x, one wrong: the unregularised optimum has sigma(w) = 3 sigma(-w), w = ln 3
    diff = torch.tensor([[1.0], [1.0], [1.0], [-1.0]])
    w = fit_bt(diff, torch.zeros(4), l2=0.0)
    assert w.item() == pytest.approx(math.log(3), abs=1e-5)
    # with L2 strength l2 the gradient (-3 sigma(-w) + sigma(w)) / 4 + l2 w vanishes at the fitted w
    w = fit_bt(diff, torch.zeros(4), l2=0.5).item()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert (-3 * sig(-w) + sig(w)) / 4 + 0.5 * w == pytest.approx(0, abs=1e-6)
    # a tie pair (eps 0.5) pulls nothing either way; weights count a pair several times
    w_tie = fit_bt(torch.tensor([[1.0], [1.0], [1.0], [-1.0], [5.0]]), torch.tensor([0, 0, 0, 0, 0.5]), l2=0.0)
    assert w_tie.item() != pytest.approx(math.log(3), abs=1e-3)  # the tie's loss is symmetric but not flat
    w_weighted = fit_bt(torch.tensor([[1.0], [-1.0]]), torch.zeros(2), l2=0.0, weights=torch.tensor([3, 1]))
    assert w_weighted.item() == pytest.approx(math.log(3), abs=1e-5)


def test_validation_split_keeps_prompts_together():
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    fit, val = split_validation(groups, 0.2, seed=0)
    assert set(fit.tolist()) | set(val.tolist()) == set(range(10)) and not set(fit.tolist()) & set(val.tolist())
    assert len(val) == 2  # one prompt's two pairs
    assert not set(groups[fit].tolist()) & set(groups[val].tolist())
    assert split_validation(groups, 0.2, seed=0)[1].tolist() == val.tolist()  # seeded
    assert len(split_validation(groups, 0.5, seed=1)[1]) == 6  # whole groups until >= half of the pairs


# -------------------------------------------------------------------------------------- features


@pytest.fixture(scope="module")
def rich_rm():
    return RewardModel.from_backbone("tiny-llama", max_length=128, layers="all", pooling="both", logprobs=True)


def direct_features(rm: RewardModel, prompt: str, response: str) -> torch.Tensor:
    """The same features computed another way: the causal LM on one text alone, the response's tokens found by
    tokenising the prompt rendered with its generation prompt."""
    from rlhf.models import load_model

    lm = load_model("tiny-llama").eval()
    tok = rm.tokenizer
    text = render_texts(tok, [prompt], [response])[0]
    head = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n_prompt = len(tok(head, add_special_tokens=False)["input_ids"])
    assert ids[:n_prompt] == tok(head, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = lm(input_ids=torch.tensor([ids]), output_hidden_states=True)
    parts = []
    for layer in (1, 2):
        h = out.hidden_states[layer][0]  # [T, H]
        parts += [h[-1], h[n_prompt:].mean(0)]
    logp = torch.log_softmax(out.logits[0, :-1].float(), -1).gather(1, torch.tensor(ids[1:]).unsqueeze(1))[:, 0]
    resp_logp = logp[n_prompt - 1:]  # predictions of tokens n_prompt .. T-1
    parts.append(torch.stack([resp_logp.mean(), resp_logp.min()]))
    return torch.cat(parts)


def test_rich_features_equal_a_direct_computation(rich_rm):
    prompts = ["What is 2 + 3?", "What is 2 + 30?", "What is the capital of France?"]
    responses = ["2 + 3 = 5.", "It is 32, I think, but please check it yourself.", "Paris."]
    texts = render_texts(rich_rm.tokenizer, prompts, responses)
    batch = rich_rm.encode(texts, prompt_lengths(rich_rm.tokenizer, prompts, texts))
    with torch.no_grad():
        plain = rich_rm.features(**batch)
    shared, prefix = rich_rm.features_shared_prefix(**batch)
    assert prefix > 0 and plain.shape == (3, rich_rm.spec.dim(64)) == (3, 4 * 64 + 2)
    for i in range(3):
        expected = direct_features(rich_rm, prompts[i], responses[i])
        torch.testing.assert_close(plain[i], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(shared[i], expected, atol=1e-5, rtol=0)
    # the final layer's last-token block is the earlier feature exactly
    legacy = RewardModel.from_backbone("tiny-llama", max_length=128)
    with torch.no_grad():
        old = legacy.features(**legacy.encode(texts))
    torch.testing.assert_close(plain[:, rich_rm.spec.columns(legacy.spec, 64)], old, atol=1e-6, rtol=0)


def write_pairs(tmp_path: Path, seed: int = 0, flip_test: bool = False):
    """Chosen responses end in an upbeat word, rejected ones in a downbeat word; several pairs per prompt."""
    import random

    rng = random.Random(seed)
    good, bad = ["great", "correct", "yes", "right"], ["awful", "wrong", "no", "bad"]
    for name, n in (("train", 60), ("test", 30)):
        rows = []
        for i in range(n):
            q = f"Question {name} {i // 2}: {rng.randint(0, 10**6) if i % 2 == 0 else 'again'}?"
            filler = " ".join(rng.choice(["so", "well", "then", "ok"]) for _ in range(rng.randint(0, 3)))
            c, r = f"{filler} {rng.choice(good)}".strip(), f"{filler} {rng.choice(bad)}".strip()
            if flip_test and name == "test":
                c, r = r, c
            rows.append({"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
                         "rejected": [{"role": "assistant", "content": r}]})
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def config(tmp_path: Path, out: str = "rm", **overrides) -> RewardConfig:
    values = {"output_dir": str(tmp_path / out), "train_pairs": str(tmp_path / "train.jsonl"),
              "eval_pairs": str(tmp_path / "test.jsonl"), **{k: str(v) for k, v in overrides.items()}}
    return load_config(RewardConfig, ROOT / "configs/tiny/reward.yaml", values)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_FEATURE_CACHE", str(tmp_path / "features"))
    return tmp_path / "features"


@pytest.mark.parametrize("share_prefix", [False, True])
def test_one_backbone_pass_per_unique_text_whatever_the_features(tmp_path, cache_dir, monkeypatch, share_prefix):
    """Every text goes through the backbone once (the shared-prefix path adds one batch-1 prefix run per batch),
    for the earlier features and the richest; a subset of cached features costs no pass at all."""
    import transformers

    calls = []

    def count(module, args, kwargs):
        if module.__class__.__name__ == "LlamaModel":
            calls.append((kwargs["input_ids"].shape[0], "position_ids" in kwargs))

    original = transformers.LlamaModel.forward

    @functools.wraps(original)  # keeps the signature the toolkit inspects (cache_keyword)
    def counting_forward(self, *args, **kwargs):
        count(self, args, kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.LlamaModel, "forward", counting_forward)
    write_pairs(tmp_path)
    for i, spec in enumerate([{"layers": "final", "pooling": "last", "logprob_features": False},
                              {"layers": "1", "pooling": "mean", "logprob_features": False},
                              {"layers": "all", "pooling": "both", "logprob_features": True}]):
        calls.clear()
        metrics = train(config(tmp_path, f"rm{i}", share_prefix=share_prefix, extract_batch_size=16, **spec))
        unique = metrics["reward/unique_texts"]
        assert metrics["reward/features_computed"] == unique == 180
        prefix_runs = [n for n, is_prefix in calls if is_prefix]
        assert sum(n for n, is_prefix in calls if not is_prefix) == unique
        assert len(calls) - len(prefix_runs) == math.ceil(unique / 16)
        assert all(n == 1 for n in prefix_runs) and (len(prefix_runs) > 0) == share_prefix
    # a subset of the richest features, read from its cache: no backbone pass
    calls.clear()
    metrics = train(config(tmp_path, "rm-sub", share_prefix=share_prefix, layers="2", pooling="both"))
    assert calls == [] and metrics["reward/features_computed"] == 0


def test_validation_choice_never_uses_held_out_pairs(tmp_path, cache_dir):
    """The same training pairs with the held-out labels reversed: the same choice, table and head; only the
    held-out accuracy mirrors."""
    write_pairs(tmp_path)
    first = train(config(tmp_path, "a", layers="all"))
    meta_a = json.loads((tmp_path / "a/model/reward_config.json").read_text())
    write_pairs(tmp_path, flip_test=True)
    second = train(config(tmp_path, "b", layers="all"))
    meta_b = json.loads((tmp_path / "b/model/reward_config.json").read_text())
    assert meta_a["fit"] == meta_b["fit"]  # (no timing in it: the same choice, table and weights)
    assert meta_a["fit"]["val_pairs"] + meta_a["fit"]["fit_pairs"] == 60
    assert len(meta_a["fit"]["table"]) == len(meta_a["fit"]["candidates"]) * 8
    chosen = [r for r in meta_a["fit"]["table"] if r["features"] == meta_a["fit"]["features"]
              and r["l2"] == meta_a["fit"]["l2"]]
    assert chosen[0]["val_accuracy"] == max(r["val_accuracy"] for r in meta_a["fit"]["table"])
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "a/model/head.safetensors")["weight"],
                       load_file(tmp_path / "b/model/head.safetensors")["weight"])
    assert first["eval/accuracy"] == pytest.approx(1 - second["eval/accuracy"], abs=1e-6)
    assert first["eval/accuracy"] >= 0.9 and first["reward/val_accuracy"] >= 0.9


# -------------------------------------------------------------------------------- ensembles, export


def training_responses(tmp_path: Path):
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    unique = {json.dumps([r["prompt"], r[s]]): (r["prompt"], r[s]) for r in rows for s in ("chosen", "rejected")}
    return [p for p, _ in unique.values()], [c for _, c in unique.values()]


def test_ensemble_members_mean_spread_and_the_policy_conservative_score(tmp_path, cache_dir):
    from rlhf.stages.policy import PolicyConfig, load_reward

    write_pairs(tmp_path)
    metrics = train(config(tmp_path, ensemble_size=3))
    model_dir = tmp_path / "rm/model"
    rm = RewardModel.load(model_dir)
    assert rm.n_members == 3 and json.loads((model_dir / "reward_config.json").read_text())["ensemble_size"] == 3
    prompts, responses = training_responses(tmp_path)
    members = rm.score_members(prompts, responses)  # [N, 3]
    assert members.shape == (len(prompts), 3)
    assert (members.std(1) > 1e-4).all()  # bootstrap members disagree
    mean = torch.tensor(rm.score(prompts, responses))
    torch.testing.assert_close(mean, members.mean(1), atol=1e-5, rtol=0)
    # stored statistics are those of the mean over the training responses
    assert mean.mean().item() == pytest.approx(metrics["reward/mean"], abs=1e-4)
    lcb = torch.tensor(rm.score(prompts, responses, aggregate="lcb", k=2.0))
    torch.testing.assert_close(lcb, members.mean(1) - 2.0 * members.std(1, correction=0), atol=1e-5, rtol=0)
    worst = torch.tensor(rm.score(prompts, responses, aggregate="min", normalize=True))
    torch.testing.assert_close(worst, (members.min(1).values - rm.mean) / rm.std, atol=1e-5, rtol=0)
    # the policy stage optimises the conservative score when asked
    cfg = load_config(PolicyConfig, None, {"reward_model": str(model_dir), "reward_aggregate": "lcb",
                                           "reward_lcb_k": "1.5", "normalize_rewards": "true"})
    got = load_reward(cfg, "cpu")(prompts[:4], responses[:4], None)
    expected = (members[:4].mean(1) - 1.5 * members[:4].std(1, correction=0) - rm.mean) / rm.std
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # a single head has no spread: refused with a message
    train(config(tmp_path, "single"))
    with pytest.raises(ConfigError, match="ensemble"):
        load_reward(load_config(PolicyConfig, None, {"reward_model": str(tmp_path / "single/model"),
                                                     "reward_aggregate": "min"}), "cpu")
    with pytest.raises(ConfigError, match="ensemble_size"):
        config(tmp_path, head_fit="sgd", ensemble_size=2)


@pytest.mark.parametrize("settings", [{}, {"head": "mlp", "head_fit": "sgd", "num_epochs": 2, **{
    "layers": "final", "pooling": "last", "logprob_features": False}}], ids=["rich-features", "mlp-head"])
def test_heads_transformers_cannot_express_round_trip_and_plain_transformers_refuses(tmp_path, cache_dir, settings):
    """A head on richer features or an MLP: RewardModel.load scores what training scored (the stored reward
    mean over the training responses, from cached features, equals the loaded model's full-path mean), and
    plain transformers refuses the directory instead of scoring it 0 (the old MLP export)."""
    from transformers import AutoModelForSequenceClassification

    write_pairs(tmp_path)
    metrics = train(config(tmp_path, **settings))
    model_dir = tmp_path / "rm/model"
    meta = json.loads((model_dir / "reward_config.json").read_text())
    assert meta["transformers"].startswith("not loadable by plain transformers")
    assert not (model_dir / "config.json").exists()
    with pytest.raises((OSError, ValueError), match="config.json"):
        AutoModelForSequenceClassification.from_pretrained(model_dir)
    rm = RewardModel.load(model_dir)
    prompts, responses = training_responses(tmp_path)
    scores = torch.tensor(rm.score(prompts, responses))
    assert scores.mean().item() == pytest.approx(metrics["reward/mean"], abs=1e-4)
    assert scores.std().item() == pytest.approx(metrics["reward/std"], abs=1e-4)
    margins = json.loads((tmp_path / "rm/eval_margins.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    rc = rm.score([r["prompt"] for r in rows[:6]], [r["chosen"] for r in rows[:6]])
    rr = rm.score([r["prompt"] for r in rows[:6]], [r["rejected"] for r in rows[:6]])
    for i in range(6):
        assert rc[i] - rr[i] == pytest.approx(margins[i], abs=1e-4)


def test_validated_head_on_the_final_last_token_matches_a_direct_fit(tmp_path, cache_dir):
    """feature_sets 'transformers': the saved score.weight is the fitted head on standardised features divided
    by the feature scale (the standardisation folded in), fitted on all training pairs at the chosen strength."""
    from safetensors.torch import load_file

    write_pairs(tmp_path)
    train(config(tmp_path, feature_sets="transformers"))
    meta = json.loads((tmp_path / "rm/model/reward_config.json").read_text())
    assert meta["fit"]["features"] == "final/last" and meta["transformers"] == "AutoModelForSequenceClassification"
    legacy = RewardModel.from_backbone("tiny-llama", max_length=128)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in rows]
    with torch.no_grad():
        fc = legacy.features(**legacy.encode(render_texts(legacy.tokenizer, prompts, [r["chosen"] for r in rows])))
        fr = legacy.features(**legacy.encode(render_texts(legacy.tokenizer, prompts, [r["rejected"] for r in rows])))
    feats = torch.cat([fc, fr])
    sigma = feats.double().std(0, correction=0)  # every response text is unique here
    w = fit_bt((fc - fr).double() / sigma, torch.zeros(len(rows)), meta["fit"]["l2"]) / sigma
    saved = load_file(tmp_path / "rm/model/model.safetensors")["score.weight"][0]
    torch.testing.assert_close(saved.double(), w, atol=1e-4 * w.abs().max().item(), rtol=0)
    # and fit_members is that fit
    direct = fit_members(feats, torch.arange(len(rows)), torch.arange(len(rows), 2 * len(rows)),
                         torch.zeros(len(rows)), list(range(64)), meta["fit"]["l2"])
    torch.testing.assert_close(direct[0].double(), w, atol=1e-4 * w.abs().max().item(), rtol=0)


def test_bad_feature_settings_are_one_line_errors(tmp_path):
    write_pairs(tmp_path)
    with pytest.raises(ConfigError, match="layers"):
        config(tmp_path, layers="every:x")
    with pytest.raises(ConfigError, match="l2_grid"):
        config(tmp_path, l2_grid="0.1,nan")
    with pytest.raises(ConfigError, match="mlp"):
        config(tmp_path, head="mlp")
    with pytest.raises(ConfigError, match="frozen"):
        config(tmp_path, unfreeze_top_layers=1)
    with pytest.raises(ConfigError, match="layers '7'"):
        train(config(tmp_path, layers="7"))  # the tiny backbone has 2 layers


@pytest.mark.slow
def test_two_processes_choose_and_fit_the_same_validated_head(tmp_path):
    """Features extracted by 2 gloo processes (each its share), the validated fit on every rank: the same
    choice, metrics and head as one process."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    write_pairs(tmp_path)
    common = ["--config", str(ROOT / "configs/tiny/reward.yaml"), "--train_pairs", str(tmp_path / "train.jsonl"),
              "--eval_pairs", str(tmp_path / "test.jsonl"), "--ensemble_size", "2", "--layers", "all",
              "--per_device_batch_size", "16"]
    runs = {
        "one": [sys.executable, str(ROOT / "scripts/reward.py"), *common],
        "two": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "29537", str(ROOT / "scripts/reward.py"), *common],
    }
    for name, cmd in runs.items():
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RLHF_FEATURE_CACHE": str(tmp_path / f"features-{name}")}
        proc = subprocess.run([*cmd, "--output_dir", str(tmp_path / name)], env=env, cwd=ROOT, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    m1, m2 = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert (m1["num_processes"], m2["num_processes"]) == (1, 2)
    assert m1["reward/head_features"] == m2["reward/head_features"] and m1["reward/head_l2"] == m2["reward/head_l2"]
    for key in ("train/accuracy", "eval/accuracy", "reward/val_accuracy"):
        assert m1[key] == m2[key], (key, m1[key], m2[key])
    for key in ("reward/mean", "reward/std"):  # features from other batch compositions: float rounding only
        assert abs(m1[key] - m2[key]) < 1e-5 * max(1.0, abs(m1[key])), (key, m1[key], m2[key])
    w1, w2 = (load_file(tmp_path / n / "model" / "head.safetensors")["weight"] for n in ("one", "two"))
    torch.testing.assert_close(w1, w2, atol=1e-4 * w1.abs().max().item(), rtol=0)


def test_models_saved_by_the_earlier_layout_still_load(tmp_path):
    """A directory as the earlier save wrote it for an MLP head (config.json, model.safetensors with an all-zero
    score.weight, head.safetensors, reward_config.json without "features") loads with the MLP's scores."""
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification

    rm = RewardModel.from_backbone("tiny-llama", head="mlp", mlp_hidden=8, max_length=128, seed=1)
    config = rm.backbone.config.__class__.from_dict(rm.backbone.config.to_dict())
    config.num_labels, config.pad_token_id, config.architectures = 1, rm.tokenizer.pad_token_id, None
    seq = AutoModelForSequenceClassification.from_config(config)
    seq.model.load_state_dict(rm.backbone.state_dict())
    with torch.no_grad():
        seq.score.weight.zero_()
    seq.save_pretrained(tmp_path)
    rm.tokenizer.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in rm.head.state_dict().items()}, tmp_path / "head.safetensors")
    (tmp_path / "reward_config.json").write_text(json.dumps({"head": "mlp", "mlp_hidden": 8, "max_length": 128,
                                                             "mean": 0.5, "std": 2.0, "backbone": "tiny-llama"}))
    loaded = RewardModel.load(tmp_path)
    assert loaded.spec == FeatureSpec.legacy(2) and loaded.n_members == 1
    prompts, responses = ["What is 2 + 3?", "Name a colour."], ["5.", "Blue."]
    torch.testing.assert_close(torch.tensor(loaded.score(prompts, responses)),
                               torch.tensor(rm.score(prompts, responses)), atol=1e-5, rtol=0)
    assert loaded.score(prompts, responses)[0] != 0.0
