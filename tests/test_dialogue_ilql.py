"""ILQL with a value trunk of its own and per-utterance bootstrapping: the new pure function by hand, the
transitions it gives, the trunk copy (frozen layers, save/load, acting) and a short training run."""

from __future__ import annotations

import pytest
import torch

from rlhf.losses import action_run_end

torch.set_num_threads(1)


def test_action_run_end_by_hand():
    acts = torch.tensor([[0, 1, 1, 0, 0, 1, 1, 0],
                         [1, 1, 1, 1, 0, 1, 0, 1]])
    assert action_run_end(acts).tolist() == [[0, 2, 2, 3, 4, 6, 6, 7],
                                             [3, 3, 3, 3, 4, 5, 6, 7]]
    assert action_run_end(torch.zeros(1, 3, dtype=torch.long)).tolist() == [[0, 1, 2]]


def _two_turns():
    return {"intro": "guess", "turns": [{"utterance": "is it red?", "observation": "no, blue", "reward": -0.1},
                                        {"utterance": "is it the bako?", "observation": "yes, you win",
                                         "reward": 0.9}]}


def test_utterance_bootstrap_gives_every_token_its_utterance_end_transition():
    from rlhf.dialogue.algorithms import token_transitions
    from rlhf.dialogue.data import Encoder
    from rlhf.models import build_tiny_tokenizer

    b = Encoder(build_tiny_tokenizer()).batch([_two_turns()])
    tok_tr = token_transitions(b, gamma=0.9)
    utt_tr = token_transitions(b, gamma=0.9, bootstrap="utterance")
    first, second = slice(0, 11), slice(11, 27)  # "is it red?\n" (11 tokens), "is it the bako?\n" (16)
    for k in ("row", "col", "action"):
        assert torch.equal(tok_tr[k], utt_tr[k])
    assert utt_tr["reward"][first].tolist() == pytest.approx([-0.1] * 11)
    assert utt_tr["reward"][second].tolist() == pytest.approx([0.9] * 16)
    assert utt_tr["gamma"].tolist() == pytest.approx([0.9] * 27)
    # inside the first utterance every token bootstraps from the state before "is it the bako?"
    assert utt_tr["next_col"][first].tolist() == [tok_tr["col"][11].item()] * 11
    assert utt_tr["done"][first].tolist() == [0.0] * 11 and utt_tr["done"][second].tolist() == [1.0] * 16
    # the last token of each utterance has the same transition either way
    for k in ("reward", "gamma", "next_col", "done"):
        assert utt_tr[k][[10, 26]].tolist() == tok_tr[k][[10, 26]].tolist()
    with pytest.raises(ValueError, match="bootstrap"):
        token_transitions(b, gamma=0.9, bootstrap="turn")


