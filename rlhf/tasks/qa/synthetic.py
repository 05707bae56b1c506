"""Synthetic data for the QA task: responses of graded quality and judge-ordered preference pairs.

Responses of graded quality to each question, in the styles a small chat model produces, and
preference pairs between them whose order is the judge's. Every template below is free of digits and
of every fact entity (capitals, symbols, weekdays, months, opposites), so that filling in the
reference, the operands or a chosen rival answer is all that decides correctness.
"""

import dataclasses
import random
import re

from rlhf.tasks.qa.examples import (CAPITALS, DAYS, MONTHS, OPPOSITES, SYMBOLS, TEMPLATES, TaskExample, category_of,
                                    demonstration, fact_examples, prompt_messages)
from rlhf.tasks.qa.judging import REPETITION_NGRAM, judge, mentions

VARIANT_STYLES = ("concise", "paraphrase", "rambling", "repetitive", "wrong", "hedging", "evasive")
CORRECT_STYLES = ("concise", "paraphrase", "rambling", "repetitive")  # judged correct
CONCISE_STYLES = ("concise", "paraphrase")  # correct, no penalty: score 1.0
VERBOSE_STYLES = ("rambling", "repetitive")  # correct, with a length or a repetition penalty
EVASIVE_STYLES = ("hedging", "evasive")  # no committed answer: judged incorrect

PAIR_TYPES = ("correct_vs_wrong", "concise_vs_verbose", "other")
PAIR_MIX = {"correct_vs_wrong": 0.5, "concise_vs_verbose": 0.25, "other": 0.25}  # target shares of the pairs
MIN_MARGIN = 0.05  # least gold score difference of a pair (no ties)
MIN_REPETITION_PENALTY = 0.06  # the repetitive style repeats until its penalty is at least this
RAMBLING_WORDS = (40, 64)  # the rambling style grows to at least a target word count drawn from this range

_OP_WORDS = {"+": ("plus", "added to"), "-": ("minus",), "×": ("times", "multiplied by")}

_PARAPHRASES = ["{Ref}", "{Ref}.", "It's {ref}.", "The answer is {ref}.", "That would be {ref}.",
                "{Ref} is {subject}.", "It is {ref}.", "Answer: {ref}"]
_ARITH_PARAPHRASES = ["{a} {opword} {b} is {ref}.", "{a} {opword} {b} equals {ref}.",
                      "{a} {op} {b} is {ref}.", "The result is {ref}."]

_OPENERS = ["Great question!", "Sure, I can help with that.", "Of course!", "Let's think about this together.",
            "Good question, thanks for asking.", "Certainly! Here is what I know."]
_CLOSERS = ["I hope this helps!", "Let me know if you have any other questions.",
            "Feel free to ask if anything is unclear.", "Is there anything else you would like to know?"]
_FILLERS = [
    "This is a common question, and it comes up a lot in quizzes and homework.",
    "It is always a good idea to double-check answers like this one.",
    "Many people learn this sort of thing at school and remember it for years.",
    "Knowing facts like this can be surprisingly useful in everyday life.",
    "If you want to be completely sure, you can confirm it in a reliable reference book.",
    "There is usually a simple trick that makes it easy to remember.",
    "Questions like this are a nice way to practise and keep your mind sharp.",
    "Teachers often use this kind of exercise as a warm-up at the start of a lesson.",
    "Once you have seen it a few times, it becomes second nature.",
    "Of course, context matters, but in this case the answer is clear.",
]
_TOPIC_FILLERS = {
    "add": ["Addition combines two quantities into a single total.",
            "Adding numbers in either order gives the same sum."],
    "sub": ["Subtraction finds the difference between two numbers.",
            "You can check a subtraction by adding the result back to the smaller number."],
    "mul": ["Multiplication is repeated addition, so the result grows quickly.",
            "Learning the multiplication tables by heart makes sums like this much quicker to do."],
    "capital": ["A capital city is usually where the national government and parliament are based.",
                "Capitals often host embassies, museums and important historical sites."],
    "symbol": ["Chemical symbols are short abbreviations used on the periodic table.",
               "Some symbols come from the Latin name of the element rather than its English one."],
    "day": ["A week has seven days, and they always follow one another in the same order.",
            "The names of the days go back a very long way."],
    "month": ["The year has twelve months, and they always come in the same order.",
              "Some months are longer than others, but the order never changes."],
    "opposite": ["Opposites, also called antonyms, are words with contrary meanings.",
                 "Learning antonyms is a good way to build your vocabulary."],
}
_ARITH_FILLERS = ["To get the result, we simply apply the operation to the two numbers.",
                  "You can verify this on paper or with a calculator.",
                  "Arithmetic like this is the foundation of more advanced mathematics."]
