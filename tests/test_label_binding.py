"""Decisions are bound to the texts they judged: changed candidates are relabelled, unchanged ones reused, and
texts equal up to whitespace count as one text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.labeling.store import DecisionStore, LabelSession, comparisons, read_candidates
from rlhf.stages.label import LabelConfig, run
from rlhf.tasks.qa.examples import build_examples, demonstration, prompt_record

ROOT = Path(__file__).resolve().parents[1]


def arithmetic(n: int) -> list:
    train, _ = build_examples(seed=0)
    return [ex for ex in train if ex.kind == "arithmetic"][:n]


def write(path: Path, rows: list[tuple]) -> Path:
    """rows: (example, [texts])"""
    out = []
    for ex, texts in rows:
        rec = prompt_record(ex)
        out.append({"prompt_id": ex.id, "prompt": rec["prompt"], "candidates": [{"text": t} for t in texts],
                    "task": {k: v for k, v in rec.items() if k != "prompt"}})
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def wrong(ex) -> str:
    return f"The answer is {int(ex.reference) + 1}."


def config(tmp_path: Path, cands: Path, **kw) -> LabelConfig:
    values = {"candidates": str(cands), "output_dir": str(tmp_path / "label"), **{k: str(v) for k, v in kw.items()}}
    return load_config(LabelConfig, ROOT / "configs/tiny/label.yaml", values)


def pairs_of(tmp_path: Path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "label" / "pairs.jsonl").read_text().splitlines() if x.strip()]


def test_swapped_candidates_are_relabelled_not_reused(tmp_path, capsys):
    exs = arithmetic(12)
    path = write(tmp_path / "c.jsonl", [(ex, [demonstration(ex), wrong(ex)]) for ex in exs])
    run(config(tmp_path, path, sim_temperature=0.0))
    assert all(p["chosen"][0]["content"] == demonstration(ex) for p, ex in zip(pairs_of(tmp_path), exs))
    # the same prompts, right and wrong swapped in place; the second run in the same directory
    write(path, [(ex, [wrong(ex), demonstration(ex)]) for ex in exs])
    m = run(config(tmp_path, path, sim_temperature=0.0))
    pairs = pairs_of(tmp_path)
    assert len(pairs) == 12
    right = sum(p["chosen"][0]["content"] == demonstration(ex) for p, ex in zip(pairs, exs))
    assert right == 12
    assert (m["label/reused"], m["label/stale"], m["label/made"]) == (0, 12, 12)
    assert "0 reused, 12 dropped as stale" in capsys.readouterr().out
    # a third run with nothing changed reuses all twelve and makes none
    m = run(config(tmp_path, path, sim_temperature=0.0))
    assert (m["label/reused"], m["label/made"]) == (12, 0) and pairs_of(tmp_path) == pairs


def test_changed_k_relabels_without_crashing(tmp_path):
    exs = arithmetic(4)
    path = write(tmp_path / "c.jsonl", [(ex, [demonstration(ex), wrong(ex), "I do not know."]) for ex in exs])
    run(config(tmp_path, path, sim_temperature=0.0, pair_rule="all"))
    assert len(pairs_of(tmp_path)) == 12
    write(path, [(ex, [demonstration(ex), wrong(ex)]) for ex in exs])  # k 3 -> 2
    m = run(config(tmp_path, path, sim_temperature=0.0, pair_rule="all"))
    assert (m["label/reused"], m["label/made"]) == (0, 4) and len(pairs_of(tmp_path)) == 4
    write(path, [(ex, [demonstration(ex), wrong(ex), "No idea.", "Maybe 3."]) for ex in exs])  # k 2 -> 4
    m = run(config(tmp_path, path, sim_temperature=0.0, pair_rule="all"))
    assert m["label/made"] == 4 and len(pairs_of(tmp_path)) == 24


def test_a_changed_simulated_annotator_relabels(tmp_path):
    exs = arithmetic(6)
    path = write(tmp_path / "c.jsonl", [(ex, [demonstration(ex), wrong(ex)]) for ex in exs])
    run(config(tmp_path, path, sim_temperature=0.0))
    m = run(config(tmp_path, path, sim_temperature=0.0, sim_flip_rate=1.0))
    assert all(p["chosen"][0]["content"] == wrong(ex) for p, ex in zip(pairs_of(tmp_path), exs))
    assert (m["label/reused"], m["label/stale"], m["label/made"]) == (0, 6, 6)


def test_a_person_is_shown_only_what_is_new_and_a_swap_keeps_the_preference(tmp_path):
    exs = arithmetic(3)
    path = write(tmp_path / "c.jsonl", [(ex, [demonstration(ex), wrong(ex)]) for ex in exs])
    store = DecisionStore(tmp_path / "d.jsonl")
    session = LabelSession(comparisons(read_candidates(path)), store, "terminal")
    for _ in exs:
        session.decide(session.current().item, "first")  # the right answer, shown first
    assert session.current() is None
    # k 2 -> 3 and the first two swapped: the old comparison is the same two texts, only the new ones are shown
    write(path, [(ex, [wrong(ex), demonstration(ex), "No idea."]) for ex in exs])
    items = comparisons(read_candidates(path))
    session = LabelSession(items, DecisionStore(tmp_path / "d.jsonl"), "terminal")
    shown = [c.item for c in session.store.pending(items)]
    assert shown == [f"{ex.id}:{a}-{b}" for ex in exs for a, b in ((0, 2), (1, 2))]
    assert session.progress()["done"] == 3
    # export from the bound store: the reused decisions prefer the right answer, now in second place
    from rlhf.stages.label import export_pairs

    pairs, counts = export_pairs(read_candidates(path), session.store, config(tmp_path, path, labeler="terminal"))
    assert counts["decisions"] == 3
    assert [p.chosen[0]["content"] for p in pairs] == [demonstration(ex) for ex in exs]
    assert [p.meta["chosen_index"] for p in pairs] == [1, 1, 1]


def test_an_edited_prompt_makes_its_decision_stale(tmp_path):
    exs = arithmetic(2)
    path = write(tmp_path / "c.jsonl", [(ex, [demonstration(ex), wrong(ex)]) for ex in exs])
    run(config(tmp_path, path, sim_temperature=0.0))
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[0]["prompt"][0]["content"] = "What is 1 + 1?"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = run(config(tmp_path, path, sim_temperature=0.0))
    decisions = [json.loads(x) for x in (tmp_path / "label" / "decisions.jsonl").read_text().splitlines()]
    assert [d["prompt_id"] for d in decisions] == [exs[0].id, exs[1].id, exs[0].id]
    assert (m["label/reused"], m["label/stale"], m["label/made"]) == (1, 1, 1)


def test_equal_up_to_whitespace_is_identical_and_reused(tmp_path):
    exs = arithmetic(2)
    path = write(tmp_path / "c.jsonl", [(ex, [demonstration(ex), wrong(ex), demonstration(ex) + "  \n"])
                                        for ex in exs])
    m = run(config(tmp_path, path, sim_temperature=0.0, pair_rule="all"))
    assert m["label/identical_completions"] == 2 and m["label/pairs"] == 4
    # re-sampled with other whitespace only: the decisions still apply
    write(path, [(ex, [" " + demonstration(ex).replace(" ", "  "), wrong(ex) + "\n", demonstration(ex)])
                 for ex in exs])
    m = run(config(tmp_path, path, sim_temperature=0.0, pair_rule="all"))
    assert m["label/identical_completions"] == 2 and m["label/pairs"] == 4
    assert (m["label/reused"], m["label/made"]) == (2, 0)
    items = comparisons(read_candidates(path), skip_identical=True)
    assert [(c.a, c.b) for c in items] == [(0, 1), (1, 2)] * 2


def test_reward_model_labeler_relabels_changed_candidates(tmp_path):
    from rlhf.reward import RewardModel

    rm = RewardModel.from_backbone("tiny-llama", max_length=128, seed=0)
    rm.save(tmp_path / "rm")
    exs = arithmetic(5)
    texts = {ex.id: [demonstration(ex), wrong(ex), "I do not know the answer to that one."] for ex in exs}
    path = write(tmp_path / "c.jsonl", [(ex, texts[ex.id]) for ex in exs])
    kw = dict(labeler="reward_model", reward_model=tmp_path / "rm", pair_rule="best_vs_worst")
    run(config(tmp_path, path, **kw))
    write(path, [(ex, texts[ex.id][::-1]) for ex in exs])  # reversed in place
    m = run(config(tmp_path, path, **kw))
    loaded = RewardModel.load(tmp_path / "rm")
    for ex, p in zip(exs, pairs_of(tmp_path)):
        now = texts[ex.id][::-1]
        scores = loaded.score([prompt_record(ex)["prompt"]] * 3, now)
        assert p["chosen"][0]["content"] == now[max(range(3), key=lambda i: scores[i])]
        assert p["rejected"][0]["content"] == now[min(range(3), key=lambda i: scores[i])]
    assert (m["label/reused"], m["label/stale"], m["label/made"]) == (0, 5, 5)
