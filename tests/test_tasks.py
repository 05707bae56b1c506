"""Tests of the built-in QA task (rlhf.tasks.qa) and of scripts/make_data.py."""

import importlib.util
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from rlhf.preferences import read_pairs
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
from rlhf.tasks.qa.judging import FACT_ENTITIES, mentions
from rlhf.tasks.qa.synthetic import (
    PAIR_MIX,
    PAIR_TYPES,
    UNHELPFUL_SHARE,
    VARIANT_STYLES,
    _template_texts,
    mixed_demonstrations,
    pair_type,
    preference_pairs,
    response_variants,
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
    assert names == ["README.md", "pairs_test.jsonl", "pairs_train.jsonl", "prompts_test.jsonl",
                     "prompts_train.jsonl", "sft_mixed_train.jsonl", "sft_test.jsonl", "sft_train.jsonl"]
    assert sorted(p.name for p in committed.iterdir()) == names
    for name in names:
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name

    # The records load back into the examples that build_examples returns.
    train, _ = build_examples(seed=0)
    lines = (committed / "prompts_train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [example_from_record(json.loads(line)) for line in lines] == train


# --------------------------------------------------------------------------- preference pairs


def _variants(ex, seed=0):
    return dict(zip(VARIANT_STYLES, response_variants(ex, random.Random(f"{seed}:{ex.id}"))))


@pytest.mark.parametrize("seed", [0, 1])
def test_every_variant_gets_its_judge_outcome(seed):
    for ex in sum(build_examples(seed=seed), []):
        texts = _variants(ex, seed)
        j = {style: judge(ex, text) for style, text in texts.items()}
        context = (ex, texts)
        assert texts["concise"] == demonstration(ex), context
        assert j["concise"] == Judgement(1.0, True, 0.0, 0.0), context
        assert j["paraphrase"] == Judgement(1.0, True, 0.0, 0.0), context
        assert texts["paraphrase"] != texts["concise"], context
        assert j["rambling"].correct and j["rambling"].length_penalty >= 0.1, context
        assert j["rambling"].repetition_penalty == 0.0, context
        assert j["repetitive"].correct and j["repetitive"].repetition_penalty >= 0.06 - 1e-12, context
        for style in ("wrong", "hedging", "evasive"):
            assert not j[style].correct and j[style].score <= 0, (style, context)
        assert j["wrong"].score == 0.0 and j["hedging"].score == 0.0, context
        _wrong_of(ex, texts["wrong"])  # a right answer to a question whose reference is the wrong value
        assert mentions(texts["hedging"].lower(), ex.reference), context
        assert len(set(texts.values())) == len(texts), context


def _wrong_of(ex, text):
    """The one wrong value the wrong variant names (a number other than the operands, or an entity of the
    question's category that the question does not name); the text answers that value correctly."""
    low = " ".join(text.lower().split())
    if ex.kind == "arithmetic":
        operands = set(re.findall(r"\d+", ex.question))
        values = [n for n in re.findall(r"\d+", text) if n not in operands]
    else:
        category = ex.id.split("-")[1]
        values = [e for e in FACT_ENTITIES[category] if mentions(low, e) and not mentions(ex.question.lower(), e)]
    assert len(values) == 1, (ex, text, values)
    as_reference = TaskExample(ex.id, ex.kind, ex.question, values[0])
    assert judge(as_reference, text).score == 1.0, (ex, text)
    return values[0]


def test_wrong_answers_are_near_misses_in_the_right_answers_phrasings():
    forms = Counter()
    for ex in sum(build_examples(seed=0), []):
        text = _variants(ex)["wrong"]
        wrong = _wrong_of(ex, text)
        demo = demonstration(TaskExample(ex.id, ex.kind, ex.question, wrong))
        forms["demonstration" if text.lower() == demo.lower() else "paraphrase"] += 1
        if ex.kind == "arithmetic":
            a, b = map(int, re.findall(r"\d+", ex.question))
            off = abs(int(wrong) - int(ex.reference))
            assert off in (1, 2, 10) or (ex.id.startswith("arith-mul") and off in (a, b)), (ex, wrong)
        else:  # another answer of the same category, not in the question
            category = ex.id.split("-")[1]
            assert wrong.lower() in FACT_ENTITIES[category] - {ex.reference.lower()}, (ex, wrong)
            assert not mentions(ex.question.lower(), wrong), (ex, wrong)
    # Half in the demonstration's form, half paraphrased, like the correct answers' concise and paraphrase
    # styles: the phrasing alone says nothing of correctness.
    assert 0.4 < forms["demonstration"] / sum(forms.values()) < 0.6, forms


def test_mixed_demonstrations():
    train, _ = build_examples(seed=0)
    mixed = mixed_demonstrations(train, seed=0)
    assert mixed == mixed_demonstrations(train, seed=0) != mixed_demonstrations(train, seed=1)
    styles = Counter(style for style, _ in mixed)
    assert set(styles) == {"concise", "evasive", "hedging"}
    assert styles["evasive"] + styles["hedging"] == round(UNHELPFUL_SHARE * len(train))
    assert min(styles["evasive"], styles["hedging"]) > 0.35 * round(UNHELPFUL_SHARE * len(train))
    for ex, (style, text) in zip(train, mixed):
        j = judge(ex, text)
        if style == "concise":
            assert text == demonstration(ex) and j.score == 1.0
        else:  # unhelpful: no committed answer
            assert not j.correct and j.score <= 0, (ex, style, text)
    lines = (ROOT / "reward_data/sft_mixed_train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [(json.loads(line)["style"], json.loads(line)["completion"][0]["content"]) for line in lines] == mixed


def test_variant_templates_hold_no_digit_and_no_entity():
    entities = set().union(*FACT_ENTITIES.values())
    for text in _template_texts():
        assert not re.search(r"\d", text), text
        low = " ".join(text.lower().split())
        assert not [e for e in entities if mentions(low, e)], text


def test_variants_are_deterministic_and_varied():
    train, _ = build_examples(seed=0)
    assert all(_variants(ex) == _variants(ex) for ex in train[:50])
    assert any(_variants(ex, 0) != _variants(ex, 1) for ex in train[:50])
    # Several phrasings per style: with the answer, numbers and question subject masked out, no template
    # family dominates.
    for style in VARIANT_STYLES[1:]:
        shapes = Counter()
        for ex in train:
            text = _variants(ex)[style]
            for value in sorted({ex.reference, *ex.aliases, demonstration(ex)[:-1]}, key=len, reverse=True):
                text = text.replace(value, "#")
            shapes[re.sub(r"\d+", "#", text)] += 1
        assert len(shapes) >= 4, (style, shapes)
        assert shapes.most_common(1)[0][1] <= 0.45 * len(train), (style, shapes.most_common(3))


def _check_pairs(examples, pairs, per_example=2):
    by_id = {ex.id: ex for ex in examples}
    assert len(pairs) == per_example * len(examples)
    assert Counter(p["prompt_id"] for p in pairs) == {ex.id: per_example for ex in examples}
    seen = set()
    for p in pairs:
        ex = by_id[p["prompt_id"]]
        assert set(p) == {"prompt", "chosen", "rejected", "prompt_id", "gold_chosen", "gold_rejected",
                          "chosen_style", "rejected_style"}
        assert p["prompt"] == prompt_messages(ex)
        chosen, rejected = p["chosen"][0]["content"], p["rejected"][0]["content"]
        assert p["chosen"] == [{"role": "assistant", "content": chosen}]
        assert p["rejected"] == [{"role": "assistant", "content": rejected}]
        assert chosen != rejected
        assert p["gold_chosen"] == round(judge(ex, chosen).score, 4)
        assert p["gold_rejected"] == round(judge(ex, rejected).score, 4)
        assert round(p["gold_chosen"] - p["gold_rejected"], 6) >= 0.05, p
        assert pair_type(p["chosen_style"], p["rejected_style"]) in PAIR_TYPES, p
        key = (p["prompt_id"], p["chosen_style"], p["rejected_style"])
        assert key not in seen, p
        seen.add(key)


def _mix(pairs):
    counts = Counter(pair_type(p["chosen_style"], p["rejected_style"]) for p in pairs)
    return {kind: counts[kind] / len(pairs) for kind in PAIR_TYPES}


def test_preference_pairs_are_ordered_distinct_and_mixed():
    train, test = build_examples(seed=0)
    for examples, seed in [(train, 0), (test, 0), (train[:40], 7)]:
        pairs = preference_pairs(examples, seed=seed)
        _check_pairs(examples, pairs)
        for kind, share in _mix(pairs).items():
            assert abs(share - PAIR_MIX[kind]) <= 0.02, (kind, share)
        # the schedule is met exactly: no example lacked an eligible pair of its scheduled type
        counts = Counter(pair_type(p["chosen_style"], p["rejected_style"]) for p in pairs)
        assert counts["correct_vs_wrong"] == round(0.5 * len(pairs))
        assert counts["concise_vs_verbose"] == round(0.25 * len(pairs))
    assert preference_pairs(test, seed=3) == preference_pairs(test, seed=3)
    assert preference_pairs(test, seed=3) != preference_pairs(test, seed=4)
    _check_pairs(test, preference_pairs(test, seed=0, pairs_per_example=3), per_example=3)


def test_committed_pair_files():
    committed = ROOT / "reward_data"
    splits = dict(zip(["train", "test"], build_examples(seed=0)))
    ids = {}
    for split, examples in splits.items():
        path = committed / f"pairs_{split}.jsonl"
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        _check_pairs(examples, records)
        for kind, share in _mix(records).items():
            assert abs(share - PAIR_MIX[kind]) <= 0.03, (split, kind, share)
        styles = Counter(s for r in records for s in (r["chosen_style"], r["rejected_style"]))
        assert set(styles) == set(VARIANT_STYLES), styles

        pairs, summary = read_pairs(str(path))  # TRL conversational, extra keys kept in meta
        assert summary.kept == summary.total == len(records) and not summary.skipped
        assert all(p.format == "conversational" and not p.tie for p in pairs)
        assert pairs[0].meta["prompt_id"] == records[0]["prompt_id"]
        ids[split] = {r["prompt_id"] for r in records}
        prompts = {json.dumps(r["prompt"]) for r in records}
        ids[split + "_prompts"] = prompts
    assert not ids["train"] & ids["test"]
    assert not ids["train_prompts"] & ids["test_prompts"]
