"""Policy stage on the tiny model: a toy reward rises with bounded KL; resume reproduces the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.stages.policy import PolicyConfig, train

ROOT = Path(__file__).resolve().parents[1]


def policy_config(tmp_path: Path, name: str, **overrides) -> PolicyConfig:
    values = {"output_dir": str(tmp_path / name), "prompts": str(ROOT / "reward_data/prompts_train.jsonl"),
              **{k: str(v) for k, v in overrides.items()}}
    return load_config(PolicyConfig, ROOT / "configs/tiny/policy.yaml", values)


def log_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def test_toy_reward_rises_while_kl_stays_bounded(tmp_path):
    """The frequency of "e" in 16-token completions of a random byte-level model starts near 1/256; 30 updates
    must raise it at least fivefold, with the sequence KL to the reference under 6 nats."""
    cfg = policy_config(tmp_path, "run")
    metrics = train(cfg)
    first, last = metrics["objective/scores_first"], metrics["objective/scores_last"]
    assert first < 0.02 and last > 5 * first and last > 0.03, (first, last)
    assert metrics["objective/kl_last"] < 6.0
    rows = log_rows(Path(cfg.output_dir))
    assert len(rows) == 30
    for key in ("objective/scores", "objective/kl", "objective/non_score_reward", "policy/approxkl",
                "policy/clipfrac", "policy/entropy", "policy/ratio_mean", "policy/ratio_max", "response/length"):
        assert key in rows[0], key
    # the logged KL is the penalised one: non-score reward = -beta * KL
    for r in rows:
        assert abs(r["objective/non_score_reward"] + cfg.beta * r["objective/kl"]) < 1e-6
    assert (Path(cfg.output_dir) / "model" / "model.safetensors").is_file()


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = policy_config(tmp_path, "full", num_updates=8)
    train(full)
    part = policy_config(tmp_path, "part", num_updates=8, stop_after_update=4)
    assert train(part) == {"stopped_at_update": 4}
    train(policy_config(tmp_path, "part", num_updates=8, resume=True))
    a, b = log_rows(Path(full.output_dir)), log_rows(Path(part.output_dir))
    assert [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a[4:], b[4:]):
        for key in ("objective/scores", "objective/kl", "policy/approxkl", "policy/ratio_mean"):
            assert abs(ra[key] - rb[key]) < 1e-5, (ra["step"], key, ra[key], rb[key])


def test_gae_baseline_learns_and_resumes_exactly(tmp_path):
    """The value-head/GAE baseline: the toy reward rises over 30 updates with bounded KL, the value loss is
    logged, and a run stopped at update 3 and resumed (value head included) reproduces the uninterrupted run."""
    # lam = 1: Monte-Carlo returns with the value head as baseline. With lam < 1 the advantages bootstrap
    # from a value head that starts at 0 and knows little after 30 updates of a random model; seed by seed
    # that learns too slowly to test reliably on this toy (0.95 misses the bar on some seeds).
    cfg = policy_config(tmp_path, "gae", baseline="gae", lam=1.0)
    metrics = train(cfg)
    first, last = metrics["objective/scores_first"], metrics["objective/scores_last"]
    assert first < 0.02 and last > 2.5 * first and last > 0.012, (first, last)
    assert metrics["objective/kl_last"] < 6.0
    rows = log_rows(Path(cfg.output_dir))
    assert all("value/loss" in r and "value/clipfrac" in r for r in rows)
    assert any(abs(r["value/mean"]) > 1e-4 for r in rows[1:])  # the zero-initialised head moved

    full = policy_config(tmp_path, "gae_full", baseline="gae", num_updates=6)
    train(full)
    part = policy_config(tmp_path, "gae_part", baseline="gae", num_updates=6, stop_after_update=3)
    train(part)
    assert (Path(part.output_dir) / "checkpoints/step-000003/value_head.safetensors").is_file()
    train(policy_config(tmp_path, "gae_part", baseline="gae", num_updates=6, resume=True))
    a, b = log_rows(Path(full.output_dir)), log_rows(Path(part.output_dir))
    for ra, rb in zip(a[3:], b[3:]):
        for key in ("objective/scores", "objective/kl", "value/loss", "value/mean", "policy/ratio_mean"):
            assert abs(ra[key] - rb[key]) < 1e-5, (ra["step"], key, ra[key], rb[key])


@pytest.mark.parametrize("overrides", [{"baseline": "loo"},
                                       {"baseline": "gae", "lam": 1.0, "use_peft": True, "lora_r": 4}])
def test_one_step_per_batch_reuses_its_forward_for_pi_bar_with_the_same_result(tmp_path, overrides):
    """With ppo_epochs 1 and one minibatch, pi_bar's log-probs (and values) come from the optimiser step's own
    forward pass; the run must equal the one with a separate pi_bar pass (reuse_step_forward false): same
    logged figures and the same weights. With LoRA the reference pass (adapters disabled) runs between that
    forward and its backward, so the adapters must be back on for the gradient."""
    from safetensors.torch import load_file

    runs = {}
    for reuse in (True, False):
        cfg = policy_config(tmp_path, f"reuse_{reuse}", num_updates=3, ppo_epochs=1, minibatch_size=32,
                            reuse_step_forward=reuse, **overrides)
        train(cfg)
        runs[reuse] = Path(cfg.output_dir)
    a, b = log_rows(runs[True]), log_rows(runs[False])
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        for key in ("objective/scores", "objective/kl", "policy/approxkl", "policy/ratio_mean", "policy/entropy"):
            assert abs(ra[key] - rb[key]) < 1e-5, (ra["step"], key, ra[key], rb[key])
        assert abs(ra["policy/ratio_max"] - 1.0) < 1e-5  # pi_theta = pi_bar at the one step
    assert a[-1]["objective/kl"] != 0.0  # the policy moved, so equal logs are not trivially equal
    wa = {k: v for f in sorted(runs[True].joinpath("model").glob("*.safetensors")) for k, v in load_file(f).items()}
    wb = {k: v for f in sorted(runs[False].joinpath("model").glob("*.safetensors")) for k, v in load_file(f).items()}
    assert wa.keys() == wb.keys() and wa
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-5
