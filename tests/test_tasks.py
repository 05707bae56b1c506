"""Tests of the built-in QA task (rlhf.tasks.qa) and of scripts/make_data.py."""

import importlib.util
import json
from pathlib import Path

import pytest

from rlhf.tasks import (
    Judgement,
    TaskExample,
    build_examples,
    demonstration,
    example_from_record,
    judge,
    prompt_messages,
    prompt_record,
)

ROOT = Path(__file__).resolve().parent.parent

ADD = TaskExample("arith-add-9999", "arithmetic", "What is 17 + 25?", "42")
FRANCE = TaskExample("fact-capital-france", "fact", "What is the capital of France?", "Paris")
UKRAINE = TaskExample("fact-capital-ukraine", "fact", "What is the capital of Ukraine?", "Kyiv", ("Kiev",))
TUESDAY = TaskExample("fact-day-after-tuesday", "fact", "What day comes after Tuesday?", "Wednesday")


# --------------------------------------------------------------------------- examples


def test_split_is_deterministic_disjoint_and_sized():
    train, test = build_examples(seed=0)
    assert build_examples(seed=0) == (train, test)
    assert not {ex.question for ex in train} & {ex.question for ex in test}
    everything = train + test
    assert len({ex.id for ex in everything}) == len(everything)
    assert len({ex.question for ex in everything}) == len(everything)
    assert 500 <= len(everything) <= 700
    assert abs(len(test) / len(everything) - 0.2) < 0.02
    assert {ex.kind for ex in test} == {ex.kind for ex in train} == {"arithmetic", "fact"}

    _, test_half = build_examples(seed=0, test_fraction=0.5)
    assert abs(len(test_half) / len(everything) - 0.5) < 0.02


def test_seeds_change_arithmetic_but_not_facts():
    def questions(seed, kind):
        return {ex.question for split in build_examples(seed=seed) for ex in split if ex.kind == kind}

    assert questions(0, "arithmetic") != questions(1, "arithmetic")
    assert questions(0, "fact") == questions(1, "fact")


def test_arithmetic_results_are_non_negative_integers():
    for ex in sum(build_examples(seed=3), []):
        if ex.kind == "arithmetic":
            assert ex.reference.isdigit(), ex


def test_every_demonstration_scores_the_maximum():
    for ex in sum(build_examples(seed=0), []):
        assert judge(ex, demonstration(ex)) == Judgement(1.0, True, 0.0, 0.0), (ex, demonstration(ex))


def test_demonstration_and_prompt_format():
    assert demonstration(ADD) == "17 + 25 = 42."
    assert demonstration(FRANCE) == "The capital of France is Paris."
    assert demonstration(TUESDAY) == "The day after Tuesday is Wednesday."
    assert prompt_messages(FRANCE) == [{"role": "user", "content": "What is the capital of France?"}]
    assert example_from_record(prompt_record(UKRAINE)) == UKRAINE


# --------------------------------------------------------------------------- judge


@pytest.mark.parametrize("completion, correct", [
    ("42", True),
    ("17 + 25 = 42.", True),          # the operands are not contradicting answers
    ("The answer is 42.0", True),     # numbers are compared as numbers
    ("142", False),                   # "42" is not found inside "142" ...
    ("4.2", False),                   # ... nor inside "4.2"
    ("It is 42 or maybe 43", False),  # a contradicting number
    ("42, or 142", False),
    ("forty-two", False),             # arithmetic answers must be written in digits
    ("", False),
])
def test_judge_arithmetic(completion, correct):
    assert judge(ADD, completion) == Judgement(float(correct), correct, 0.0, 0.0)