_RAMBLING_ANSWERS = ["{Demo}", "{Ref} is {subject}.", "So, the answer is {ref}.", "The answer here is {ref}."]

_REPEAT_UNITS = ["{Demo}", "The answer is {ref}.", "{Ref} is {subject}.", "It is {ref}.", "{Ref}."]
_REPEAT_LOOPS = ["That is the answer.", "I am sure of it.", "It is {ref}.", "The answer is {ref}."]

_HEDGES = ["It's either {x} or {y}.", "I think it's {x}, but it might be {y}.", "Maybe {x}? Or {y}. I'm not sure.",
           "{X} or {y}, I can't remember which.", "Probably {x}, although {y} is also possible.",
           "{Subject} is {x} or {y}.", "Either {x} or {y}, I believe."]

_EVASIONS = ["I'm not sure.", "I don't know the answer to that.", "That's a good question.",
             "I'd rather not guess.", "It depends on the context.", "Sorry, I can't answer that right now.",
             "Let me think about it and get back to you.", "There are different opinions on this."]
_LONG_EVASIONS = [
    "As an AI language model, I try not to give answers that I cannot verify, so I would rather not say.",
    "That is an interesting question, and there are several ways one could approach it depending on "
    "what exactly you are looking for.",
    "I don't have enough information to give you a reliable answer, and I would not want to mislead you.",
]
_EVASION_HINTS = {
    "add": "You could check with a calculator.", "sub": "You could check with a calculator.",
    "mul": "A multiplication table would tell you.", "capital": "An atlas or a map would tell you.",
    "symbol": "The periodic table lists it.", "day": "A calendar would tell you.",
    "month": "A calendar would tell you.", "opposite": "A dictionary or thesaurus would list it.",
}


def _template_texts() -> list[str]:
    """Every fixed text the variants are built from (tests check that none holds a digit or an entity)."""
    topic = [s for group in _TOPIC_FILLERS.values() for s in group]
    return (_PARAPHRASES + _ARITH_PARAPHRASES + _OPENERS + _CLOSERS + _FILLERS + topic + _ARITH_FILLERS
            + _RAMBLING_ANSWERS + _REPEAT_UNITS + _REPEAT_LOOPS + _HEDGES + _EVASIONS + _LONG_EVASIONS
            + list(_EVASION_HINTS.values()))


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(template: str, **values: str) -> str:
    """`template` with {name} and {Name} (the value with its first letter upper-cased) filled in."""
    values = {**values, **{k.capitalize(): _upper_first(v) for k, v in values.items()}}
    return template.format(**values)


def _rival_references() -> dict[str, list[str]]:
    """The references of each fact category, as spelled in the tables, in table order."""
    rivals: dict[str, list[str]] = {}
    for ex in fact_examples():
        names = rivals.setdefault(category_of(ex), [])
        if ex.reference not in names:
            names.append(ex.reference)
    return rivals


FACT_REFERENCES = _rival_references()


def _near_misses(category: str, reference: str) -> list[str]:
    """The entities a model most plausibly confuses with `reference`: capitals and symbols at most three
    rows away in their table (the tables run roughly by region and by kind), days and months at most two
    steps away, and for opposites the two words of the neighbouring pair (hot/cold ~ wet/dry,
    north/south ~ east/west, ...)."""
    if category in ("capital", "symbol"):
        table = [c for _, c, _ in CAPITALS] if category == "capital" else [s for _, s in SYMBOLS]
        i = table.index(reference)
        return table[max(0, i - 3):i + 4]
    if category in ("day", "month"):
        cycle = DAYS if category == "day" else MONTHS
        i = cycle.index(reference)
        return [cycle[(i + d) % len(cycle)] for d in (-2, -1, 1, 2)]
    k = next(k for k, pair in enumerate(OPPOSITES) if reference in pair)
    return list(OPPOSITES[k ^ 1])


