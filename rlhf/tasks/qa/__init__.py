"""The built-in QA task: short factual and arithmetic questions with reference answers, and a programmatic judge.

    examples.py    the questions (arithmetic drawn from a seed, fixed fact tables), their train/test split,
                   prompts, demonstrations and jsonl records
    judging.py     `judge`: correctness minus capped length and repetition penalties (the rules are there)
    synthetic.py   responses of graded quality, demonstrations of mixed quality and judge-ordered
                   preference pairs (what scripts/make_data.py writes under reward_data/)

The names below are the task's public API, importable from `rlhf.tasks.qa` as well as from their modules.
"""

from rlhf.tasks.qa.examples import (
    TaskExample,
    build_examples,
    category_of,
    demonstration,
    example_from_record,
    fact_examples,
    prompt_messages,
    prompt_record,
)
from rlhf.tasks.qa.judging import FACT_ENTITIES, Judgement, is_correct, judge, mentions
from rlhf.tasks.qa.synthetic import (
    MIN_MARGIN,
    PAIR_MIX,
    PAIR_TYPES,
    UNHELPFUL_SHARE,
    VARIANT_STYLES,
    mixed_demonstrations,
    pair_type,
    preference_pairs,
    response_variants,
)

__all__ = [
    "FACT_ENTITIES", "MIN_MARGIN", "PAIR_MIX", "PAIR_TYPES", "UNHELPFUL_SHARE", "VARIANT_STYLES", "Judgement",
    "TaskExample", "build_examples", "category_of", "demonstration", "example_from_record", "fact_examples",
    "is_correct", "judge", "mentions", "mixed_demonstrations", "pair_type", "preference_pairs", "prompt_messages",
    "prompt_record", "response_variants",
]
