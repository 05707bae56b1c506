"""A simulated annotator: the task's programmatic judge gives each completion a gold score, and the annotator
ranks the k completions by Plackett-Luce sampling on those scores, which for two completions is Bradley-Terry:

    P(a preferred to b) = sigma((gold_a - gold_b) / temperature)

temperature 0 always prefers the higher gold score (equal scores: a fair coin). With probability
`flip_rate` the whole ranking is then reversed, which for a pair is a label flip (annotator error).
So, for pairs with distinct gold scores, the expected agreement with the noiseless judge is

    (1 - flip_rate) * sigma(|d| / T) + flip_rate * (1 - sigma(|d| / T)),   d = gold_a - gold_b,

and exactly 1 - flip_rate at temperature 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rlhf.data import DataError
from rlhf.labeling.store import Candidates
from rlhf.tasks.qa.examples import example_from_record
from rlhf.tasks.qa.judging import judge


def gold_scores(cands: Candidates) -> list[float]:
    """The built-in task's judge score of each completion (the record carries the task fields)."""
    task = cands.record.get("task") or {}
    if "reference" not in task:
        raise DataError(f"{cands.source}: the simulated annotator needs the task's reference answer "
                         "(a 'task' object with 'reference'); these prompts do not come from the built-in task")
    ex = example_from_record({"id": cands.prompt_id, "kind": "fact", **task, "prompt": cands.prompt})
    return [judge(ex, t).score for t in cands.texts]


@dataclass
class SimulatedAnnotator:
    temperature: float = 0.1
    flip_rate: float = 0.0

    def __post_init__(self):
        if self.temperature < 0 or not 0 <= self.flip_rate <= 1:
            raise ValueError("temperature must be >= 0 and flip_rate in [0, 1]")

    def rank(self, gold: list[float], rng: np.random.Generator) -> list[int]:
        """Indices from most to least preferred: Plackett-Luce via the Gumbel-max trick."""
        g = np.asarray(gold, dtype=np.float64)
        noise = rng.gumbel(size=len(g))
        if self.temperature == 0:
            keys = g + 1e-9 * noise  # ties broken at random, otherwise the higher score wins
        else:
            keys = g / self.temperature + noise
        order = [int(i) for i in np.argsort(-keys, kind="stable")]
        if rng.random() < self.flip_rate:
            order.reverse()
        return order

    def expected_agreement(self, gold_a: float, gold_b: float) -> float:
        """P(the annotator agrees with the noiseless judge) on one pair with distinct gold scores."""
        d = abs(gold_a - gold_b)
        p = 1.0 if self.temperature == 0 else 1.0 / (1.0 + math.exp(-d / self.temperature))
        return (1 - self.flip_rate) * p + self.flip_rate * (1 - p)