def _wrong_answer(ex: TaskExample, rng: random.Random) -> str:
    """A plausible wrong answer: a number off by a little (by 1, 2 or 10, or for a product by one operand),
    or another entity of the same category, a near miss where there is one (`_near_misses`). Never an
    accepted answer, a question operand or an entity the question names, so that naming it makes any
    completion incorrect."""
    if ex.kind == "arithmetic":
        a, _, b = re.fullmatch(TEMPLATES[0][0], ex.question).groups()
        ref = int(ex.reference)
        deltas = [-10, -2, -1, 1, 2, 10]
        if category_of(ex) == "mul":
            deltas += [-int(a), int(a), -int(b), int(b)]  # one operand too few or too many times
        options = sorted({ref + d for d in deltas} - {ref, int(a), int(b)})
        return str(rng.choice([n for n in options if n >= 0]))
    category = category_of(ex)
    question = " ".join(ex.question.lower().split())
    answers = {s.lower() for s in (ex.reference, *ex.aliases)}
    options = [n for n in FACT_REFERENCES[category] if n.lower() not in answers and not mentions(question, n)]
    near = [n for n in options if n in _near_misses(category, ex.reference)]
    return rng.choice(near or options)


def _slots(ex: TaskExample, rng: random.Random) -> dict[str, str]:
    """The values templates are filled with: ref, demo, subject, and for arithmetic a, op, b, opword."""
    demo = demonstration(ex)
    if ex.kind == "arithmetic":
        a, op, b = re.fullmatch(TEMPLATES[0][0], ex.question).groups()
        return {"ref": ex.reference, "demo": demo, "subject": f"{a} {op} {b}", "a": a, "op": op, "b": b,
                "opword": rng.choice(_OP_WORDS[op])}
    suffix = f" is {ex.reference}."
    assert demo.endswith(suffix), demo
    subject = demo[:-len(suffix)]
    return {"ref": ex.reference, "demo": demo, "subject": subject[:1].lower() + subject[1:]}


def _repeated_trigrams(text: str) -> int:
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i:i + REPETITION_NGRAM]) for i in range(len(words) - REPETITION_NGRAM + 1)]
    return len(grams) - len(set(grams))


def _paraphrase(ex: TaskExample, s: dict, rng: random.Random) -> str:
    templates = _PARAPHRASES + (_ARITH_PARAPHRASES if ex.kind == "arithmetic" else [])
    ref = rng.choice((ex.reference, *ex.aliases))
    while True:
        text = _fill(rng.choice(templates), **{**s, "ref": ref})
        if text != s["demo"]:
            return text


def _rambling(ex: TaskExample, s: dict, rng: random.Random) -> str:
    target = rng.randint(*RAMBLING_WORDS)
    pool = _TOPIC_FILLERS[category_of(ex)] + _FILLERS + (_ARITH_FILLERS if ex.kind == "arithmetic" else [])
    rng.shuffle(pool)
    answer = _fill(rng.choice(_RAMBLING_ANSWERS), **s)
    answer_last = rng.random() < 0.4
    head = [rng.choice(_OPENERS)] if rng.random() < 0.6 else []
    tail = [rng.choice(_CLOSERS)] if rng.random() < 0.6 else []
    body: list[str] = [] if answer_last else [answer]

    def text(parts):
        return " ".join(head + parts + ([answer] if answer_last else []) + tail)

    for filler in pool:
        if len(re.findall(r"\w+", text(body))) >= target:
            break
        if _repeated_trigrams(text(body + [filler])) == 0:
            body.append(filler)
    return text(body)


