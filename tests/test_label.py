"""Labelling: the append-only store, the simulated annotator, pair rules and export, the terminal labeler."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from rlhf.config import load_config
from rlhf.data import DataError
from rlhf.labeling.simulated import SimulatedAnnotator, gold_scores
from rlhf.labeling.store import DecisionStore, LabelSession, comparisons, read_candidates
from rlhf.stages.label import LabelConfig, export_pairs, ranking_pairs, run
from rlhf.tasks.qa.examples import build_examples, demonstration, prompt_record

ROOT = Path(__file__).resolve().parents[1]


def write_candidates(path: Path, n_prompts: int, k: int = 2) -> Path:
    """Candidates for built-in task prompts: the demonstration and wrong/rambling variants, so gold differs."""
    train, _ = build_examples(seed=0)
    rows = []
    for i, ex in enumerate(train[:n_prompts]):
        good = demonstration(ex)
        variants = [good, "I am not sure, maybe 7 or 9.", good + " " + " ".join(["and so on"] * 12),
                    "The answer is unknown."]
        rec = prompt_record(ex)
        rows.append({"prompt_id": ex.id, "prompt": rec["prompt"],
                     "candidates": [{"text": variants[(i + j) % len(variants)]} for j in range(k)],
                     "task": {key: v for key, v in rec.items() if key != "prompt"}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -------------------------------------------------------------------------------------------- store


def test_store_undo_resume_and_torn_last_line(tmp_path):
    cands = read_candidates(write_candidates(tmp_path / "c.jsonl", 3, k=2))
    items = comparisons(cands)
    store = DecisionStore(tmp_path / "d.jsonl")
    session = LabelSession(items, store, "terminal")
    session.decide(items[0].item, "first")
    session.decide(items[1].item, "tie")
    assert session.undo()["item"] == items[1].item
    assert session.current() == items[1]
    with pytest.raises(ValueError, match="not the current item"):
        session.decide(items[2].item, "first")
    session.decide(items[1].item, "second")
    # a kill mid-write leaves a torn last line: it is ignored, the next write starts on a new line
    with open(tmp_path / "d.jsonl", "a") as f:
        f.write('{"seq": 99, "event": "lab')
    again = DecisionStore(tmp_path / "d.jsonl")
    assert [e["event"] for e in again.events] == ["label", "label", "undo", "label"]
    resumed = LabelSession(items, again, "terminal")
    assert resumed.current() == items[2] and resumed.progress()["done"] == 2
    resumed.decide(items[2].item, "skip")
    lines = (tmp_path / "d.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["choice"] == "skip"
    assert {k: e["choice"] for k, e in DecisionStore(tmp_path / "d.jsonl").effective().items()} == {
        items[0].item: "first", items[1].item: "second", items[2].item: "skip"}


def test_store_refuses_a_corrupt_line_in_the_middle(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"seq": 0, "event": "undo", "undoes": 5}\nnot json\n{"seq": 1, "event": "undo", "undoes": 6}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: corrupt decision line"):
        DecisionStore(path)


def test_comparisons_rules():
    cands = read_candidates(write_candidates(Path(os.environ.get("TMPDIR", "/tmp")) / "rlhf_c4.jsonl", 1, k=4))
    assert [(c.a, c.b) for c in comparisons(cands, "all")] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert [(c.a, c.b) for c in comparisons(cands, "disjoint")] == [(0, 1), (2, 3)]


# --------------------------------------------------------------------------------- simulated annotator


def test_ranking_pair_rules():
    order = [2, 0, 3, 1]
    assert ranking_pairs(order, "all") == [(2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1)]
    assert ranking_pairs(order, "best_vs_rest") == [(2, 0), (2, 3), (2, 1)]
    assert ranking_pairs(order, "best_vs_worst") == [(2, 1)]


@pytest.mark.parametrize("temperature,flip_rate", [(0.0, 0.0), (0.0, 0.2), (0.3, 0.0), (0.3, 0.1), (1.0, 0.25)])
def test_simulated_agreement_matches_the_configured_noise(temperature, flip_rate):
    """2000 pairwise comparisons: observed agreement with the noiseless judge is within 3 points of the
    analytic expectation (for temperature 0, exactly 1 - flip_rate in expectation)."""
    annotator = SimulatedAnnotator(temperature, flip_rate)
    rng = np.random.default_rng(123)
    golds = rng.choice([-0.3, 0.0, 0.6, 0.9, 1.0], size=(3000, 2))
    golds = golds[golds[:, 0] != golds[:, 1]][:2000]
    agree = [annotator.rank(list(g), rng)[0] == int(np.argmax(g)) for g in golds]
    expected = np.mean([annotator.expected_agreement(a, b) for a, b in golds])
    if temperature == 0:
        assert expected == pytest.approx(1 - flip_rate)
    assert abs(np.mean(agree) - expected) < 0.03, (np.mean(agree), expected)


def test_plackett_luce_at_temperature_zero_sorts_by_gold():
    rng = np.random.default_rng(0)
    assert SimulatedAnnotator(0.0, 0.0).rank([0.2, 1.0, -0.5, 0.6], rng) == [1, 3, 0, 2]
    assert SimulatedAnnotator(0.0, 1.0).rank([0.2, 1.0, -0.5, 0.6], rng) == [2, 0, 3, 1]


def test_gold_scores_come_from_the_task_judge(tmp_path):
    cands = read_candidates(write_candidates(tmp_path / "c.jsonl", 1, k=4))
    gold = gold_scores(cands[0])
    assert gold[0] == 1.0  # the demonstration
    assert gold[1] == 0.0 and gold[3] == 0.0  # wrong answers
    assert 0.5 <= gold[2] < 1.0  # correct but rambling and repetitive


def label_config(tmp_path: Path, candidates: Path, **overrides) -> LabelConfig:
    values = {"candidates": str(candidates), "output_dir": str(tmp_path / "label"),
              **{k: str(v) for k, v in overrides.items()}}
    return load_config(LabelConfig, ROOT / "configs/tiny/label.yaml", values)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_label_stage_simulated_end_to_end(tmp_path):
    cands = write_candidates(tmp_path / "c.jsonl", 40, k=3)
    cfg = label_config(tmp_path, cands, sim_temperature=0.0, pair_rule="best_vs_rest")
    metrics = run(cfg)
    out = Path(cfg.output_dir)
    pairs = read_jsonl(out / "pairs.jsonl")
    decisions = read_jsonl(out / "decisions.jsonl")
    assert len(decisions) == 40 and all(d["event"] == "rank" for d in decisions)
    assert len(pairs) == metrics["label/pairs"] == 80  # best vs 2 others, 40 prompts, no identical texts
    assert metrics["label/gold_agreement"] == 1.0  # temperature 0, no flips
    p = pairs[0]
    assert p["prompt"][0]["role"] == "user" and p["chosen"][0]["role"] == "assistant"
    assert p["gold_chosen"] >= p["gold_rejected"] and p["labeler"] == "simulated"
    # running again resumes: nothing new to label, the same pairs
    run(label_config(tmp_path, cands, sim_temperature=0.0, pair_rule="best_vs_rest"))
    assert len(read_jsonl(out / "decisions.jsonl")) == 40 and read_jsonl(out / "pairs.jsonl") == pairs


def test_export_ties_skips_identical_and_empty_completions(tmp_path):
    path = write_candidates(tmp_path / "c.jsonl", 5, k=2)
    rows = read_jsonl(path)
    rows[3]["candidates"][1]["text"] = rows[3]["candidates"][0]["text"]  # identical pair
    rows[4]["candidates"][1]["text"] = "  "  # an empty completion: the pair readers would refuse it
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cands = read_candidates(path)
    items = comparisons(cands)
    store = DecisionStore(tmp_path / "d.jsonl")
    session = LabelSession(items, store, "browser")
    for item, choice in zip(items, ["second", "tie", "skip", "first", "first"]):
        session.decide(item.item, choice)
    for keep_ties, n_pairs in ((False, 1), (True, 2)):
        cfg = label_config(tmp_path, path, keep_ties=keep_ties)
        pairs, counts = export_pairs(cands, store, cfg)
        assert counts == {"decisions": 5, "pairs": n_pairs, "ties_dropped": 0 if keep_ties else 1, "skipped": 1,
                          "identical_completions": 1, "empty_completions": 1}
        assert pairs[0].chosen[0]["content"] == cands[0].texts[1]  # "second" chose b
        assert pairs[0].rejected[0]["content"] == cands[0].texts[0]
        assert [p.tie for p in pairs] == ([False, True] if keep_ties else [False])


def test_reward_model_labeler_ranks_by_score(tmp_path, monkeypatch):
    from rlhf.config import ConfigError
    from rlhf.reward import RewardModel

    with pytest.raises(ConfigError, match="needs reward_model"):
        label_config(tmp_path, tmp_path / "c.jsonl", labeler="reward_model")
    # a reward model whose head reads one feature; saved and loaded as the stage would
    rm = RewardModel.from_backbone("tiny-llama", max_length=128, seed=0)
    rm.save(tmp_path / "rm")
    cands_path = write_candidates(tmp_path / "c.jsonl", 5, k=3)
    cfg = label_config(tmp_path, cands_path, labeler="reward_model", reward_model=tmp_path / "rm",
                       pair_rule="best_vs_worst")
    metrics = run(cfg)
    cands = read_candidates(cands_path)
    loaded = RewardModel.load(tmp_path / "rm")
    pairs = read_jsonl(Path(cfg.output_dir) / "pairs.jsonl")
    assert metrics["label/pairs"] == len(pairs) == 5
    for c, p in zip(cands, pairs):
        scores = loaded.score([c.prompt] * 3, c.texts)
        assert p["chosen"][0]["content"] == c.texts[max(range(3), key=lambda i: scores[i])]
        assert p["rejected"][0]["content"] == c.texts[min(range(3), key=lambda i: scores[i])]
        assert p["reward_chosen"] == pytest.approx(max(scores), abs=1e-5) and p["labeler"] == "reward_model"


# ---------------------------------------------------------------------------------- terminal labeler


def spawn_terminal(cands: Path, out: Path):
    pexpect = pytest.importorskip("pexpect", reason="pexpect is in the dev extras")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120", "LINES": "40"}
    child = pexpect.spawn(sys.executable, ["-m", "rlhf.cli", "label", "--candidates", str(cands), "--labeler",
                                           "terminal", "--output_dir", str(out)],
                          cwd=str(ROOT), env=env, encoding="utf-8", timeout=60, dimensions=(40, 120))
    return child


def test_terminal_labeler_in_a_pty_survives_a_kill_and_resumes(tmp_path):
    cands = write_candidates(tmp_path / "c.jsonl", 6, k=2)
    out = tmp_path / "label"
    items = comparisons(read_candidates(cands))

    child = spawn_terminal(cands, out)
    child.expect_exact(f"[1/6] {items[0].item}")
    child.expect_exact("PROMPT")
    child.expect_exact(items[0].first.split()[0])
    child.send("1")
    child.expect_exact(f"[2/6] {items[1].item}")
    child.send("2")
    child.expect_exact(f"[3/6] {items[2].item}")
    # killed between decisions: no chance to clean up
    child.kill(signal.SIGKILL)
    child.close()
    decisions = read_jsonl(out / "decisions.jsonl")
    assert [(d["item"], d["choice"]) for d in decisions] == [(items[0].item, "first"), (items[1].item, "second")]

    child = spawn_terminal(cands, out)
    child.expect_exact(f"[3/6] {items[2].item}")  # resumes at the next undecided comparison
    child.send("t")
    child.expect_exact(f"[4/6] {items[3].item}")
    child.send("u")  # undo the tie: item 3 is shown again
    child.expect_exact(f"[3/6] {items[2].item}")
    child.send("s")
    child.expect_exact(f"[4/6] {items[3].item}")
    child.send("x")
    child.expect_exact("unknown key 'x'")
    child.send("q")
    child.expect_exact("Quit with 3/6 decided")
    child.expect(pexpect_eof())
    child.close()
    assert child.exitstatus == 0
    live = {k: e["choice"] for k, e in DecisionStore(out / "decisions.jsonl").effective().items()}
    assert live == {items[0].item: "first", items[1].item: "second", items[2].item: "skip"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["label/outcome"] == "quit" and metrics["label/pairs"] == 2 and metrics["label/skipped"] == 1


def pexpect_eof():
    import pexpect

    return pexpect.EOF