def test_value_trunk_copies_the_lm_freezes_the_lower_layers_and_round_trips(tmp_path):
    from rlhf.dialogue.data import Encoder
    from rlhf.dialogue.models import ValueHeads, build_lm, lm_features
    from rlhf.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    lm = build_lm(tok, 32, 2, seed=0).eval()
    b = Encoder(tok).batch([_two_turns()])
    heads = ValueHeads.with_trunk(lm, trunk_layers=1, width=16, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(heads.features(b.tokens, b.attention_mask),
                                   lm_features(lm, b.tokens, b.attention_mask))  # a copy of the LM's trunk
    trainable = {".".join(n.split(".")[:3 if n.startswith("trunk.layers") else 2])
                 for n, p in heads.named_parameters() if p.requires_grad}
    assert trainable == {"trunk.layers.1", "trunk.norm", "q.0", "q.2", "v.0", "v.2"}  # top layer, norm, heads
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(heads.trunk.parameters(), lm.model.parameters()))
    heads.save(tmp_path)
    back = ValueHeads.load(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(back.features(b.tokens, b.attention_mask),
                                   heads.features(b.tokens, b.attention_mask))
    assert [p.requires_grad for p in back.parameters()] == [p.requires_grad for p in heads.parameters()]
    with pytest.raises(ValueError, match="trunk_layers"):
        ValueHeads.with_trunk(lm, trunk_layers=3)


def test_acting_reads_the_trunk_kv_cached_and_beta_zero_is_bc():
    from rlhf.dialogue.data import Encoder
    from rlhf.dialogue.models import ValueHeads, build_lm, sample_utterances
    from rlhf.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    enc, lm = Encoder(tok), build_lm(tok, 32, 2, seed=0).eval()
    heads = ValueHeads.with_trunk(lm, trunk_layers=2, width=16, seed=0)
    with torch.no_grad():  # make the trunk differ from the LM so that reading the wrong one shows
        for p in heads.trunk.layers[1].parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    hists = [enc.history("guess", []), enc.history("guess", [("is it red?", "no, blue")])]
    bc = sample_utterances(lm, enc, hists, generator=torch.Generator().manual_seed(1), max_tokens=6)
    zero = sample_utterances(lm, enc, hists, heads=heads, beta=0.0, generator=torch.Generator().manual_seed(1),
                             max_tokens=6)
    assert bc == zero
    # greedy acting on Q alone (a huge beta) picks at each step the arg-max of Q on the trunk's state of the
    # prefix so far: recompute it without the cache
    out = sample_utterances(lm, enc, hists, heads=heads, beta=1e4, temperature=0.0, max_tokens=4)
    for h, text in zip(hists, out):
        ids = list(h)
        expect = []
        for _ in range(4):
            x = torch.tensor([ids])
            with torch.no_grad():
                hv = heads.features(x, torch.ones_like(x))[0, -1]
            t = int(heads.q_values(hv).argmax())
            if t == enc.newline:
                break
            expect.append(t)
            ids.append(t)
        assert text == tok.decode(expect)


def test_ilql_with_a_trunk_trains_only_the_top_layers_and_learns_the_values():
    from rlhf.dialogue.algorithms import train_ilql
    from rlhf.dialogue.data import Encoder
    from rlhf.dialogue.models import build_lm
    from rlhf.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    lm = build_lm(tok, 32, 2, seed=0).eval()
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    rec = {"intro": "guess", "turns": [{"utterance": "ab", "observation": "c", "reward": -0.5},
                                       {"utterance": "d", "observation": "e", "reward": 2.0}]}
    heads, stats = train_ilql([rec], tok, lm, steps=300, batch_size=1, lr=3e-3, seed=0, gamma=0.5, tau=0.5,
                              cql_weight=0.0, polyak=0.05, width=32, trunk_layers=1, trunk_batch_size=1,
                              bootstrap="utterance")
    assert all(torch.equal(v, lm.state_dict()[k]) for k, v in before.items())  # the acting LM is untouched
    new = heads.trunk.state_dict()
    assert torch.equal(new["layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.weight"])
    assert not torch.equal(new["layers.1.self_attn.q_proj.weight"], before["model.layers.1.self_attn.q_proj.weight"])
    b = Encoder(tok).batch([rec])
    with torch.no_grad():
        h = heads.features(b.tokens, b.attention_mask)[0]
    first = int(b.action_mask[0].nonzero()[0])  # "a": Q = r1 + gamma r2 = -0.5 + 0.5 * 2
    assert heads.q_values(h[first - 1])[b.tokens[0, first]].item() == pytest.approx(0.5, abs=0.05)
    second = int(b.action_mask[0].nonzero()[3])  # "d" (after "ab\n"): Q = r2
    assert heads.q_values(h[second - 1])[b.tokens[0, second]].item() == pytest.approx(2.0, abs=0.05)
    assert stats.steps == 300 and stats.parameters < sum(p.numel() for p in heads.parameters())


def test_utterance_lambda_targets_by_hand_and_lambda_zero_is_the_one_step_target():
    from rlhf.dialogue.algorithms import token_transitions, utterance_lambda_targets, utterance_start_cols
    from rlhf.dialogue.data import Encoder
    from rlhf.models import build_tiny_tokenizer

    rec = _two_turns()
    b = Encoder(build_tiny_tokenizer()).batch([rec, {**rec, "turns": rec["turns"][:1]}])
    cols = utterance_start_cols(b)
    tr = token_transitions(b, gamma=0.9, bootstrap="utterance")
    # the state of each utterance: the end-of-line before it ("guess\n": position 6; "no, blue\n": 26)
    assert cols.tolist() == [[6, 26], [6, 0]]
    assert tr["col"][[0, 11]].tolist() == [6, 26] and tr["utt"].tolist() == [0] * 11 + [1] * 16 + [0] * 11
    v = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    # G_1 = 0.9 (the last utterance), G_0 = -0.1 + 0.9 ((1 - 0.5) * 2.0 + 0.5 * 0.9); a one-utterance episode: -0.1
    torch.testing.assert_close(utterance_lambda_targets(b, v, 0.9, 0.5), torch.tensor([[1.205, 0.9], [-0.1, 0.0]]))
    torch.testing.assert_close(utterance_lambda_targets(b, v, 0.9, 1.0), torch.tensor([[-0.1 + 0.81, 0.9], [-0.1, 0]]))
    # lam 0: each token's target r_u + gamma V(state after the reply), V read where next_col points
    y0 = utterance_lambda_targets(b, v, 0.9, 0.0)[tr["row"], tr["utt"]]
    v_at = torch.zeros(2, b.tokens.shape[1])
    v_at[0, 6], v_at[0, 26], v_at[1, 6] = 1.0, 2.0, 3.0
    one_step = tr["reward"] + tr["gamma"] * (1 - tr["done"]) * v_at[tr["row"], tr["next_col"]]
    torch.testing.assert_close(y0, one_step)


def test_train_config_checks_the_new_ilql_keys():
    from rlhf.config import ConfigError
    from rlhf.dialogue.stage import DialogueTrainConfig

    DialogueTrainConfig(value_bootstrap="utterance", value_lambda=0.5, value_trunk_layers=2).validate()
    for bad, word in (({"value_lambda": 0.5}, "value_lambda"), ({"value_bootstrap": "utterance", "value_lambda": 2.0},
                      "value_lambda"), ({"value_trunk_layers": 3}, "value_trunk_layers")):
        with pytest.raises(ConfigError, match=word):
            DialogueTrainConfig(**bad).validate()


# ------------------------------------------------------------------- ILQL bootstraps, MC-IQL does not


def _ab_d():
    """Two utterances: "ab" (reward -0.5; the reply "c"), then "d" (reward 2.0; the reply "e", the end).
    Positions: "<|im_start|>guess\\n" 0-6, "ab\\n" 7-9, "c\\n" 10-11, "d\\n" 12-13, "e\\n" 14-15; the agent's
    tokens a, b, \\n, d, \\n have their states at 6, 7, 8, 11, 12."""
    return {"intro": "guess", "turns": [{"utterance": "ab", "observation": "c", "reward": -0.5},
                                        {"utterance": "d", "observation": "e", "reward": 2.0}]}


def _v_table(b, shift: float = 0.0):
    """V at every position of b: 0.1 * position (+ shift), as v_at(rows, cols) reads it."""
    v = 0.1 * torch.arange(b.tokens.shape[1], dtype=torch.float32).expand(b.tokens.shape[0], -1) + shift
    return lambda rows, cols: v[rows, cols]


def test_q_targets_by_hand_ilql_bootstraps_through_v_and_mc_iql_is_the_return_to_go():
    from rlhf.dialogue.algorithms import token_q_targets, token_transitions
    from rlhf.dialogue.data import Encoder
    from rlhf.models import build_tiny_tokenizer

    b = Encoder(build_tiny_tokenizer()).batch([_ab_d()])
    tok_tr, utt_tr = token_transitions(b, 0.9, "token"), token_transitions(b, 0.9, "utterance")
    assert tok_tr["col"].tolist() == [6, 7, 8, 11, 12]
    v = _v_table(b)
    # ILQL per token: r + gamma_t V(s'), s' the next agent token's state (gamma 1 inside an utterance; the
    # first "\n" bootstraps from V(11), the state before "d", across the reply "c"); 0 after the last token
    torch.testing.assert_close(token_q_targets(b, tok_tr, v, 0.9, 0.0),
                               torch.tensor([0.7, 0.8, -0.5 + 0.9 * 1.1, 1.2, 2.0]))
    # ILQL per utterance: every token of "ab\n" r_1 + gamma V(s_2) = -0.5 + 0.9 V(11); of "d\n" r_2 (the end)
    torch.testing.assert_close(token_q_targets(b, utt_tr, v, 0.9, 0.0),
                               torch.tensor([0.49, 0.49, 0.49, 2.0, 2.0]))
    # lambda 0.5: G_1 = r_1 + gamma (0.5 V(11) + 0.5 G_2) = -0.5 + 0.9 (0.55 + 1.0)
    torch.testing.assert_close(token_q_targets(b, utt_tr, v, 0.9, 0.5),
                               torch.tensor([0.895, 0.895, 0.895, 2.0, 2.0]))
    # MC-IQL: the return-to-go, -0.5 + 0.9 * 2.0 for "ab\n", 2.0 for "d\n"
    torch.testing.assert_close(token_q_targets(b, utt_tr, v, 0.9, 1.0), torch.tensor([1.3, 1.3, 1.3, 2.0, 2.0]))
    # bootstrapping: V(s') + 1 moves every ILQL target that is not an episode's end by gamma_t, MC-IQL's not at all
    moved = _v_table(b, shift=1.0)
    for tr, lam, by in ((tok_tr, 0.0, [1.0, 1.0, 0.9, 1.0, 0.0]), (utt_tr, 0.0, [0.9, 0.9, 0.9, 0.0, 0.0]),
                        (utt_tr, 0.5, [0.45, 0.45, 0.45, 0.0, 0.0]), (utt_tr, 1.0, [0.0] * 5)):
        torch.testing.assert_close(token_q_targets(b, tr, moved, 0.9, lam) - token_q_targets(b, tr, v, 0.9, lam),
                                   torch.tensor(by))


def test_train_ilql_bootstraps_and_train_mc_iql_does_not(monkeypatch):
    """The training loops themselves: with their defaults (and the benchmark's ILQL setting), the targets
    train_ilql regresses Q onto move when V moves; train_mc_iql's do not, and are the returns-to-go."""
    from rlhf.dialogue import algorithms
    from rlhf.dialogue.models import build_lm
    from rlhf.models import build_tiny_tokenizer

    seen = []
    real = algorithms.token_q_targets

    def spy(b, tr, v_at, gamma, lam, start_cols=None):
        y = real(b, tr, v_at, gamma, lam, start_cols)
        y_moved = real(b, tr, lambda r, c: v_at(r, c) + 1.0, gamma, lam, start_cols)
        seen.append((lam, y, y_moved))
        return y

    monkeypatch.setattr(algorithms, "token_q_targets", spy)
    tok = build_tiny_tokenizer()
    lm = build_lm(tok, 32, 1, seed=0).eval()
    kw = dict(steps=2, batch_size=5, lr=1e-3, seed=0, gamma=0.9, tau=0.7, cql_weight=0.01, polyak=0.05, width=16)
    runs = {"ilql (token, lambda 0)": lambda: algorithms.train_ilql([_ab_d()], tok, lm, **kw),
            "ilql (utterance, lambda 0)": lambda: algorithms.train_ilql([_ab_d()], tok, lm, bootstrap="utterance",
                                                                        **kw),
            "ilql with a trunk": lambda: algorithms.train_ilql([_ab_d()], tok, lm, trunk_layers=1,
                                                               trunk_batch_size=1, **kw),
            "mc_iql": lambda: algorithms.train_mc_iql([_ab_d()], tok, lm, **kw),
            "mc_iql with a trunk": lambda: algorithms.train_mc_iql([_ab_d()], tok, lm, trunk_layers=1,
                                                                   trunk_batch_size=1, **kw)}
    for name, run in runs.items():
        seen.clear()
        _, stats = run()
        assert len(seen) == 2, name
        for lam, y, y_moved in seen:
            if name.startswith("ilql"):
                assert lam < 1 and (y_moved - y).abs().max() > 0.5, name
            else:
                assert lam == 1.0 and torch.equal(y, y_moved), name
                assert sorted(set(y.tolist())) == pytest.approx([1.3, 2.0]), name
        assert {k.split("/")[0] for k in stats.log[-1] if k != "step"} == {name.split()[0]}  # namespaced logs


def test_lambda_one_is_mc_iql_not_ilql():
    """ILQL refuses Monte-Carlo targets everywhere it can be asked for them, naming the method that has them;
    its shipped defaults bootstrap."""
    import importlib.util
    from pathlib import Path

    from rlhf.config import ConfigError, load_config
    from rlhf.dialogue.algorithms import train_ilql
    from rlhf.dialogue.stage import DialogueTrainConfig

    root = Path(__file__).resolve().parents[1]
    with pytest.raises(ValueError, match="train_mc_iql"):
        train_ilql([_ab_d()], None, None, steps=1, batch_size=1, lr=1e-3, seed=0, gamma=0.9, tau=0.7,
                   cql_weight=0.0, polyak=0.05, bootstrap="utterance", lam=1.0)
    with pytest.raises(ConfigError, match="mc_iql"):
        DialogueTrainConfig(algorithm="ilql", value_bootstrap="utterance", value_lambda=1.0).validate()
    DialogueTrainConfig(algorithm="mc_iql", value_bootstrap="utterance", value_lambda=1.0).validate()  # ignored
    shipped = load_config(DialogueTrainConfig, root / "configs" / "dialogue" / "train.yaml")
    assert shipped.algorithm == "ilql" and shipped.value_lambda < 1 and DialogueTrainConfig().value_lambda < 1
    spec = importlib.util.spec_from_file_location("dialogue_results", root / "benchmarks" / "dialogue_results.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args([])
    assert args.ilql_lambda < 1 and {"ilql", "mc_iql"} <= set(args.agents)
    for argv in (["--ilql_lambda", "1"], ["--env_overrides", "maze:ilql_lambda=1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
    with pytest.raises(SystemExit):
        bench.parse_args(["--ilql_lambda", "0.5", "--ilql_bootstrap", "token"])
    assert bench.parse_args(["--ilql_lambda", "0.5"]).ilql_lambda == 0.5