@pytest.mark.parametrize("ex, completion, correct", [
    (FRANCE, "Paris", True),
    (FRANCE, "PARIS.", True),                   # case-insensitive
    (FRANCE, "paris", True),
    (FRANCE, "Paris, or maybe Lyon", True),     # Lyon is not a capital in the table
    (FRANCE, "Parisian", False),                # whole words only
    (FRANCE, "London", False),
    (FRANCE, "Paris or London", False),         # another capital contradicts
    (UKRAINE, "Kiev", True),                    # an alias
    (UKRAINE, "It is Kyiv.", True),
    (UKRAINE, "Kyiv, not Moscow", False),       # negation is not understood
    (TUESDAY, "Wednesday", True),
    (TUESDAY, "After Tuesday comes Wednesday.", True),  # a day named in the question is fine
    (TUESDAY, "Wednesday or Thursday", False),
    (FRANCE, "", False),
    (FRANCE, "   \n", False),
])
def test_judge_facts(ex, completion, correct):
    assert judge(ex, completion) == Judgement(float(correct), correct, 0.0, 0.0)


def test_length_penalty():
    # 30 words, no repeated trigram: 10 words over the budget of 20 cost 10 * 0.005.
    rambling = ("The capital of France is Paris, a beautiful city on the river Seine that is famous "
                "for its museums, its food, its fashion and of course the tall Eiffel Tower.")
    j = judge(FRANCE, rambling)
    assert j.correct and j.repetition_penalty == 0.0
    assert j.length_penalty == pytest.approx(0.05, abs=1e-12)
    assert j.score == pytest.approx(0.95, abs=1e-12)

    # The same answer with a larger budget or another cost.
    assert judge(FRANCE, rambling, length_budget=30).length_penalty == 0.0
    assert judge(FRANCE, rambling, length_cost=0.01).length_penalty == pytest.approx(0.1, abs=1e-12)

    # The penalty is capped at 0.25: 200 distinct words would otherwise cost 180 * 0.005 = 0.9.
    long = "Paris " + " ".join(f"w{i}" for i in range(199))
    j = judge(FRANCE, long)
    assert j.length_penalty == 0.25 and j.repetition_penalty == 0.0 and j.score == 0.75

    # A wrong rambling answer scores below zero.
    assert judge(FRANCE, rambling.replace("Paris", "Lyon")).score == pytest.approx(-0.05, abs=1e-12)


def test_repetition_penalty():
    # words: paris is the capital paris is the capital -> 6 trigrams, 4 distinct: 2 repeats * 0.02.
    j = judge(FRANCE, "Paris is the capital. Paris is the capital.")
    assert j.correct and j.length_penalty == 0.0
    assert j.repetition_penalty == pytest.approx(0.04, abs=1e-12)
    assert j.score == pytest.approx(0.96, abs=1e-12)

    # "42 42 42 42": trigrams (42 42 42) twice -> 1 repeat.
    assert judge(ADD, "42 42 42 42").repetition_penalty == pytest.approx(0.02, abs=1e-12)

    # 30 x "Paris": 28 trigrams, 1 distinct -> 27 * 0.02 = 0.54, capped at 0.25;
    # and 10 words over budget -> 0.05.
    j = judge(FRANCE, "Paris " * 30)
    assert j.correct
    assert j.repetition_penalty == 0.25
    assert j.length_penalty == pytest.approx(0.05, abs=1e-12)
    assert j.score == pytest.approx(0.70, abs=1e-12)


def test_correct_beats_rambling_beats_wrong():
    concise = judge(FRANCE, "Paris.").score
    rambling = judge(FRANCE, "Paris. " + "I really do think that it is the answer, " * 10).score
    wrong = judge(FRANCE, "London.").score
    assert concise == 1.0 > rambling >= 0.5 > 0.0 == wrong


# --------------------------------------------------------------------------- data script


def test_make_data_reproduces_committed_files(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_data", ROOT / "scripts" / "make_data.py")
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    make_data.main(["--seed", "0", "--out", str(tmp_path)])
    assert "train" in capsys.readouterr().out

    committed = ROOT / "reward_data"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["README.md", "prompts_test.jsonl", "prompts_train.jsonl",
                     "sft_test.jsonl", "sft_train.jsonl"]
    assert sorted(p.name for p in committed.iterdir()) == names
    for name in names:
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name

    # The records load back into the examples that build_examples returns.
    train, _ = build_examples(seed=0)
    lines = (committed / "prompts_train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [example_from_record(json.loads(line)) for line in lines] == train
