"""Policy stage on the tiny model: a toy reward rises with bounded KL; resume reproduces the run."""

from __future__ import annotations

import json
import math
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


# The learning bounds below are on the mean over sampling seeds 0-2, with margins measured by
# `python benchmarks/test_margins.py [--threads 2]` (seeds 0-9, 1 and 2 torch threads; results in
# benchmarks/results/test_margins*.json): one run's curve depends on float summation order (thread count,
# library release), so a single-seed bound that held on one release failed on the next (KL 6.78 against a bound
# of 6). Over the 20 measured runs per baseline: first fifth <= 0.0113; last fifth >= 0.0119 (loo) and >= 0.0203
# (gae); last/first >= 2.47; KL of the last fifth <= 6.25 (loo) and <= 5.12 (gae). The mean of three runs
# falls below the bounds (last > 0.02 and > 3x first, KL < 8) only if all three land in the bottom ~15% of runs;
# a policy that does not learn stays at ~0.005 (1/256 per byte) with last/first ~1. On the newest releases
# (torch 2.14.1, peft 0.22; test_margins_latest.json, seeds 0-9) single runs reach KL 7.81 (loo) and
# last/first 1.29 (grpo); the means over seeds 0-2 stay clear (loo KL 4.1, grpo last/first 7.9).
LEARN_SEEDS = (0, 1, 2)


def learning_means(tmp_path: Path, name: str, **overrides) -> dict:
    """Train the toy task on LEARN_SEEDS; the mean over seeds of first/last-fifth score and last-fifth KL."""
    runs = [train(policy_config(tmp_path, f"{name}{seed}", seed=seed, **overrides)) for seed in LEARN_SEEDS]
    return {key: sum(m[f"objective/{key}"] for m in runs) / len(runs) for key in ("scores_first", "scores_last",
                                                                                  "kl_last")}


def test_toy_reward_rises_while_kl_stays_bounded(tmp_path):
    """The frequency of "e" in 16-token completions of a random byte-level model starts near 1/256; 30 updates
    must raise it at least threefold on the mean over three seeds, with the sequence KL to the reference
    bounded."""
    m = learning_means(tmp_path, "seed")
    assert m["scores_first"] < 0.015 and m["scores_last"] > 3 * m["scores_first"] and m["scores_last"] > 0.02, m
    assert m["kl_last"] < 8.0, m
    cfg = policy_config(tmp_path, "seed0", seed=0)
    rows = log_rows(Path(cfg.output_dir))
    assert len(rows) == 30
    for key in ("objective/scores", "objective/kl", "objective/non_score_reward", "policy/approxkl",
                "policy/clipfrac", "policy/entropy", "policy/ratio_mean", "policy/ratio_max", "response/length"):
        assert key in rows[0], key
    # the logged KL is the penalised one: non-score reward = -beta * KL
    for r in rows:
        assert abs(r["objective/non_score_reward"] + cfg.beta * r["objective/kl"]) < 1e-6
    assert (Path(cfg.output_dir) / "model" / "model.safetensors").is_file()
    metrics = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    assert metrics["memory/rss_scope"] == "stage" and metrics["memory/peak_rss_mb"] > 0  # tests/test_memory.py


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