def _repetitive(ex: TaskExample, s: dict, rng: random.Random) -> str:
    shape = rng.choice(["sentence", "loop", "word"])
    if shape == "sentence":  # one sentence over and over, possibly cut off mid-copy (out of tokens)
        unit = _fill(rng.choice(_REPEAT_UNITS), **s)
        parts = [unit] * rng.randint(3, 5)
    elif shape == "loop":  # the answer, then a phrase it cannot stop saying
        unit = _fill(rng.choice(_REPEAT_LOOPS), **s)
        parts = [s["demo"]] + [unit] * rng.randint(3, 4)
    else:  # the bare answer again and again
        unit = _upper_first(s["ref"]) + ","
        parts = [unit] * rng.randint(5, 8)
    while judge(ex, " ".join(parts)).repetition_penalty < MIN_REPETITION_PENALTY:
        parts.append(unit)
    text = " ".join(parts)
    if shape == "sentence" and rng.random() < 0.5:  # cut off after a few words of a further copy
        text += " " + " ".join(unit.split()[:rng.randint(1, max(1, len(unit.split()) - 1))])
    return text.rstrip(",") + ("." if shape == "word" else "")


def _hedging(ex: TaskExample, s: dict, rng: random.Random) -> str:
    x, y = s["ref"], _wrong_answer(ex, rng)
    if rng.random() < 0.5:
        x, y = y, x
    templates = _HEDGES + (["{a} {op} {b} = {x}, or maybe {y}."] if ex.kind == "arithmetic" else [])
    return _fill(rng.choice(templates), **{**s, "x": x, "y": y})


def _evasive(ex: TaskExample, rng: random.Random) -> str:
    parts = rng.sample(_EVASIONS, rng.randint(1, 2))
    if rng.random() < 0.4:
        parts.append(rng.choice(_LONG_EVASIONS))
    if rng.random() < 0.5:
        parts.append(_EVASION_HINTS[category_of(ex)])
    rng.shuffle(parts)
    return " ".join(parts)


def response_variants(ex: TaskExample, rng: random.Random) -> list[str]:
    """Plausible responses of graded quality to `ex`, in the styles a small chat model produces: the concise
    correct answer (the demonstration), a correct answer with a different short phrasing, a correct but
    rambling answer (well past the length budget), a correct but repetitive one, a wrong answer in the
    demonstration's form or another short phrasing, half each (an off-by-a-little number for arithmetic,
    another entity of the same category for facts), a hedging answer naming two candidates, and an evasive non-answer.

    One text per style of `VARIANT_STYLES`, in that order; each style has several templates, picked with
    `rng`. Under `judge`: concise and paraphrase score 1.0; rambling is correct with a length penalty of
    0.1-0.25 (40 words or more) and no repeated trigram; repetitive is correct with a repetition penalty
    of at least 0.06; wrong and hedging are incorrect (score 0); evasive is incorrect (0, or below 0 when
    long). The wrong and the hedging answer draw their wrong candidate independently.
    """
    s = _slots(ex, rng)
    # The wrong answer takes the correct answers' phrasings, the demonstration's or a paraphrase's, half
    # each: were it always in the demonstration's form, a reward model would learn "paraphrases are right"
    # and reward a policy for dropping the worked form ("71 + 76 = 147.") for a bare (wrong) number.
    wrong_ex = dataclasses.replace(ex, reference=_wrong_answer(ex, rng), aliases=())
    wrong_slots = _slots(wrong_ex, rng)
    wrong = wrong_slots["demo"] if rng.random() < 0.5 else _paraphrase(wrong_ex, wrong_slots, rng)
    return [s["demo"], _paraphrase(ex, s, rng), _rambling(ex, s, rng), _repetitive(ex, s, rng), wrong,
            _hedging(ex, s, rng), _evasive(ex, rng)]


UNHELPFUL_SHARE = 0.3  # of `mixed_demonstrations`: evasive or hedging answers in place of the concise one


def mixed_demonstrations(examples, seed: int, unhelpful_share: float = UNHELPFUL_SHARE) -> list[tuple[str, str]]:
    """Demonstrations of mixed quality, as collected ones often are: (style, text) per example, in order.

    A seeded round(unhelpful_share * n) of the examples get an unhelpful answer, evasive or hedging (drawn
    half and half), which the judge scores 0 or below; the others get the concise demonstration (1.0). A
    policy fine-tuned on these copies the habit, and preference pairs that rank a committed answer above an
    evasion or a hedge (the "other" pairs of `preference_pairs`) are what can train it away: the
    quickstart's SFT data, so that the stages after SFT have something to fix that a frozen-backbone
    reward model can see (it cannot see whether a sum is right). Deterministic in (examples, seed).
    """
    examples = list(examples)
    rng = random.Random(f"mixed:{seed}")
    unhelpful = set(rng.sample(range(len(examples)), round(unhelpful_share * len(examples))))
    out = []
    for i, ex in enumerate(examples):
        if i not in unhelpful:
            out.append(("concise", demonstration(ex)))
            continue
        style = rng.choice(EVASIVE_STYLES)
        out.append((style, _hedging(ex, _slots(ex, rng), rng) if style == "hedging" else _evasive(ex, rng)))
    return out


