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