def test_the_adaptive_kl_controller_resumes_with_its_beta(tmp_path):
    """With target_kl the controller's beta moves every update; a run stopped at update 3 and resumed carries
    on from the beta it had (saved in the checkpoint's trainer state, or, in a checkpoint of an older release,
    in scheduler.pt) and logs the uninterrupted run's betas and figures."""
    import shutil

    import torch

    adaptive = {"num_updates": 5, "target_kl": 0.5, "kl_horizon": 100}  # beta moves ~6% per update of 32 rows
    full = policy_config(tmp_path, "full", **adaptive)
    train(full)
    part = policy_config(tmp_path, "part", stop_after_update=3, **adaptive)
    assert train(part) == {"stopped_at_update": 3}
    state_file = Path(part.output_dir) / "checkpoints/step-000003/trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["kl_controller"]["value"] == log_rows(Path(full.output_dir))[3]["objective/beta"]
    # the same checkpoint as an older release wrote it: the controller's state in the scheduler slot
    old = Path(tmp_path / "old")
    shutil.copytree(part.output_dir, old)
    torch.save({"kl": state.pop("kl_controller")}, old / "checkpoints/step-000003/scheduler.pt")
    (old / "checkpoints/step-000003/trainer_state.json").write_text(json.dumps(state))
    for name in ("part", "old"):
        train(policy_config(tmp_path, name, resume=True, **adaptive))
    a = log_rows(Path(full.output_dir))
    assert len({r["objective/beta"] for r in a}) == 5  # beta moved at every update
    for name in ("part", "old"):
        b = log_rows(tmp_path / name)
        assert [r["step"] for r in b] == list(range(1, 6))
        for ra, rb in zip(a[3:], b[3:]):
            assert ra["objective/beta"] == rb["objective/beta"], (name, ra["step"])
            for key in ("objective/scores", "objective/kl", "policy/approxkl"):
                assert abs(ra[key] - rb[key]) < 1e-5, (name, ra["step"], key, ra[key], rb[key])


def test_the_execution_plan_decides_the_switches_once(tmp_path, monkeypatch):
    """ExecutionPlan.decide: prompt sharing and the reused forward where they apply, and not under
    DeepSpeed/FSDP, gradient checkpointing (sharing) or micro-batches that split the one step (reuse)."""
    from types import SimpleNamespace

    import torch

    import rlhf.stages.policy as policy_stage
    from rlhf.stages.policy import ExecutionPlan

    def plan(world=1, rank=0, sharded=False, **overrides):
        monkeypatch.setattr(policy_stage, "shards_optimizer", lambda accelerator: sharded)
        cfg = policy_config(tmp_path, "plan", **overrides)
        return ExecutionPlan.decide(cfg, SimpleNamespace(num_processes=world, process_index=rank))

    one_step = {"ppo_epochs": 1, "minibatch_size": 32}  # 8 prompts x 4 completions: one minibatch
    assert plan() == ExecutionPlan(0, 1, 32, 4, False, 0, 0)  # 2 epochs x 2 minibatches: no reuse
    assert plan(**one_step) == ExecutionPlan(0, 1, 32, 4, True, 0, 0)
    assert plan(world=2, rank=1, **one_step) == ExecutionPlan(1, 2, 16, 4, True, 0, 0)
    assert plan(world=2, rank=1, **one_step).own == slice(16, 32)
    assert plan(sharded=True, **one_step) == ExecutionPlan(0, 1, 32, 1, False, 0, 0)
    assert plan(gradient_checkpointing=True, **one_step) == ExecutionPlan(0, 1, 32, 1, True, 0, 0)
    assert plan(share_prompts=False, reuse_step_forward=False, **one_step) == ExecutionPlan(0, 1, 32, 1, False, 0, 0)
    # micro-batches: no-grad pieces of whole prompt groups; below the rank's rows they split the one step
    assert plan(micro_batch_size=6, **one_step) == ExecutionPlan(0, 1, 32, 4, False, 4, 6)
    assert plan(micro_batch_size=32, **one_step) == ExecutionPlan(0, 1, 32, 4, True, 32, 0)
    assert plan(micro_batch_size=9) == ExecutionPlan(0, 1, 32, 4, False, 8, 9)
    split = plan(micro_batch_size=6)
    assert [len(p) for p in split.pieces(torch.arange(16))] == [6, 6, 4]
    assert split.minibatch_rows(torch.arange(16)).tolist() == list(range(16))
    assert plan(**one_step).minibatch_rows(torch.arange(32).flip(0)) == slice(0, 32)  # the forward's own rows


