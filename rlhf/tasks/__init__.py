"""Built-in tasks. `qa`: short factual and arithmetic questions with a programmatic judge."""

from rlhf.tasks.qa.examples import (TaskExample, build_examples, demonstration, example_from_record, prompt_messages,
                                    prompt_record)
from rlhf.tasks.qa.judging import Judgement, is_correct, judge
from rlhf.tasks.qa.synthetic import preference_pairs, response_variants

__all__ = [
    "Judgement",
    "TaskExample",
    "build_examples",
    "demonstration",
    "example_from_record",
    "is_correct",
    "judge",
    "prompt_messages",
    "preference_pairs",
    "prompt_record",
    "response_variants",
]
