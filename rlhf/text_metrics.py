"""Reference-based metrics that need no download: exact match, token F1 and reference containment.

The `evaluate` library loads every metric from the hub on first use, so on a machine without network its
`exact_match` and `rouge` fail before they compute anything. These three are the ones that matter for short
factual answers (the built-in task's), computed here with the answer normalisation of SQuAD's official script
(lower case, punctuation and the articles a/an/the removed, whitespace collapsed). Each takes the best over a
reference and its aliases (other accepted spellings).
"""

from __future__ import annotations

import re
import string
from collections import Counter

BUILTIN = ("exact_match", "token_f1", "contains_reference")

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> list[str]:
    """SQuAD normalisation, as tokens: lower, drop punctuation and articles, split on whitespace."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 if the normalised prediction equals a normalised answer."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answers: list[str]) -> float:
    """Best token-overlap F1 between the prediction and an answer (SQuAD's F1)."""
    p = normalize_answer(prediction)
    best = 0.0
    for answer in answers:
        a = normalize_answer(answer)
        common = sum((Counter(p) & Counter(a)).values())
        if common:
            precision, recall = common / len(p), common / len(a)
            best = max(best, 2 * precision * recall / (precision + recall))
        elif not p and not a:
            best = 1.0
    return best


def contains_reference(prediction: str, answers: list[str]) -> float:
    """1.0 if a normalised answer appears in the normalised prediction as a run of whole tokens."""
    p = normalize_answer(prediction)
    for answer in answers:
        a = normalize_answer(answer)
        if a and any(p[i:i + len(a)] == a for i in range(len(p) - len(a) + 1)):
            return 1.0
    return 0.0


_FUNCTIONS = {"exact_match": exact_match, "token_f1": token_f1, "contains_reference": contains_reference}


def builtin_metric(name: str, predictions: list[str], answers: list[list[str]]) -> float:
    """Mean of a built-in metric over predictions, each with its list of accepted answers."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} references")
    fn = _FUNCTIONS[name]
    return sum(fn(p, a) for p, a in zip(predictions, answers)) / max(len(predictions), 1)
