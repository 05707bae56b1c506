"""The QA task's judge: a programmatic score of a completion to a `TaskExample`.

This is the gold signal of the "simulated annotator": a small chat model is asked
questions such as "What is 17 + 25?" or "What is the capital of France?", and
`judge` scores its completion. The judge rewards exactly what likelihood-trained
small models get wrong: being correct, being concise, and not repeating itself.

Rules
-----
The completion is lowercased and its whitespace collapsed before matching.

1. Correctness (`correct`). The reference, or one of its aliases, must be present,
   and no contradicting answer may be present.
   - Words and phrases are matched whole (case-insensitively): the characters
     around a match may not be letters, digits, "_" or "-", so "Rome" does not
     match "Romeo" and "cold" does not match "cold-hearted".
   - Numbers are matched as numbers: a number is a run of digits with an optional
     decimal part, so "42" is not found in "142" or "4.2", while "42.0" equals 42.
     Signs are ignored (all arithmetic answers are non-negative).
   - Arithmetic contradiction: any number in the completion other than the
     reference and the question's operands. "17 + 25 = 42." is correct,
     "It is 42 or maybe 43." is not.
   - Fact contradiction: any other entity of the same category (another capital,
     another element symbol, another weekday, ...: the references and aliases of
     that category's table), except entities that appear in the question itself.
     "The day after Tuesday is Wednesday." is correct; "Paris, or maybe Lyon" is
     correct (Lyon is no capital); "Paris or London" is not.
   - The empty completion is incorrect. Negation is not understood: "not Paris"
     counts as naming Paris. The judge is deliberately strict: it is meant for
     short answers, and hedging between answers is a failure.
2. Concision (`length_penalty`). Words are runs of letters/digits (`\\w+`), so
   "17 + 25 = 42." has 3 words and "don't" has 2. Each word beyond `length_budget`
   costs `length_cost`; the penalty is capped at `MAX_LENGTH_PENALTY`:
       length_penalty = min(length_cost * max(0, n_words - length_budget), 0.25)
3. Repetition (`repetition_penalty`). Over the same words, count word trigrams
   that repeat an earlier trigram (= number of trigrams - number of distinct
   trigrams). Each costs `repetition_cost`; the penalty is capped at
   `MAX_REPETITION_PENALTY`:
       repetition_penalty = min(repetition_cost * n_repeated_trigrams, 0.25)

   score = 1.0 * correct - length_penalty - repetition_penalty,   in [-0.5, 1.0]

Because the penalties together are at most 0.5, every correct answer (score in
[0.5, 1]) beats every wrong one (score in [-0.5, 0]); among answers of equal
correctness the shorter, less repetitive one wins. Every `demonstration` scores
exactly 1.0. With the defaults a correct 30-word answer scores 1 - 10 * 0.005 = 0.95.
"""

import re
from dataclasses import dataclass

from rlhf.tasks.qa.examples import TaskExample, category_of, fact_examples

MAX_LENGTH_PENALTY = 0.25
MAX_REPETITION_PENALTY = 0.25
REPETITION_NGRAM = 3


@dataclass(frozen=True)
class Judgement:
    """The judge's verdict on one completion.

    score = 1.0 * correct - length_penalty - repetition_penalty, in [-0.5, 1.0]
    (see the module docstring for the rules).
    """

    score: float
    correct: bool
    length_penalty: float
    repetition_penalty: float



def _numbers(text: str) -> set[float]:
    """All numbers in text: digit runs with an optional decimal part ("4.2" is one number)."""
    return {float(s) for s in re.findall(r"\d+(?:\.\d+)?", text)}


def mentions(text: str, phrase: str) -> bool:
    """Whether lowercased `text` contains `phrase` as a whole word/phrase."""
    phrase = " ".join(phrase.lower().split())
    return re.search(r"(?<![\w-])" + re.escape(phrase) + r"(?![\w-])", text) is not None


def _entities_by_category() -> dict[str, set[str]]:
    """Every accepted answer (reference or alias) of each fact category, lowercased."""
    entities: dict[str, set[str]] = {}
    for ex in fact_examples():
        entities.setdefault(category_of(ex), set()).update(a.lower() for a in (ex.reference, *ex.aliases))
    return entities


FACT_ENTITIES = _entities_by_category()


def is_correct(ex: TaskExample, completion: str) -> bool:
    """The correctness rule of `judge`: the answer is present and nothing contradicts it."""
    text = " ".join(completion.lower().split())
    question = " ".join(ex.question.lower().split())
    if ex.kind == "arithmetic":
        found = _numbers(text)
        answer = float(ex.reference)
        return answer in found and not (found - _numbers(question) - {answer})
    answers = {a.lower() for a in (ex.reference, *ex.aliases)}
    if not any(mentions(text, a) for a in answers):
        return False
    rivals = FACT_ENTITIES[category_of(ex)] - answers
    return not any(mentions(text, r) and not mentions(question, r) for r in rivals)


def judge(ex: TaskExample, completion: str, *, length_budget: int = 20,
          length_cost: float = 0.005, repetition_cost: float = 0.02) -> Judgement:
    """Score a completion to `ex`: correctness minus capped length and repetition
    penalties (rules in the module docstring)."""
    words = re.findall(r"\w+", completion.lower())
    length_penalty = min(length_cost * max(0, len(words) - length_budget), MAX_LENGTH_PENALTY)
    ngrams = [tuple(words[i:i + REPETITION_NGRAM]) for i in range(len(words) - REPETITION_NGRAM + 1)]
    n_repeated = len(ngrams) - len(set(ngrams))
    repetition_penalty = min(repetition_cost * n_repeated, MAX_REPETITION_PENALTY)
    correct = is_correct(ex, completion)
    score = float(correct) - length_penalty - repetition_penalty
    return Judgement(score, correct, length_penalty, repetition_penalty)
