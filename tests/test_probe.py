"""The held-out probe of the policy stage (`--probe_every`, rlhf/probe.py): proxy, gold and KL over training,
and the evaluation's plot of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf.config import ConfigError, load_config
from rlhf.stages.policy import PolicyConfig, train

ROOT = Path(__file__).resolve().parents[1]
PROBE = {"probe_every": "2", "probe_max_prompts": "6", "probe_samples": "2"}


def policy(tmp_path: Path, name: str, **overrides) -> tuple[dict, list[dict]]:
    cfg = load_config(PolicyConfig, ROOT / "configs/tiny/policy.yaml", {
        "output_dir": str(tmp_path / name), "prompts": str(ROOT / "reward_data/prompts_train.jsonl"),
        "probe_prompts": str(ROOT / "reward_data/prompts_test.jsonl"), "num_updates": "4", "sample_every": "0",
        **overrides})
    metrics = train(cfg)
    rows = [json.loads(x) for x in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    return metrics, rows


def test_the_probe_scores_fixed_draws_of_the_policy_by_proxy_and_gold(tmp_path):
    """Rows at steps 0, 2 and 4; at step 0 the policy is its reference (KL exactly 0) and the figures are
    those of the initial model's completions drawn with the probe's row seeds, scored by the proxy (the run's
    reward_fn) and the gold judge, recomputed here independently."""
    from rlhf.models import load_model, load_tokenizer
    from rlhf.probe import PROBE_SEED_OFFSET
    from rlhf.rollout import load_prompts, sample
    from rlhf.sampling import seeded_sampling_kwargs
    from rlhf.tasks.rewards import gold_judge, letter_frequency

    metrics, rows = policy(tmp_path, "probed", **PROBE)
    probes = [r for r in rows if "probe/gold" in r]
    assert [r["step"] for r in probes] == [0, 2, 4]
    assert probes[0]["probe/kl"] == 0.0 and probes[-1]["probe/kl"] != 0.0

    tokenizer = load_tokenizer("tiny-llama")
    model = load_model("tiny-llama").eval()
    prompts = load_prompts(str(ROOT / "reward_data/prompts_test.jsonl"), "test", tokenizer, max_prompts=6)
    with torch.no_grad():
        out = sample(model, tokenizer, [p["prompt"] for p in prompts], 2, "cpu",
                     **seeded_sampling_kwargs(0 + PROBE_SEED_OFFSET, 0, 0, 12, 16, 1.0, 1.0))
    records = [p for p in prompts for _ in range(2)]
    proxy = letter_frequency([r["prompt"] for r in records], out.texts, records)
    gold = gold_judge([r["prompt"] for r in records], out.texts, records)
    assert probes[0]["probe/proxy"] == pytest.approx(sum(proxy) / 12, abs=1e-9)
    assert probes[0]["probe/gold"] == pytest.approx(sum(gold) / 12, abs=1e-9)
    assert probes[0]["probe/length"] == pytest.approx(out.lengths.float().mean().item(), abs=1e-9)
    assert metrics["probe/gold_first"] == probes[0]["probe/gold"]
    assert metrics["probe/kl_last"] == probes[-1]["probe/kl"]


def test_probing_leaves_training_unchanged_and_resumes_exactly(tmp_path):
    """The probe draws from its own seeds and runs without gradients: the trained weights and every update's
    figures are those of a run without it. A run stopped after update 2 and resumed logs the same probes."""
    from safetensors.torch import load_file

    _, plain = policy(tmp_path, "plain")
    _, probed = policy(tmp_path, "probed", **PROBE)
    a, b = load_file(tmp_path / "plain/model/model.safetensors"), load_file(tmp_path / "probed/model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith(("probe/", "time/"))}
    assert [strip(r) for r in plain] == [strip(r) for r in probed if "objective/scores" in r]

    policy(tmp_path, "resumed", **PROBE, stop_after_update="2")
    _, resumed = policy(tmp_path, "resumed", **PROBE, resume="true")
    probes = lambda rows: [{k: v for k, v in r.items() if k.startswith("probe/") or k == "step"} for r in rows
                           if "probe/gold" in r]
    assert probes(resumed) == probes(probed)


def test_the_evaluation_plots_proxy_and_gold_against_kl_from_the_run_log(tmp_path):
    from rlhf.stages.evaluate import training_probe, write_plots

    run = tmp_path / "policy"
    (run / "model").mkdir(parents=True)
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 0, "probe/proxy": 0.1, "probe/gold": 0.4, "probe/kl": 0.0},
        {"step": 1, "objective/scores": 0.2},
        {"step": 2, "objective/scores": 0.3, "probe/proxy": 0.9, "probe/gold": 0.2, "probe/kl": 3.5}]) + "\n")
    curve = training_probe(str(run / "model"))
    assert curve == [{"step": 0, "proxy": 0.1, "gold": 0.4, "kl": 0.0},
                     {"step": 2, "proxy": 0.9, "gold": 0.2, "kl": 3.5}]
    assert training_probe(str(tmp_path / "sft" / "model")) == [] and training_probe("tiny-llama") == []
    report = {"names": ["policy"], "checkpoints": {"policy": {}}, "training_probe": {"policy": curve}}
    rows = [{"sampled_tokens": [3, 4], "greedy_tokens": []}]
    paths = write_plots(tmp_path, report, rows)
    assert tmp_path / "proxy_gold_vs_kl.png" in paths and (tmp_path / "proxy_gold_vs_kl.png").stat().st_size > 0


def test_a_missing_gold_judge_is_refused_when_the_config_is_read(tmp_path):
    with pytest.raises(ConfigError, match="no_such_module"):
        load_config(PolicyConfig, ROOT / "configs/tiny/policy.yaml",
                    {"output_dir": str(tmp_path / "x"), "probe_every": "1",
                     "probe_gold_fn": "no_such_module:judge"})
