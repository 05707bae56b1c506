"""Stage 5: `rlhf evaluate` fills every field of its report on two tiny checkpoints (one of them saved by plain
transformers, as another tool would), its intervals shrink as prompts grow; the win-rate and bootstrap code
on hand-built scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf.config import ConfigError, load_config
from rlhf.stages.evaluate import EvaluateConfig, run
from rlhf.stats import bootstrap_ci, distinct_n, mean_and_ci, repetition_rate, win_outcomes

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ pure statistics


def test_win_outcomes_count_ties_half():
    out = win_outcomes([1.0, 0.0, 2.0, 0.5], [0.0, 1.0, 2.0, 0.49], tie_tolerance=0.02)
    assert out.tolist() == [1.0, 0.0, 0.5, 0.5]
    assert win_outcomes([3.0, 1.0], [1.0, 1.0]).mean() == 0.75
    with pytest.raises(ValueError):
        win_outcomes([1.0], [1.0, 2.0])


def test_bootstrap_interval_by_hand_and_shrinking():
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)  # no spread, no width
    x = np.array([0.0, 1.0])
    lo, hi = bootstrap_ci(x, n_boot=4000, confidence=0.95)
    # resampled means of two 0/1 draws are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5%
    # quantiles are 0 and 1.
    assert (lo, hi) == (0.0, 1.0)
    rng = np.random.default_rng(0)
    small, big = rng.normal(size=25), rng.normal(size=400)
    w_small = np.subtract(*bootstrap_ci(small)[::-1])
    w_big = np.subtract(*bootstrap_ci(big)[::-1])
    # the width scales as 1/sqrt(n): 16x the data, about a quarter of the width
    assert 0.15 < w_big / w_small < 0.4, (w_small, w_big)
    m = mean_and_ci([1.0, 2.0, 3.0, 4.0])
    assert m["mean"] == 2.5 and m["n"] == 4 and m["ci_low"] < 2.5 < m["ci_high"]


def test_text_statistics_by_hand():
    assert distinct_n(["a b a", "a c"], 1) == pytest.approx(3 / 5)  # {a, b, c} of 5 words
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert repetition_rate("x y z x y z") == pytest.approx(1 / 4)  # 4 trigrams, 3 unique
    assert repetition_rate("one two") == 0.0


# ------------------------------------------------------------------------------ the stage


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny checkpoints and a tiny reward model: the alias, and a perturbed copy written by plain
    transformers `save_pretrained` (as any other tool would leave it)."""
    from rlhf.models import load_model, load_tokenizer
    from rlhf.reward import RewardModel

    root = tmp_path_factory.mktemp("eval")
    other = load_model("tiny-llama")
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    other.save_pretrained(root / "other")
    load_tokenizer("tiny-llama").save_pretrained(root / "other")
    rm = RewardModel.from_backbone("tiny-llama", seed=3)
    rm.save(root / "rm")
    return root


def evaluate(checkpoints: Path, name: str, **overrides) -> dict:
    values = {"checkpoints": ["tiny-llama", str(checkpoints / "other")], "names": ["base", "other"],
              "reward_model": str(checkpoints / "rm"), "output_dir": str(checkpoints / name),
              "prompts": str(ROOT / "reward_data/prompts_test.jsonl"), **overrides}
    cfg = load_config(EvaluateConfig, ROOT / "configs/tiny/evaluate.yaml", values)
    run(cfg)
    return json.loads((Path(cfg.output_dir) / "report.json").read_text())


def rescored_win_rate(checkpoints: Path, out: Path, mode: str, judge: str) -> float:
    """The win rate of "other" over "base" recomputed from completions.jsonl: every completion scored again by
    the reward model (normalised, as the report is) or the gold judge, ties counting half."""
    from rlhf.reward import RewardModel
    from rlhf.stats import win_outcomes
    from rlhf.tasks.rewards import gold_judge

    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    tasks = {r["id"]: r for r in map(json.loads, (ROOT / "reward_data/prompts_test.jsonl").read_text().splitlines())}
    per = lambda r: [r[mode]] if mode == "greedy" else r[mode]  # the completions of one prompt
    records = [{"prompt_id": r["prompt_id"], "prompt": r["prompt"],
                "task": {k: v for k, v in tasks[r["prompt_id"]].items() if k != "prompt"}}
               for r in rows for _ in per(r["base"])]
    scores = {}
    for name in ("base", "other"):
        texts = [t for r in rows for t in per(r[name])]
        if judge == "gold":
            scores[name] = gold_judge([r["prompt"] for r in records], texts, records)
        else:
            rm = RewardModel.load(checkpoints / "rm")
            scores[name] = rm.score([r["prompt"] for r in records], texts, normalize=True)
    wins = win_outcomes(scores["other"], scores["base"]).reshape(len(rows), -1).mean(axis=1)  # [P]
    return float(wins.mean())