def test_gae_baseline_learns_and_resumes_exactly(tmp_path):
    """The value-head/GAE baseline: the toy reward rises over 30 updates with bounded KL, the value loss is
    logged, and a run stopped at update 3 and resumed (value head included) reproduces the uninterrupted run."""
    # lam = 1: Monte-Carlo returns with the value head as baseline. With lam < 1 the advantages bootstrap
    # from a value head that starts at 0 and knows little after 30 updates of a random model; seed by seed
    # that learns too slowly to test reliably on this toy (0.95 misses the bar on some seeds).
    m = learning_means(tmp_path, "gae", baseline="gae", lam=1.0)
    assert m["scores_first"] < 0.015 and m["scores_last"] > 3 * m["scores_first"] and m["scores_last"] > 0.02, m
    assert m["kl_last"] < 8.0, m
    cfg = policy_config(tmp_path, "gae0", baseline="gae", lam=1.0, seed=0)
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
                            reuse_step_forward=reuse, share_prompts=False, **overrides)  # (one change at a time)
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


def grouped_batch(tokenizer, k: int = 3, n_prompts: int = 3, n_response: int = 5, seed: int = 0):
    """Left-padded prompts of different lengths, each repeated k times (adjacent rows), with random responses
    right-padded to different lengths: (sequences [N, T_q + T_r], mask, T_q)."""
    import torch

    from rlhf.rollout import left_pad

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (4, 7, 2)[:n_prompts]]
    query, qmask = left_pad(prompts, tokenizer.pad_token_id)
    query, qmask = query.repeat_interleave(k, 0), qmask.repeat_interleave(k, 0)
    response = torch.randint(3, 200, (len(query), n_response), generator=g)
    lengths = torch.randint(1, n_response + 1, (len(query),), generator=g)
    rmask = (torch.arange(n_response)[None] < lengths[:, None]).long()
    response = response.masked_fill(rmask == 0, tokenizer.pad_token_id)
    return torch.cat([query, response], 1), torch.cat([qmask, rmask], 1), query.shape[1]


@pytest.mark.parametrize("value_head", [False, True])
def test_shared_prompt_forward_equals_the_plain_forward_with_its_gradients(value_head):
    """Running each prompt once for its k rows (its keys and values repeated) must give the plain forward's
    response log-probs, values and LoRA gradients: left padding, different prompt and response lengths."""
    import torch

    from rlhf.models import apply_lora, load_model, load_tokenizer
    from rlhf.rollout import PolicyWithValue, response_logprobs_and_values

    torch.manual_seed(0)
    tokenizer = load_tokenizer("tiny-llama")
    model = apply_lora(load_model("tiny-llama"), r=4, alpha=8, dropout=0.0, target_modules=["all-linear"],
                       base_name="tiny-llama")
    with torch.no_grad():  # adapters that change the function (B starts at 0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    if value_head:
        model = PolicyWithValue(model)
        torch.nn.init.normal_(model.value_head.weight, std=0.1)
    seqs, mask, n_query = grouped_batch(tokenizer)
    results = {}
    for group in (1, 3):
        model.zero_grad()
        logp, values = response_logprobs_and_values(model, seqs, mask, n_query, group)
        rmask = mask[:, n_query:]
        loss = (logp * rmask).sum() + (0 if values is None else (values * rmask).sum())
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[group] = (logp * rmask, None if values is None else values * rmask, grads)
    (lp1, v1, g1), (lp3, v3, g3) = results[1], results[3]
    assert lp1.shape == lp3.shape == (9, 5)
    assert (lp1 - lp3).abs().max() < 1e-5, (lp1 - lp3).abs().max()
    assert lp1[mask[:, n_query:].bool()].abs().min() > 0  # a log-prob on every response token
    if value_head:
        assert (v1 - v3).abs().max() < 1e-5 and v1.abs().max() > 1e-3
    assert g1.shape == g3.shape and g1.norm() > 0
    assert ((g1 - g3).norm() / g1.norm()) < 1e-5, ((g1 - g3).norm() / g1.norm())


