"""Decision Transformer (rlhf/dt): sequence construction against hand-built cases, the model's shapes, masking and
causality for discrete and continuous actions, data regeneration, and a data -> train -> evaluate CLI run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf.cli import main as cli_main
from rlhf.config import ConfigError, load_config, parse_args
from rlhf.dt.data import DTDataConfig, OfflineDataset, generate
from rlhf.dt.evaluate import DTEvalConfig, rollout
from rlhf.dt.model import DecisionTransformer, DTSpec
from rlhf.dt.sequences import (
    episode_offsets,
    left_pad,
    padding_mask,
    stack_windows,
    timestep_indices,
    window,
    window_steps,
)
from rlhf.dt.train import DTTrainConfig, WindowSampler
from rlhf.losses import dt_action_loss, returns_to_go

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------- pure math


def test_returns_to_go_by_hand():
    torch.testing.assert_close(returns_to_go(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([6.0, 5.0, 3.0]))
    got = returns_to_go(torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]]))
    torch.testing.assert_close(got, torch.tensor([[0.0, -1.0, -1.0], [1.5, 1.0, 0.5]]))
    torch.testing.assert_close(returns_to_go(torch.tensor([-7.0])), torch.tensor([-7.0]))


def test_action_loss_discrete_and_continuous_by_hand_ignoring_padding():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [99.0, -99.0]]])  # [1, 3, 2]; the last step is a pad
    targets = torch.tensor([[1, 0, 1]])
    mask = torch.tensor([[1, 1, 0]])
    want = (np.log(2.0) + np.log(1 + np.exp(-2.0))) / 2  # -log softmax at the targets, mean over 2 real steps
    assert dt_action_loss(logits, targets, mask, discrete=True).item() == pytest.approx(want, abs=1e-6)
    preds = torch.tensor([[[0.5, -0.5], [0.0, 0.0], [5.0, 5.0]]])  # [1, 3, 2]
    acts = torch.tensor([[[0.0, 0.0], [1.0, 3.0], [-5.0, -5.0]]])
    want = ((0.25 + 0.25) / 2 + (1.0 + 9.0) / 2) / 2
    assert dt_action_loss(preds, acts, mask, discrete=False).item() == pytest.approx(want, abs=1e-6)


# ------------------------------------------------------------------------------ window plumbing


def test_window_steps_masks_timesteps_and_left_padding_by_hand():
    assert window_steps(0, 4) == (0, 1)
    assert window_steps(1, 4) == (0, 2)
    assert window_steps(3, 4) == (0, 4)
    assert window_steps(9, 4) == (6, 4)
    assert padding_mask(2, 4).tolist() == [0, 0, 1, 1]
    assert padding_mask(4, 4).tolist() == [1, 1, 1, 1]
    assert timestep_indices(0, 2, 4).tolist() == [0, 0, 0, 1]
    assert timestep_indices(6, 4, 4).tolist() == [6, 7, 8, 9]
    assert left_pad(np.array([[1.0, 2.0], [3.0, 4.0]]), 3).tolist() == [[0, 0], [1, 2], [3, 4]]
    assert left_pad(np.array([5, 6]), 4, value=-1).tolist() == [-1, -1, 5, 6]
    assert episode_offsets(np.array([3, 2, 4])).tolist() == [0, 3, 5]
    for bad in (lambda: padding_mask(0, 4), lambda: padding_mask(5, 4), lambda: left_pad(np.zeros(5), 4),
                lambda: window_steps(-1, 4)):
        with pytest.raises(ValueError):
            bad()


def hand_dataset() -> OfflineDataset:
    """Two episodes, lengths 3 and 2, discrete actions; observation value = 10 * episode + step."""
    obs = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]], np.float32)
    return OfflineDataset(observations=obs, actions=np.array([1, 0, 1, 0, 0]),
                          rewards=np.array([1.0, 2.0, 3.0, 5.0, -1.0], np.float32), lengths=np.array([3, 2]),
                          levels=np.array([1.0, 0.0]),
                          meta={"env": "CartPole-v1", "obs_dim": 1, "discrete": True, "act_dim": 2,
                                "action_start": 0, "max_episode_steps": 500})


def test_dataset_returns_rtg_windows_and_top_fraction_by_hand():
    data = hand_dataset()
    assert data.returns.tolist() == [6.0, 4.0]
    assert data.rtg().tolist() == [6.0, 5.0, 3.0, 4.0, -1.0]  # restarts at each episode
    arrays = {"states": data.observations, "actions": data.actions, "rtg": data.rtg()}
    w = window(arrays, offset=3, t=1, K=3)  # second episode, its step 1: steps 0..1 after one pad
    assert w["states"][:, 0].tolist() == [0.0, 10.0, 11.0]
    assert w["actions"].tolist() == [0, 0, 0]
    assert w["rtg"].tolist() == [0.0, 4.0, -1.0]
    assert w["mask"].tolist() == [0, 1, 1]
    assert w["timesteps"].tolist() == [0, 0, 1]
    w = window(arrays, offset=0, t=2, K=2)  # first episode, last step, context 2: steps 1..2, no padding
    assert w["states"][:, 0].tolist() == [1.0, 2.0] and w["rtg"].tolist() == [5.0, 3.0]
    assert w["timesteps"].tolist() == [1, 2] and w["mask"].tolist() == [1, 1]
    batch = stack_windows([window(arrays, 0, 0, 3), window(arrays, 3, 1, 3)])
    assert batch["states"].shape == (2, 3, 1) and batch["mask"].tolist() == [[0, 0, 1], [0, 1, 1]]
    top = data.top_fraction(0.5)
    assert top.lengths.tolist() == [3] and top.returns.tolist() == [6.0] and top.rtg().tolist() == [6.0, 5.0, 3.0]


def test_window_sampler_is_a_function_of_seed_and_step_and_stays_in_one_episode():
    data = hand_dataset()
    sampler = WindowSampler(data, K=3)
    a, b, c = sampler.batch(5, 32, seed=1), sampler.batch(5, 32, seed=1), sampler.batch(6, 32, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["states"], c["states"])
    for states, mask, ts in zip(a["states"][..., 0], a["mask"], a["timesteps"]):
        real = states[mask.bool()]
        episode = int(real[-1] // 10)
        assert (real // 10 == episode).all()  # never crosses into another episode
        assert (real % 10 == ts[mask.bool()]).all()  # timesteps are the steps within the episode
        assert (states[~mask.bool()] == 0).all()


# ------------------------------------------------------------------------------------------ model


def make_spec(discrete: bool, condition: bool = True, K: int = 4) -> DTSpec:
    return DTSpec(env="CartPole-v1" if discrete else "Pendulum-v1", obs_dim=3, act_dim=2 if discrete else 1,
                  discrete=discrete, context_len=K, max_ep_len=50, rtg_scale=10.0, state_mean=[0.0] * 3,
                  state_std=[1.0] * 3, condition_on_return=condition, action_low=None if discrete else [-2.0],
                  action_high=None if discrete else [2.0], hidden_size=16, n_layer=2, n_head=2, dropout=0.0)


def random_batch(spec: DTSpec, B: int, K: int, gen: torch.Generator):
    states = torch.randn(B, K, spec.obs_dim, generator=gen)
    if spec.discrete:
        actions = torch.randint(0, spec.act_dim, (B, K), generator=gen)
    else:
        actions = torch.rand(B, K, spec.act_dim, generator=gen) * 4 - 2
    rtg = torch.randn(B, K, generator=gen) * 10
    timesteps = torch.arange(K).repeat(B, 1) + 3
    return states, actions, rtg, timesteps, torch.ones(B, K, dtype=torch.long)


@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
def test_model_shapes_padding_invariance_causality_and_round_trip(discrete, tmp_path):
    torch.manual_seed(0)
    spec = make_spec(discrete)
    model = DecisionTransformer(spec).eval()
    gen = torch.Generator().manual_seed(1)
    s, a, r, ts, m = random_batch(spec, B=3, K=4, gen=gen)
    out = model(s, a, r, ts, m)
    assert out.shape == (3, 4, spec.act_dim)
    if not discrete:
        assert out.abs().max() <= 1.0  # tanh head: normalised actions
    # left padding: the last 2 real steps behind 2 pads give the same predictions as those 2 steps alone
    short = model(s[:, 2:], a[:, 2:], r[:, 2:], ts[:, 2:], m[:, 2:])
    pad_mask = torch.tensor([[0, 0, 1, 1]] * 3)
    garbage = (torch.randn_like(s) * 50, a.flip(1), r * 7, ts)  # whatever sits in the pads must not matter
    padded = model(torch.where(pad_mask.unsqueeze(-1).bool(), s, garbage[0]),
                   torch.where(pad_mask.bool() if discrete else pad_mask.unsqueeze(-1).bool(), a, garbage[1]),
                   torch.where(pad_mask.bool(), r, garbage[2]), ts, pad_mask)
    torch.testing.assert_close(padded[:, 2:], short, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(padded).all()
    # causality: the prediction at position k ignores action k and every later step
    a2 = a.clone()
    a2[:, 2:] = (a[:, 2:] + 1) % spec.act_dim if discrete else -a[:, 2:]
    s2, r2 = s.clone(), r.clone()
    s2[:, 3], r2[:, 3] = s[:, 3] + 5, r[:, 3] - 5
    out2 = model(s2, a2, r2, ts, m)
    torch.testing.assert_close(out2[:, :3], out[:, :3], atol=1e-5, rtol=1e-5)
    assert (out2[:, 3] - out[:, 3]).abs().max() > 1e-4
    # the return token reaches a DT's predictions (small at initialisation; a BC model's are exactly unchanged)
    assert (model(s, a, r + 20, ts, m) - out).abs().max() > 1e-6
    # save / load keeps the weights and the spec (rtg scale included)
    loaded = DecisionTransformer.load(model.save(tmp_path / "m"))
    assert loaded.spec == spec
    torch.testing.assert_close(loaded(s, a, r, ts, m), out)


def test_bc_ignores_the_return_and_discrete_acting_maps_ids():
    torch.manual_seed(0)
    model = DecisionTransformer(make_spec(True, condition=False)).eval()
    s, a, r, ts, m = random_batch(model.spec, B=2, K=4, gen=torch.Generator().manual_seed(2))
    assert torch.equal(model(s, a, r, ts, m), model(s, a, r * 100 + 3, ts, m))
    greedy = model.act(s, a, r, ts, m, sample=False)
    assert greedy.tolist() == model(s, a, r, ts, m)[:, -1].argmax(-1).tolist()


def test_continuous_action_scaling_round_trips():
    model = DecisionTransformer(make_spec(False))
    acts = torch.tensor([[-2.0], [0.0], [1.0], [2.0]])
    torch.testing.assert_close(model.normalize_actions(acts), torch.tensor([[-1.0], [0.0], [0.5], [1.0]]))
    torch.testing.assert_close(model.denormalize_actions(model.normalize_actions(acts)), acts)


# ------------------------------------------------------------------------------------------- data


def test_data_regenerates_from_its_seed_with_mixed_quality():
    a = generate("pomdp/tmaze", [1.0, 0.0], 20, seed=3, progress=False)
    b = generate("pomdp/tmaze", [1.0, 0.0], 20, seed=3, progress=False)
    c = generate("pomdp/tmaze", [1.0, 0.0], 20, seed=4, progress=False)
    for name in ("observations", "actions", "rewards", "lengths"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.actions, c.actions) or not np.array_equal(a.observations, c.observations)
    expert, random = a.returns[a.levels == 0.0], a.returns[a.levels == 1.0]
    assert np.allclose(expert, expert[0]) and expert[0] > 0.5  # the privileged expert always takes the cued arm
    assert expert[0] >= random.max() - 1e-6 and expert.mean() > random.mean() + 0.5
    assert a.observations.shape[1] == 4 and a.meta["discrete"] and a.meta["act_dim"] == 3
    m = generate("pomdp/masked-cartpole", [0.0], 1, seed=0, max_episode_steps=30, progress=False)
    assert m.observations.shape == (30, 2) and m.returns.tolist() == [30.0]  # (x, theta) only; expert balances
    p = generate("Pendulum-v1", [0.0], 1, seed=0, max_episode_steps=10, progress=False)
    assert p.actions.shape == (10, 1) and p.actions.dtype == np.float32 and not p.meta["discrete"]
    assert np.abs(p.actions).max() <= 2.0


# -------------------------------------------------------------------------------------- configs


def test_configs_parse_and_bad_keys_fail():
    for path in sorted((ROOT / "configs" / "dt").glob("*.yaml")):
        cls = {"data": DTDataConfig, "train": DTTrainConfig, "evaluate": DTEvalConfig}[path.stem.split("_")[0]]
        assert type(load_config(cls, path)) is cls
    with pytest.raises(ConfigError, match="context_lenn"):
        parse_args(DTTrainConfig, ["--context_lenn", "3"])
    with pytest.raises(ConfigError, match="top_fraction"):
        parse_args(DTTrainConfig, ["--top_fraction", "0"])
    with pytest.raises(ConfigError, match="levels"):
        parse_args(DTDataConfig, ["--levels", "1.5"])
    with pytest.raises(ConfigError, match="unknown env 'nope'"):
        parse_args(DTDataConfig, ["--env", "nope"])


# --------------------------------------------------------------------------------------- CLI run


def test_cli_data_train_evaluate(tmp_path, capsys):
    data, tr, ev = tmp_path / "data", tmp_path / "train", tmp_path / "eval"
    assert cli_main(["dt", "data", "--env", "CartPole-v1", "--levels", "1.0,0.0", "--episodes_per_level", "3",
                     "--max_episode_steps", "40", "--output_dir", str(data)]) == 0
    stored = OfflineDataset.load(data)
    assert stored.meta["max_episode_steps"] == 40 and len(stored.lengths) == 6
    assert cli_main(["dt", "train", "--dataset", str(data), "--output_dir", str(tr), "--max_steps", "6",
                     "--batch_size", "8", "--context_len", "5", "--hidden_size", "16", "--log_every", "3"]) == 0
    log = [json.loads(x) for x in (tr / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [3, 6]
    spec = json.loads((tr / "model" / "dt_spec.json").read_text())
    assert spec["rtg_scale"] == pytest.approx(float(stored.returns.max()))  # stored with the model
    assert cli_main(["dt", "evaluate", "--model", str(tr / "model"), "--output_dir", str(ev), "--targets", "10,40",
                     "--episodes", "2"]) == 0
    result = json.loads((ev / "eval.json").read_text())
    assert [row["target"] for row in result["results"]] == [10.0, 40.0]
    returns = [row["returns"] for row in result["results"]]
    assert [len(r) for r in returns] == [2, 2]
    # the same seed replays the same episodes; capped at 5 steps, they agree step by step with the uncapped ones
    # up to the cap, so each CartPole return (1 per step) is the uncapped one cut at 5
    assert cli_main(["dt", "evaluate", "--model", str(tr / "model"), "--output_dir", str(tmp_path / "ev5"),
                     "--targets", "10,40", "--episodes", "2", "--max_episode_steps", "5"]) == 0
    capped = [row["returns"] for row in json.loads((tmp_path / "ev5" / "eval.json").read_text())["results"]]
    assert capped == [[min(x, 5.0) for x in r] for r in returns]
    assert cli_main(["dt", "evaluate", "--model", str(tr / "model"), "--output_dir", str(tmp_path / "ev40"),
                     "--targets", "10,40", "--episodes", "2"]) == 0
    assert [row["returns"] for row in json.loads((tmp_path / "ev40" / "eval.json").read_text())["results"]] == returns
    assert cli_main(["dt", "train", "--dataset", str(tmp_path / "missing")]) == 2
    assert "dataset.npz" in capsys.readouterr().err


def test_continuous_rollout_runs_at_several_targets():
    torch.manual_seed(0)
    model = DecisionTransformer(make_spec(False, K=3)).eval()
    returns = rollout(model, [-100.0, -10.0], episodes=2, seed=0, max_episode_steps=6, progress=False)
    assert len(returns) == 2 and all(len(r) == 2 for r in returns)
    # common random numbers: both targets start from the same states, so a return-blind policy matches exactly
    bc = DecisionTransformer(make_spec(False, condition=False, K=3)).eval()
    same = rollout(bc, [-100.0, -10.0], episodes=2, seed=0, max_episode_steps=6, progress=False)
    assert same[0] == same[1]


def test_resume_reproduces_the_uninterrupted_run(tmp_path, capsys):
    from safetensors.torch import load_file

    data = generate("pomdp/tmaze", [1.0, 0.0], 4, seed=0, progress=False)
    data.save(tmp_path / "data")
    args = ["dt", "train", "--dataset", str(tmp_path / "data"), "--output_dir", str(tmp_path / "run"),
            "--max_steps", "6", "--save_every", "3", "--batch_size", "4", "--context_len", "4",
            "--hidden_size", "16", "--warmup_steps", "2"]
    assert cli_main(args) == 0
    full = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert (tmp_path / "run" / "checkpoints" / "step-000003").is_dir()
    capsys.readouterr()
    assert cli_main(args + ["--resume", "true"]) == 0  # continues from step 3 (dropout RNG restored)
    out = capsys.readouterr().out
    assert "resuming from" in out and "step-000003 (step 3)" in out
    resumed = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert full.keys() == resumed.keys()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], atol=0, rtol=0)
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
