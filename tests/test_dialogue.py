"""Dialogue RL: the pure math by hand, the environments' rules, the data, the agents, a learning test on a toy
game and a CLI smoke run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlhf.losses import (
    bellman_targets,
    cql_term,
    discounted_returns,
    expectile_loss,
    next_action_index,
    ilql_acting_logits,
    next_state_values,
    perturbed_logits,
    place_utterance_rewards,
    token_discounts,
    top_p_support,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------- math


def test_expectile_loss_by_hand_and_its_minimiser_is_the_expectile():
    diff = torch.tensor([2.0, -2.0, 0.0, 0.5])
    torch.testing.assert_close(expectile_loss(diff, 0.7), torch.tensor([2.8, 1.2, 0.0, 0.175]))
    # targets {0, 1}: the tau-expectile c solves tau (1 - c) = (1 - tau) c, so c = tau
    c = torch.tensor(0.3, requires_grad=True)
    opt = torch.optim.SGD([c], lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        expectile_loss(torch.tensor([0.0, 1.0]) - c, 0.8).sum().backward()
        opt.step()
    assert c.item() == pytest.approx(0.8, abs=1e-4)
    assert expectile_loss(torch.tensor([1.0, -1.0]), 0.5).tolist() == [0.5, 0.5]  # tau 0.5: half the MSE


def test_cql_term_by_hand_with_and_without_padded_candidates():
    q_all = torch.log(torch.tensor([[1.0, 2.0, 3.0]])).requires_grad_(True)
    q_taken = q_all[:, 1]
    out = cql_term(q_all, q_taken)
    assert out.item() == pytest.approx(math.log(6) - math.log(2))
    (grad,) = torch.autograd.grad(out.sum(), q_all)
    torch.testing.assert_close(grad, torch.tensor([[1 / 6, 2 / 6 - 1, 3 / 6]]))  # softmax - one-hot
    masked = cql_term(q_all.detach(), q_all.detach()[:, 1], valid=torch.tensor([[True, True, False]]))
    assert masked.item() == pytest.approx(math.log(3 / 2))


def test_next_state_values_skip_environment_tokens_and_end_at_zero():
    # positions:      0  1  2  3  4  5  6  7(pad)
    acts = torch.tensor([[0, 1, 1, 0, 0, 1, 1, 0]])
    v = torch.tensor([[10.0, 11, 12, 13, 14, 15, 16, 17]])
    assert next_action_index(acts).tolist() == [[1, 2, 5, 5, 5, 6, 8, 8]]
    v_next, done = next_state_values(v, acts)
    assert v_next[0, [1, 2, 5, 6]].tolist() == [12.0, 15.0, 16.0, 0.0]  # the last action has no next state
    assert done[0, [1, 2, 5, 6]].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_bellman_targets_at_episode_ends():
    r = torch.tensor([[0.0, 1.0, 0.0, 5.0]])
    v_next = torch.tensor([[12.0, 15.0, 16.0, 99.0]])  # 99: must be ignored where done
    done = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    gammas = torch.tensor([[1.0, 0.9, 1.0, 0.9]])
    torch.testing.assert_close(bellman_targets(r, v_next, done, gammas), torch.tensor([[12.0, 14.5, 16.0, 5.0]]))
    torch.testing.assert_close(bellman_targets(r, v_next, done, 0.5), torch.tensor([[6.0, 8.5, 8.0, 5.0]]))


def test_per_token_and_per_utterance_reward_placement_agree():
    # Two utterances of 3 and 2 tokens with environment tokens between: [u u u e e u u e]
    utt_rewards, utt_last, utt_mask = torch.tensor([[-0.1, 0.9]]), torch.tensor([[2, 6]]), torch.tensor([[1, 1]])
    r_tok = place_utterance_rewards(utt_rewards, utt_last, utt_mask, 8)
    torch.testing.assert_close(r_tok, torch.tensor([[0, 0, -0.1, 0, 0, 0, 0.9, 0]]))
    g_tok = token_discounts(utt_last, utt_mask, 8, 0.9)
    torch.testing.assert_close(g_tok, torch.tensor([[1, 1, 0.9, 1, 1, 1, 0.9, 1]]))
    # Token-level values of the logged actions, by the Bellman recursion over action tokens only
    acts = torch.tensor([[1, 1, 1, 0, 0, 1, 1, 0]])
    idx = next_action_index(acts)[0].tolist()
    values = [0.0] * 9
    for t in reversed(range(8)):
        if acts[0, t]:
            values[t] = r_tok[0, t].item() + g_tok[0, t].item() * (values[idx[t]] if idx[t] < 8 else 0.0)
    per_utterance = discounted_returns(utt_rewards, utt_mask, 0.9)  # [B, U]
    assert values[0] == pytest.approx(-0.1 + 0.9 * 0.9) == pytest.approx(per_utterance[0, 0].item())
    assert values[5] == pytest.approx(0.9) == pytest.approx(per_utterance[0, 1].item())
    # A padded utterance slot (mask 0) places nothing
    assert place_utterance_rewards(torch.tensor([[1.0, 7.0]]), torch.tensor([[1, 3]]), torch.tensor([[1, 0]]),
                                   4).tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_discounted_returns_and_perturbed_logits_by_hand():
    torch.testing.assert_close(discounted_returns(torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3), 0.5),
                               torch.tensor([[2.75, 3.5, 3.0]]))
    logits = torch.tensor([[0.0, math.log(3.0)]])  # pi_bc = (1/4, 3/4)
    q, v = torch.tensor([[1.0, 0.0]]), torch.tensor([0.5])
    torch.testing.assert_close(perturbed_logits(logits, q, v, 0.0), torch.log(torch.tensor([[0.25, 0.75]])))
    out = perturbed_logits(logits, q, v, 2.0)
    torch.testing.assert_close(out, torch.tensor([[math.log(0.25) + 1.0, math.log(0.75) - 1.0]]))


def test_top_p_support_by_hand():
    logp = torch.log(torch.tensor([[0.1, 0.5, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25]]))
    # row 0 ranked 0.5, 0.3, then the two 0.1s (index order); mass above each: 0, 0.5, 0.8, 0.9
    assert top_p_support(logp[:1], 0.4).tolist() == [[False, True, False, False]]  # the top token always
    assert top_p_support(logp[:1], 0.6).tolist() == [[False, True, True, False]]
    assert top_p_support(logp[:1], 0.85).tolist() == [[True, True, True, False]]  # tie: the lower index
    assert top_p_support(logp[:1], 0.95).tolist() == [[True, True, True, True]]
    assert top_p_support(logp[1:], 0.6).tolist() == [[True, True, True, False]]  # 0.5 < 0.6 <= 0.75
    assert top_p_support(logp, 1.0).all()


def test_ilql_acting_logits_clip_and_support_by_hand():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    q, v = torch.tensor([[1.0, 3.0, 9.0]]), torch.tensor([1.0])  # A = (0, 2, 8)
    logp = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    torch.testing.assert_close(ilql_acting_logits(logits, q, v, 0.5), perturbed_logits(logits, q, v, 0.5))
    torch.testing.assert_close(ilql_acting_logits(logits, q, v, 0.5, adv_clip=1.0),
                               logp + 0.5 * torch.tensor([[0.0, 1.0, 1.0]]))
    out = ilql_acting_logits(logits, q, v, 0.5, top_p=0.8)  # nucleus {0.6, 0.3}: the 0.1 token is dropped
    torch.testing.assert_close(out[:, :2], logp[:, :2] + torch.tensor([[0.0, 1.0]]))
    assert out[0, 2].item() == float("-inf")  # although its advantage is the largest
    # a negative advantage is clipped from below too; the probabilities follow by hand
    probs = torch.softmax(ilql_acting_logits(logits, -q, -v, 1.0, top_p=0.8, adv_clip=1.5), dim=-1)
    w = torch.tensor([0.6, 0.3 * math.exp(-1.5), 0.0])  # A = (0, -2 -> -1.5, masked)
    torch.testing.assert_close(probs, (w / w.sum())[None])



# ------------------------------------------------------------------------------------- environments


def test_guessing_game_rules_rewards_and_horizon():
    from rlhf.dialogue.envs import GuessingGame, make_catalogue

    cat = make_catalogue(0)
    assert len(cat) == 8 and len({it["name"] for it in cat}) == 8 and cat == make_catalogue(0)
    env = GuessingGame()
    intro, info = env.reset(seed=3)
    item = next(it for it in env.catalogue if it["name"] == info["item"])
    other = "blue" if item["colour"] == "red" else "red"
    assert env.step(f"is it {item['colour']}?")[:3] == (f"yes, {item['colour']}", pytest.approx(-0.1), False)
    assert env.step(f"is it {other}?")[:2] == (f"no, {item['colour']}", pytest.approx(-0.1))
    assert env.step("is it green?")[:2] == ("i do not know", pytest.approx(-0.3))
    obs, r, term, trunc, info = env.step("what is it")
    assert (obs, term, trunc, info["kind"]) == ("i do not understand", False, True, "malformed")  # horizon 4
    assert r == pytest.approx(-0.3)
    with pytest.raises(RuntimeError):
        env.step("is it red?")
    env.reset(seed=3)
    wrong = next(n for n in env.names if n != item["name"])
    assert env.step(f"is it the {wrong}?")[:3] == ("no", pytest.approx(-0.1), False)
    obs, r, term, trunc, info = env.step(f"is it the {item['name']}?")
    assert (obs, term, info["success"]) == ("yes, you win", True, True) and r == pytest.approx(0.9)
    assert env.consistent([(f"is it {other}?", f"no, {item['colour']}"), (f"is it the {wrong}?", "no")]) \
        == [it for it in env.catalogue if it["colour"] == item["colour"] and it["name"] != wrong]


def test_exact_optimal_value_of_the_guessing_game():
    from rlhf.dialogue.data import _guess_state_value
    from rlhf.dialogue.envs import GuessingGame

    env = GuessingGame()
    names = frozenset(env.names)
    # ask, ask, then guess between two: win at turn 3 (0.7) or turn 4 (0.6), each half the time
    assert _guess_state_value(0.1, 1.0, 0, names, 4, frozenset()) == pytest.approx(0.65)
    # one turn left, 8 items: guess, right 1/8 of the time
    assert _guess_state_value(0.1, 1.0, 0, names, 1, frozenset()) == pytest.approx(1 / 8 - 0.1)


def test_maze_moves_walls_goal_and_observability():
    from rlhf.dialogue.envs import TextMaze, normalised_score

    env = TextMaze()
    obs, _ = env.reset(options={"start": (5, 3)})
    assert obs == "goal 1 5\nat 5 3" and env.distance[(5, 3)] == 6
    assert env.step("move left")[:2] == ("at 5 3", -2.0)  # a wall: stays, larger cost
    assert env.step("move up")[:2] == ("at 4 3", -1.0)
    assert env.step("jump")[1] == -2.0
    po = TextMaze(partial=True)
    obs, _ = po.reset(options={"start": (2, 5)})
    assert obs == "find the goal\nwalls right"  # a junction: open up, down and left
    obs, r, term, _, info = po.step("move up")
    assert (obs, r, term, info["success"]) == ("walls up left right", 0.0, True, True)
    assert env.optimal_return((5, 3)) == -5.0 and env.optimal_return((2, 5)) == 0.0  # one move, onto the goal
    assert normalised_score(-3.0, -13.0, -3.0) == 100.0 and normalised_score(-13.0, -13.0, -3.0) == 0.0
    assert normalised_score(-8.0, -13.0, -3.0) == 50.0


# ----------------------------------------------------------------------------------------------- data


def test_data_is_reproducible_and_round_trips(tmp_path):
    from rlhf.dialogue.data import generate, load_jsonl, save_jsonl, top_fraction, transitions

    a, b, c = generate("guess", 20, 1), generate("guess", 20, 1), generate("guess", 20, 2)
    assert a == b and a != c
    assert [r["policy"] for r in a] == ["random"] * 20 + ["greedy"] * 20 + ["optimal"] * 20
    for r in a:
        assert r["return"] == pytest.approx(sum(t["reward"] for t in r["turns"]))
    save_jsonl(a, tmp_path / "t.jsonl")
    assert load_jsonl(tmp_path / "t.jsonl") == json.loads(json.dumps(a))
    top = top_fraction(a, 0.25)
    assert len(top) == 15 and min(r["return"] for r in top) >= max(r["return"] for r in a if r not in top)
    tr = transitions(a[:1], 0.5)
    rewards = [t["reward"] for t in a[0]["turns"]]
    assert tr[-1].done and not tr[0].done and tr[0].return_to_go == pytest.approx(
        sum(r * 0.5**i for i, r in enumerate(rewards)))
    (tmp_path / "bad.jsonl").write_text('{"intro": "x", "turns": []}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "torn.jsonl").write_text(json.dumps(a[0]) + "\n\n" + '{"intro": "x", "turns": [' + "\n")
    with pytest.raises(ValueError, match="torn.jsonl:3: .*malformed JSON"):
        load_jsonl(tmp_path / "torn.jsonl")


def test_token_batch_marks_agent_tokens_and_utterance_ends():
    from rlhf.dialogue.data import Encoder
    from rlhf.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    enc = Encoder(tok)
    rec = {"intro": "guess", "turns": [{"utterance": "is it red?", "observation": "no, blue", "reward": -0.1},
                                       {"utterance": "is it the bako?", "observation": "no", "reward": -0.1}]}
    b = enc.batch([rec, {**rec, "turns": rec["turns"][:1]}])
    text = tok.decode(b.tokens[0][b.action_mask[0].bool()].tolist())
    assert text == "is it red?\nis it the bako?\n"
    assert b.tokens[0, b.utt_last[0]].tolist() == [enc.newline, enc.newline]
    assert b.utt_mask.tolist() == [[1, 1], [1, 0]] and b.attention_mask[1].sum() < b.attention_mask[0].sum()
    assert tok.decode(b.tokens[0, :b.utt_last[0, 0] + 1].tolist()) == "<|im_start|>guess\nis it red?\n"
    # ILQL's flat token transitions: one per agent token of the first trajectory (11 + 16 tokens)
    from rlhf.dialogue.algorithms import token_transitions

    tr = token_transitions(b.select(torch.tensor([0])), gamma=0.9)
    assert len(tr["action"]) == 27 and tok.decode(tr["action"].tolist()) == text
    ends = [10, 26]  # each utterance's end-of-line: its reward and the discount to the next utterance
    assert tr["reward"].nonzero().flatten().tolist() == ends
    assert tr["reward"][ends].tolist() == pytest.approx([-0.1] * 2)
    assert tr["gamma"][ends].tolist() == pytest.approx([0.9, 0.9])
    assert tr["gamma"].sum().item() == pytest.approx(25 + 1.8)
    assert tr["done"].nonzero().flatten().tolist() == [26]
    # the state after the first utterance's end-of-line is the one before "is it the bako?": the answer
    # ("no, blue\n") lies in between
    assert tr["next_col"][10].item() == tr["col"][11].item() == tr["col"][10].item() + 1 + len("no, blue\n")
    assert (tr["next_col"][:10] == tr["col"][1:11]).all()


# --------------------------------------------------------------------------------------------- agents


def test_ilql_sampling_with_beta_zero_is_bc_sampling_and_beta_moves_it():
    from rlhf.dialogue.data import Encoder
    from rlhf.dialogue.models import ValueHeads, build_lm, sample_utterances
    from rlhf.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    enc, lm = Encoder(tok), build_lm(tok, 32, 1, seed=0).eval()
    heads = ValueHeads("token", 32, len(tok), 16, seed=0)
    hists = [enc.history("guess", [])] * 6
    bc = sample_utterances(lm, enc, hists, generator=torch.Generator().manual_seed(1), max_tokens=6)
    zero = sample_utterances(lm, enc, hists, heads=heads, beta=0.0, generator=torch.Generator().manual_seed(1),
                             max_tokens=6)
    assert bc == zero
    # A large beta with Q favouring one byte makes every sample that byte
    with torch.no_grad():
        heads.q[-1].weight.zero_()
        heads.q[-1].bias.zero_()
        heads.q[-1].bias[enc.encode("z")[0]] = 100.0
    moved = sample_utterances(lm, enc, hists, heads=heads, beta=1.0, generator=torch.Generator().manual_seed(1),
                              max_tokens=3)
    assert moved == ["zzz"] * 6


def test_ilql_sampling_within_a_tiny_nucleus_is_greedy_bc_whatever_q_says():
    from rlhf.dialogue.data import Encoder
    from rlhf.dialogue.models import ValueHeads, build_lm, sample_utterances
    from rlhf.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    enc, lm = Encoder(tok), build_lm(tok, 32, 1, seed=0).eval()
    heads = ValueHeads("token", 32, len(tok), 16, seed=0)
    with torch.no_grad():  # Q strongly favours one byte
        heads.q[-1].bias[enc.encode("z")[0]] = 100.0
    hists = [enc.history("guess", [])] * 4
    greedy = sample_utterances(lm, enc, hists, temperature=0.0, max_tokens=5)
    tiny = sample_utterances(lm, enc, hists, heads=heads, beta=1.0, top_p=1e-6, max_tokens=5,
                             generator=torch.Generator().manual_seed(1))
    assert tiny == greedy and "z" not in greedy[0]
    free = sample_utterances(lm, enc, hists, heads=heads, beta=1.0, max_tokens=5,
                             generator=torch.Generator().manual_seed(1))
    assert free == ["zzzzz"] * 4


def test_utterance_features_are_the_end_of_line_state_and_the_log_likelihood():
    from rlhf.dialogue.data import Encoder
    from rlhf.dialogue.models import build_lm, utterance_features
    from rlhf.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    enc, lm = Encoder(tok), build_lm(tok, 32, 1, seed=0).eval()
    hists = [enc.history("guess", []), enc.history("guess", [("is it red?", "no, blue")])]
    utts = ["is it big?", "ab"]
    x = utterance_features(lm, enc, hists, utts, batch_size=1)  # one row at a time: no padding
    assert x.shape == (2, 34)
    torch.testing.assert_close(utterance_features(lm, enc, hists, utts), x)  # padded together: the same
    for i, (h, u) in enumerate(zip(hists, utts)):
        ids = torch.tensor([h + enc.encode(u + "\n")])
        with torch.no_grad():
            out = lm(input_ids=ids, output_hidden_states=True)
        logp = torch.log_softmax(out.logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        said = logp[len(h) - 1:]  # the utterance's tokens and its end-of-line
        assert len(said) == len(u) + 1
        torch.testing.assert_close(x[i, :32], out.hidden_states[-1][0, -1])
        torch.testing.assert_close(x[i, 32:], torch.stack([said.sum(), said.min()]))


def test_value_heads_learn_bellman_values_on_a_fixed_episode():
    """ILQL heads on frozen features of a two-utterance episode: Q at the first agent token approaches
    r1 + gamma * r2 (the per-token chain of an utterance-level target)."""
    from rlhf.dialogue.algorithms import train_ilql
    from rlhf.dialogue.models import build_lm
    from rlhf.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    lm = build_lm(tok, 32, 1, seed=0).eval()
    rec = {"intro": "guess", "turns": [{"utterance": "ab", "observation": "c", "reward": -0.5},
                                       {"utterance": "d", "observation": "e", "reward": 2.0}]}
    heads, stats = train_ilql([rec], tok, lm, steps=600, batch_size=1, lr=3e-3, seed=0, gamma=0.5, tau=0.5,
                              cql_weight=0.0, polyak=0.05, width=32)
    from rlhf.dialogue.data import Encoder
    from rlhf.dialogue.models import lm_features

    b = Encoder(tok).batch([rec])
    h = lm_features(lm, b.tokens, b.attention_mask)[0]
    first = int(b.action_mask[0].nonzero()[0])  # the token "a"; its state is the position before it
    q = heads.q_values(h[first - 1])[b.tokens[0, first]].item()
    assert q == pytest.approx(-0.5 + 0.5 * 2.0, abs=0.05)
    assert stats.steps == 600 and stats.parameters > 0


def two_step_records(copies: int = 8) -> list[dict]:
    """A two-turn toy game, logged by a uniformly random player: say a or b, then c or d; only a-then-c wins
    (reward 1 on the second turn, 0 otherwise), so the first turn's credit reaches it only through V(s')."""
    recs = []
    for _ in range(copies):
        for first in "ab":
            for second in "cd":
                win = first == "a" and second == "c"
                recs.append({"intro": "go", "turns": [
                    {"utterance": first, "observation": "x", "reward": 0.0},
                    {"utterance": second, "observation": "win" if win else "lose", "reward": float(win)}]})
    return recs


def two_step_win_rate(agent, episodes: int = 200, seed: int = 1) -> float:
    gen = torch.Generator().manual_seed(seed)
    enc = agent.encoder
    first = agent.act([enc.history("go", [])] * episodes, gen)
    second = agent.act([enc.history("go", [(u, "x")]) for u in first], gen)
    return sum(a == "a" and b == "c" for a, b in zip(first, second)) / episodes


def test_offline_agents_beat_bc_on_a_two_step_toy_game():
    """The learning test of the dialogue module: on random play's data, BC wins about a quarter of the games
    (it imitates the mixture); ILQL (bootstrapping through V(s'), the shipped defaults' CQL weight, expectile
    and utterance-level bootstrap) and CHAI (k candidates from BC, the best by Q) win nearly every one. Fails if
    the heads stop learning, the first turn's credit stops flowing through V, or acting stops reading Q."""
    from rlhf.dialogue.agents import Agent
    from rlhf.dialogue.algorithms import train_bc, train_ilql, train_utterance_q
    from rlhf.dialogue.data import Encoder
    from rlhf.dialogue.models import lm_features
    from rlhf.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    enc, recs = Encoder(tok), two_step_records()
    lm, _ = train_bc(recs, tok, hidden=32, layers=1, steps=300, batch_size=16, lr=3e-3, seed=0)
    bc = two_step_win_rate(Agent("bc", lm, enc))
    assert 0.1 <= bc <= 0.4  # 0.25 in expectation

    heads, _ = train_ilql(recs, tok, lm, steps=600, batch_size=64, lr=3e-3, seed=0, gamma=0.99, tau=0.7,
                          cql_weight=0.1, polyak=0.05, width=32, bootstrap="utterance")
    # the first turn earns nothing itself: a's value over b's is V(s') bootstrapped back
    ids = torch.tensor([enc.history("go", [])])
    q = heads.q_values(lm_features(lm, ids, torch.ones_like(ids))[0, -1])
    assert q[enc.encode("a")[0]] - q[enc.encode("b")[0]] > 0.3
    ilql = two_step_win_rate(Agent("ilql", lm, enc, heads=heads))
    assert ilql >= 0.9

    q_heads, _ = train_utterance_q(recs, tok, lm, mode="chai", steps=600, batch_size=32, lr=3e-3, seed=0,
                                   gamma=0.99, num_candidates=4, width=32)
    chai = two_step_win_rate(Agent("chai", lm, enc, heads=q_heads, k=4))
    # with Q ranking right, each turn's 4 candidates hold the winning word with probability 1 - 1/2^4: ~0.88
    assert chai >= bc + 0.4


# ------------------------------------------------------------------------------------------------ CLI


def test_config_files_parse():
    from rlhf.config import load_config
    from rlhf.dialogue.stage import DialogueDataConfig, DialogueEvalConfig, DialogueTrainConfig

    for name, cls in (("data", DialogueDataConfig), ("data_maze", DialogueDataConfig),
                      ("train", DialogueTrainConfig), ("evaluate", DialogueEvalConfig)):
        load_config(cls, Path(__file__).parents[1] / "configs" / "dialogue" / f"{name}.yaml")


def test_cli_data_train_evaluate_smoke(tmp_path, capsys):
    from rlhf.cli import main

    d = tmp_path / "data"
    assert main(["dialogue", "data", "--output_dir", str(d), "--episodes_per_policy", "4"]) == 0
    data = str(d / "trajectories.jsonl")
    assert len(Path(data).read_text().splitlines()) == 12
    small = ["--hidden", "32", "--layers", "1", "--bc_steps", "3", "--bc_batch_size", "4", "--value_steps", "3",
             "--value_batch_size", "4", "--head_width", "16", "--data", data]
    assert main(["dialogue", "train", "--algorithm", "bc", "--output_dir", str(tmp_path / "bc")] + small) == 0
    for algo in ("ilql", "mc_iql", "chai"):
        assert main(["dialogue", "train", "--algorithm", algo, "--lm", str(tmp_path / "bc"),
                     "--output_dir", str(tmp_path / algo), "--num_candidates", "2"] + small) == 0
    metrics = json.loads((tmp_path / "chai" / "metrics.json").read_text())
    assert metrics["value/steps"] == 3 and metrics["value/parameters"] > 0
    # one episode (fewer than the three transcripts kept) evaluates too
    assert main(["dialogue", "evaluate", "--run", str(tmp_path / "mc_iql"), "--episodes", "1", "--top_p", "0.8",
                 "--output_dir", str(tmp_path / "ev_mc_iql")]) == 0
    ev = json.loads((tmp_path / "ev_mc_iql" / "eval.json").read_text())
    assert ev["algorithm"] == "mc_iql" and ev["episodes"] == 1 and len(ev["transcripts"]) == 1
    # the Monte-Carlo setting under ILQL's name is refused, naming the method it is
    assert main(["dialogue", "train", "--algorithm", "ilql", "--value_bootstrap", "utterance", "--value_lambda", "1",
                 "--output_dir", str(tmp_path / "ilql_mc")] + small) == 2
    assert "algorithm 'mc_iql'" in capsys.readouterr().err
    assert main(["dialogue", "evaluate", "--run", str(tmp_path / "ilql"), "--episodes", "3", "--top_p", "0.8",
                 "--adv_clip", "0.5", "--output_dir", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["algorithm"] == "ilql" and ev["episodes"] == 3 and 1 <= ev["turns"]["mean"] <= 4
    # errors name the key / the file
    assert main(["dialogue", "train", "--algoritm", "bc"]) == 2
    assert "did you mean 'algorithm'" in capsys.readouterr().err
    assert main(["dialogue", "evaluate", "--run", str(tmp_path / "nothing"), "--output_dir",
                 str(tmp_path / "ev2")]) == 2
    assert main(["dialogue", "evaluate", "--run", str(tmp_path / "ilql"), "--top_p", "0",
                 "--output_dir", str(tmp_path / "ev3")]) == 2
    assert "top_p" in capsys.readouterr().err
    assert main(["dialogue", "train", "--output_dir", str(tmp_path / "bc"), "--algorithm", "bc"] + small) == 2