def test_shared_prompt_generation_samples_what_the_plain_call_samples():
    """generate_shared_prompts (prefill once per prompt) against model.generate, row-seeded sampling: the
    same tokens; and rows that are not runs of one prompt are refused."""
    import torch

    from rlhf.models import load_model, load_tokenizer
    from rlhf.rollout import check_prompt_groups, generate_shared_prompts
    from rlhf.sampling import seeded_sampling_kwargs

    tokenizer = load_tokenizer("tiny-llama")
    model = load_model("tiny-llama").eval()
    seqs, mask, n_query = grouped_batch(tokenizer)
    query, qmask = seqs[:, :n_query], mask[:, :n_query]
    kwargs = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, use_cache=True)
    with torch.no_grad():
        plain = model.generate(input_ids=query, attention_mask=qmask, **kwargs,
                               **seeded_sampling_kwargs(0, 1, 0, len(query), 12, 1.0, 1.0))
        shared = generate_shared_prompts(model, query, qmask, 3, **kwargs,
                                         **seeded_sampling_kwargs(0, 1, 0, len(query), 12, 1.0, 1.0))
    assert plain.shape == shared.shape and plain.shape[1] > n_query
    assert torch.equal(plain, shared)
    assert len({tuple(r) for r in plain[:3, n_query:].tolist()}) > 1  # the k rows of a prompt differ
    check_prompt_groups(query, 3)
    with pytest.raises(ValueError, match="runs of 2 identical prompts"):
        check_prompt_groups(query[:6], 2)  # rows p0 p0 p0 p1 p1 p1: the second run mixes two prompts
    with pytest.raises(ValueError, match="9 rows do not split"):
        check_prompt_groups(query, 2)


@pytest.mark.parametrize("overrides", [{"baseline": "loo"},  # full FT: 2 epochs x 2 minibatches, frozen copy
                                       {"baseline": "gae", "lam": 1.0, "use_peft": True, "lora_r": 4,
                                        "ppo_epochs": 1, "minibatch_size": 32}])  # LoRA, one step per batch
def test_shared_prompts_train_as_the_plain_passes(tmp_path, overrides):
    """share_prompts (each prompt run once for its k rows in sampling and in the old/reference/step passes)
    must train as share_prompts false: the same samples, logged figures and weights."""
    from safetensors.torch import load_file

    runs = {}
    for share in (True, False):
        cfg = policy_config(tmp_path, f"share_{share}", num_updates=3, share_prompts=share, **overrides)
        train(cfg)
        runs[share] = Path(cfg.output_dir)
    a, b = log_rows(runs[True]), log_rows(runs[False])
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        for key in ("objective/scores", "objective/kl", "policy/approxkl", "policy/ratio_mean", "policy/entropy",
                    "response/length"):
            assert abs(ra[key] - rb[key]) < 1e-5, (ra["step"], key, ra[key], rb[key])
    assert a[-1]["objective/kl"] != 0.0
    wa = {k: v for f in sorted(runs[True].joinpath("model").glob("*.safetensors")) for k, v in load_file(f).items()}
    wb = {k: v for f in sorted(runs[False].joinpath("model").glob("*.safetensors")) for k, v in load_file(f).items()}
    assert wa.keys() == wb.keys() and wa
    # Float rounding differs between the two paths (~1e-7 in log-probs); Adam's normalised steps carry it to
    # ~1e-5 in the weights after 4-12 steps of size ~lr (2e-3 full FT): a tolerance 20x below one step.
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-4


@pytest.mark.parametrize("overrides", [
    {"baseline": "loo"},  # full FT, 2 epochs x 2 minibatches of 16: each minibatch in pieces of 4 rows
    {"baseline": "gae", "lam": 1.0, "use_peft": True, "lora_r": 4, "kl_estimator": "k3"},  # value head, k3 term
    {"baseline": "loo", "use_peft": True, "lora_r": 4, "ppo_epochs": 1, "minibatch_size": 32}])  # a one-step batch
