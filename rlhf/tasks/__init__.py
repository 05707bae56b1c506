"""Built-in tasks. `qa`: short factual and arithmetic questions with a programmatic judge."""

from rlhf.tasks.qa import (
    Judgement,
    TaskExample,
    build_examples,
    demonstration,
    example_from_record,
    is_correct,
    judge,
    prompt_messages,
    preference_pairs,
    prompt_record,
    response_variants,
)

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