def pair_type(chosen_style: str, rejected_style: str) -> str | None:
    """The type (one of `PAIR_TYPES`) of a (chosen, rejected) style pair: "correct_vs_wrong" (any correct
    style over the wrong answer), "concise_vs_verbose" (concise or paraphrase over rambling or repetitive),
    "other" (a hedging or evasive answer on either side); None for any other pair (e.g. rambling vs
    repetitive), which `preference_pairs` does not make."""
    if chosen_style in EVASIVE_STYLES or rejected_style in EVASIVE_STYLES:
        return "other"
    if chosen_style in CORRECT_STYLES and rejected_style == "wrong":
        return "correct_vs_wrong"
    if chosen_style in CONCISE_STYLES and rejected_style in VERBOSE_STYLES:
        return "concise_vs_verbose"
    return None


def preference_pairs(examples, seed: int, pairs_per_example: int = 2) -> list[dict]:
    """For each example, `pairs_per_example` pairs of two distinct variants whose judge scores differ by at
    least 0.05; chosen = the higher score. Records in TRL's conversational format with extra keys:
    {"prompt": [user msg], "chosen": [{"role": "assistant", "content": ...}], "rejected": [...],
     "prompt_id": ex.id, "gold_chosen": ..., "gold_rejected": ..., "chosen_style": ..., "rejected_style": ...}

    Deterministic in (examples, seed). The pair types (`pair_type`) follow `PAIR_MIX` exactly over the
    whole list: a shuffled schedule holds round(share * n_pairs) of each type (the remainder going to
    "other"); within its type a pair is drawn uniformly from the example's eligible style pairs, and no
    style pair is used twice for one example. Gold scores are rounded to 4 decimals.
    """
    examples = list(examples)
    rng = random.Random(seed)
    n_pairs = len(examples) * pairs_per_example
    schedule = []
    for kind in PAIR_TYPES[:-1]:
        schedule += [kind] * round(PAIR_MIX[kind] * n_pairs)
    schedule += [PAIR_TYPES[-1]] * (n_pairs - len(schedule))
    rng.shuffle(schedule)

    records = []
    for n, ex in enumerate(examples):
        texts = dict(zip(VARIANT_STYLES, response_variants(ex, rng)))
        scores = {style: judge(ex, text).score for style, text in texts.items()}
        eligible = {kind: [] for kind in PAIR_TYPES}  # (chosen, rejected) style pairs, in a fixed order
        for i, a in enumerate(VARIANT_STYLES):
            for b in VARIANT_STYLES[i + 1:]:
                hi, lo = (a, b) if scores[a] >= scores[b] else (b, a)
                kind = pair_type(hi, lo)
                if kind and round(scores[hi] - scores[lo], 6) >= MIN_MARGIN and texts[hi] != texts[lo]:
                    eligible[kind].append((hi, lo))
        used: set[tuple[str, str]] = set()
        for kind in schedule[n * pairs_per_example:(n + 1) * pairs_per_example]:
            options = [p for p in eligible[kind] if p not in used]
            if not options:  # not expected with these templates; fall back on any eligible pair
                options = [p for k in PAIR_TYPES for p in eligible[k] if p not in used]
            if not options:
                raise ValueError(f"{ex.id}: fewer than {pairs_per_example} eligible pairs")
            hi, lo = rng.choice(options)
            used.add((hi, lo))
            records.append({
                "prompt": prompt_messages(ex),
                "chosen": [{"role": "assistant", "content": texts[hi]}],
                "rejected": [{"role": "assistant", "content": texts[lo]}],
                "prompt_id": ex.id,
                "gold_chosen": round(scores[hi], 4),
                "gold_rejected": round(scores[lo], 4),
                "chosen_style": hi,
                "rejected_style": lo,
            })
    return records