def test_evaluate_fills_every_field_of_the_report(checkpoints):
    report = evaluate(checkpoints, "full", max_prompts=8)
    out = checkpoints / "full"
    for f in ("report.json", "report.md", "completions.jsonl", "reward_vs_kl.png", "lengths.png", "metrics.json"):
        assert (out / f).is_file(), f
    assert report["baseline"] == "base" and report["num_prompts"] == 8
    ci_fields = ("reward", "gold")
    for name in ("base", "other"):
        for mode in ("greedy", "sampled"):
            m = report["checkpoints"][name][mode]
            for key in ci_fields:
                assert m[key]["ci_low"] <= m[key]["mean"] <= m[key]["ci_high"], (name, mode, key)
            for key in ("length_tokens", "eos_fraction", "distinct_1", "distinct_2", "repetition_rate"):
                assert isinstance(m[key], float), (name, mode, key)
            if name == "other":  # win rates are against the baseline: rescored from the stored completions below
                for key in ("win_rate_reward", "win_rate_gold"):
                    assert m[key]["mean"] == pytest.approx(rescored_win_rate(checkpoints, out, mode, key[9:]))
        sampled = report["checkpoints"][name]["sampled"]
        assert "kl_k1" in sampled and "kl_k3" in sampled
    # the baseline's KL to itself is exactly 0; the perturbed model's is positive
    assert report["checkpoints"]["base"]["sampled"]["kl_k1"]["mean"] == 0.0
    assert report["checkpoints"]["other"]["sampled"]["kl_k3"]["mean"] > 0.0
    # reference-based metrics: the default ones are computed offline, so the report carries no notice about them
    greedy = report["checkpoints"]["other"]["greedy"]
    assert not any("metric" in n for n in report["notices"]), report["notices"]
    from rlhf.text_metrics import builtin_metric

    tasks = {r["id"]: r for r in map(json.loads, (ROOT / "reward_data/prompts_test.jsonl").read_text().splitlines())}
    done = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    answers = [[tasks[r["prompt_id"]]["reference"], *tasks[r["prompt_id"]]["aliases"]] for r in done]
    for metric in ("exact_match", "token_f1", "contains_reference"):  # the report's figure is over these texts
        want = builtin_metric(metric, [r["other"]["greedy"] for r in done], answers)
        assert greedy["reference_metrics"][f"{metric}/{metric}"] == pytest.approx(want), metric
    md = (out / "report.md").read_text()
    assert "| other |" in md and "win rate (gold)" in md
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and len(rows[0]["other"]["sampled"]) == 2


def test_evaluate_intervals_shrink_as_prompts_grow(checkpoints):
    small = evaluate(checkpoints, "small", max_prompts=4, greedy=False, plots=False)
    large = evaluate(checkpoints, "large", max_prompts=48, greedy=False, plots=False)
    width = lambda r, k: r["checkpoints"]["other"]["sampled"][k]["ci_high"] - r["checkpoints"]["other"]["sampled"][k]["ci_low"]
    for key in ("kl_k1", "reward"):
        assert width(large, key) < 0.7 * width(small, key), (key, width(small, key), width(large, key))


def test_evaluate_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="names"):
        load_config(EvaluateConfig, None, {"checkpoints": ["a", "b"], "names": ["x"]})
    with pytest.raises(ConfigError, match="unique"):
        load_config(EvaluateConfig, None, {"checkpoints": ["runs/a/model", "other/a/model"]})
    with pytest.raises(ConfigError, match="baseline"):
        load_config(EvaluateConfig, None, {"checkpoints": ["a", "b"], "baseline": "c"})
