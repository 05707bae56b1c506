"""Reward functions for `rlhf policy --reward_fn module:function`: f(prompts, completions, records) -> floats
(TRL's f(prompts, completions, **columns) works too; see rlhf/reward_functions.py).

- `gold_judge`: the built-in task's judge score (a verifiable reward; needs the task fields in each record).
- `letter_frequency`: the fraction of a completion's characters that are the letter "e" (a toy reward
  that any model, even a random one, can learn to raise; used by the tests).
"""

from __future__ import annotations

from rlhf.tasks.qa.examples import example_from_record
from rlhf.tasks.qa.judging import judge


def gold_judge(prompts: list, completions: list[str], records: list[dict]) -> list[float]:
    scores = []
    for record, completion in zip(records, completions):
        task = record.get("task", record)
        ex = example_from_record({"id": record["prompt_id"], "kind": "fact", **task, "prompt": record["prompt"]})
        scores.append(judge(ex, completion).score)
    return scores


def letter_frequency(prompts: list, completions: list[str], records: list[dict], letter: str = "e") -> list[float]:
    return [c.count(letter) / max(len(c), 1) for c in completions]