def test_micro_batches_train_as_one_piece(tmp_path, overrides):
    """micro_batch_size (a minibatch's forward/backward in pieces, gradients accumulated; the no-grad passes
    in pieces of whole prompt groups) must train as the minibatch in one piece: the same logged figures,
    statistics included, and the same weights. In the one-step case the pieces turn the reused forward off,
    so the run is compared with the one-piece run that has a separate pi_bar pass."""
    from safetensors.torch import load_file

    runs = {}
    for micro in (0, 4):
        cfg = policy_config(tmp_path, f"micro_{micro}", num_updates=3, micro_batch_size=micro,
                            reuse_step_forward=overrides.get("minibatch_size") != 32, **overrides)
        train(cfg)
        runs[micro] = Path(cfg.output_dir)
    a, b = log_rows(runs[0]), log_rows(runs[4])
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        # (not policy/clipfrac: on tokens whose advantage is 0 up to float rounding, as when all k samples of
        # a prompt score the same, whether the clip "binds" follows the rounding's sign)
        for key in ("objective/scores", "objective/kl", "policy/approxkl", "policy/ratio_mean",
                    "policy/ratio_max", "policy/entropy", "response/length", *(("value/loss",) if "lam" in
                                                                                 overrides else ())):
            assert abs(ra[key] - rb[key]) < 1e-5, (ra["step"], key, ra[key], rb[key])
    assert a[-1]["objective/kl"] != 0.0
    wa = {k: v for f in sorted(runs[0].joinpath("model").glob("*.safetensors")) for k, v in load_file(f).items()}
    wb = {k: v for f in sorted(runs[4].joinpath("model").glob("*.safetensors")) for k, v in load_file(f).items()}
    assert wa.keys() == wb.keys() and wa
    # the same tolerance as the shared-prompt equivalence above (float rounding of a different batch shape)
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-4


@pytest.mark.parametrize("name", ["policy_rloo", "policy_grpo", "policy_ppo"])
def test_ready_rloo_grpo_and_ppo_configs_run_on_the_tiny_model(tmp_path, name):
    """configs/policy_{rloo,grpo,ppo}.yaml as shipped, with only the model, the reward and the length made
    tiny: each runs, logs every update and writes the model."""
    values = {"output_dir": str(tmp_path / name), "prompts": str(ROOT / "reward_data/prompts_train.jsonl"),
              "model_name_or_path": "tiny-llama", "reward_fn": "rlhf.tasks.rewards:letter_frequency",
              "normalize_rewards": "false", "max_new_tokens": "8", "num_updates": "2", "sample_every": "0"}
    cfg = load_config(PolicyConfig, ROOT / f"configs/{name}.yaml", values)
    assert cfg.baseline == {"policy_rloo": "loo", "policy_grpo": "group", "policy_ppo": "gae"}[name]
    metrics = train(cfg)
    rows = log_rows(Path(cfg.output_dir))
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["objective/scores"]) and math.isfinite(r["policy/approxkl"]) for r in rows)
    assert (Path(cfg.output_dir) / "model" / "adapter_model.safetensors").is_file()
    assert metrics["policy/updates"] == 2


def test_group_normalised_baseline_learns(tmp_path):
    """GRPO's baseline on the tiny toy task: the frequency of "e" rises over 30 updates, on the mean of three
    seeds with the bounds of the leave-one-out test (margins: benchmarks/test_margins.py, case grpo)."""
    m = learning_means(tmp_path, "grpo", baseline="group", scale_rewards="group", whiten_advantages=False)
    assert m["scores_first"] < 0.015 and m["scores_last"] > 3 * m["scores_first"] and m["scores_last"] > 0.02, m
    assert m["kl_last"] < 8.0, m
