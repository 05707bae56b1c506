"""Regenerate the committed task data under reward_data/ from rlhf.tasks.qa.

    python scripts/make_data.py --seed 0 --out reward_data

Writes, deterministically (same bytes on every run):
    prompts_train.jsonl, prompts_test.jsonl  questions with reference answers
    sft_train.jsonl, sft_test.jsonl          demonstrations (TRL conversational prompt-completion)
    sft_mixed_train.jsonl                    demonstrations of mixed quality (the quickstart's SFT data)
    pairs_train.jsonl, pairs_test.jsonl      judge-ordered preference pairs (TRL conversational preference)
    README.md                                what the files are and how to regenerate them
tests/test_tasks.py checks that the committed files match this script byte for byte.
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from rlhf.tasks.qa.examples import build_examples, demonstration, prompt_messages, prompt_record  # noqa: E402
from rlhf.tasks.qa.synthetic import (  # noqa: E402
    MIN_MARGIN,
    PAIR_MIX,
    PAIR_TYPES,
    UNHELPFUL_SHARE,
    VARIANT_STYLES,
    mixed_demonstrations,
    pair_type,
    preference_pairs,
)

PAIRS_PER_EXAMPLE = 2

README = """\
# reward_data

Questions, reference answers, demonstrations and judge-ordered preference pairs of the built-in
task `rlhf.tasks.qa` (short arithmetic and factual questions; see that module's docstring for the judge).
Generated, do not edit by hand; regenerate with

    python scripts/make_data.py --seed {seed} --out reward_data

`tests/test_tasks.py` checks that these files match the script byte for byte.
All files are UTF-8 JSON Lines: one JSON object per line, keys sorted.

| file | records | contents |
|---|---|---|
{table}

## prompts_train.jsonl, prompts_test.jsonl

One record per question; the train and test questions are disjoint.

    {{"aliases": [], "id": "fact-capital-france", "kind": "fact",
     "prompt": [{{"content": "What is the capital of France?", "role": "user"}}],
     "reference": "Paris"}}

- `id`: stable id `<kind>-<category>-<slug>`, e.g. `arith-add-0007`, `fact-capital-france`
- `kind`: `arithmetic` or `fact`
- `prompt`: the chat messages to send to the policy (a single user turn)
- `reference`, `aliases`: the canonical answer and other accepted spellings
  (`rlhf.tasks.qa.example_from_record` turns a record back into a `TaskExample` for `judge`)

## sft_train.jsonl, sft_test.jsonl

One demonstration per question, in TRL's conversational prompt-completion format:
a short, correct, one-sentence answer that scores 1.0 under the judge.

    {{"completion": [{{"content": "The capital of France is Paris.", "role": "assistant"}}],
     "id": "fact-capital-france",
     "prompt": [{{"content": "What is the capital of France?", "role": "user"}}]}}

## sft_mixed_train.jsonl

The train questions' demonstrations of mixed quality, as collected demonstrations often are
(`rlhf.tasks.qa.mixed_demonstrations`): {unhelpful} of them ({unhelpful_share:.0%}) are replaced by an unhelpful
answer, evasive ({n_evasive}) or hedging ({n_hedging}) as in the styles below, judged 0 or below; the rest are
the concise demonstrations of `sft_train.jsonl`. A `style` key says which. The quickstart fine-tunes on
this file, so that its SFT policy has a flaw that preference pairs can train away and that a reward
model on a frozen backbone can see (it cannot see whether a sum is right).

## pairs_train.jsonl, pairs_test.jsonl

Preference pairs for training and evaluating a reward model, {per_example} per question, in TRL's
conversational preference format with extra keys (which `rlhf.preferences.read_pairs` keeps in `meta`).
`pairs_train` is made from the train questions and `pairs_test` from the test questions, so the two are
disjoint by prompt.

    {{"chosen": [{{"content": "The capital of France is Paris.", "role": "assistant"}}],
     "chosen_style": "concise", "gold_chosen": 1.0, "gold_rejected": 0.0,
     "prompt": [{{"content": "What is the capital of France?", "role": "user"}}],
     "prompt_id": "fact-capital-france",
     "rejected": [{{"content": "The capital of France is Madrid.", "role": "assistant"}}],
     "rejected_style": "wrong"}}

- `prompt_id`: the question's `id` (as in the prompts files)
- `gold_chosen`, `gold_rejected`: the judge's scores (`rlhf.tasks.qa.judge`, default settings), rounded to
  4 decimals; the chosen response always scores at least {margin} higher (no ties)
- `chosen_style`, `rejected_style`: which kind of response each is (below)

A rival entity is another answer of the question's category (another capital, symbol, weekday, month
or opposite word) that the question does not name, a near miss where there is one: a capital or
symbol close by in its table, a day or month up to two steps away, a word of a related opposite pair.

How they are made (`rlhf.tasks.qa.response_variants` and `preference_pairs`, seeded with `--seed`):
each question gets one response in each of seven styles, filled from several templates per style so
that no single phrasing marks a good or a bad answer:

| style | what | judge outcome |
|---|---|---|
| concise | the demonstration | correct, 1.0 |
| paraphrase | a correct answer in another short phrasing (sometimes an alias) | correct, 1.0 |
| rambling | the correct answer among filler sentences, 40 words or more | correct, length penalty 0.10-0.25 |
| repetitive | the correct answer repeated or looping (sometimes cut off) | correct, repetition penalty >= 0.06 |
| wrong | a wrong answer, a number off by a little or a rival entity, in the demonstration's form or a paraphrase's (half each) | incorrect, 0 |
| hedging | two candidates, the reference and a wrong one | incorrect, 0 |
| evasive | a non-answer, sometimes long | incorrect, 0 or below |

Then {per_example} pairs of styles per question, distinct style pairs whose gold scores are at least
{margin} apart, the higher-scoring response chosen. The pair types follow a shuffled schedule with
exactly these shares of each file (rounded), {mix}:

- `correct_vs_wrong`: any correct style over the wrong answer
- `concise_vs_verbose`: concise or paraphrase over rambling or repetitive
- `other`: a hedging or evasive answer on either side, against a correct or a wrong answer or each other
  (a pair of two incorrect answers only where a long evasion scores below 0)

Within its type a pair is drawn uniformly from the question's eligible style pairs. Counts:

| pair type | {split_heads} |
|---|{split_rules}
{mix_table}

| chosen style | rejected style | {split_heads} |
|---|---|{split_rules}
{style_table}
"""


def write_jsonl(path: Path, records: list[dict]) -> None:
    lines = [json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records]
    path.write_text("".join(lines), encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the arithmetic questions and the split")
    parser.add_argument("--out", type=Path, default=Path("reward_data"), help="output directory")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    splits = dict(zip(["train", "test"], build_examples(seed=args.seed)))
    rows, pair_counts = [], {}
    for split, examples in splits.items():
        write_jsonl(args.out / f"prompts_{split}.jsonl", [prompt_record(ex) for ex in examples])
        write_jsonl(args.out / f"sft_{split}.jsonl", [
            {"id": ex.id, "prompt": prompt_messages(ex),
             "completion": [{"role": "assistant", "content": demonstration(ex)}]}
            for ex in examples
        ])
        if split == "train":
            mixed = mixed_demonstrations(examples, seed=args.seed)
            write_jsonl(args.out / "sft_mixed_train.jsonl", [
                {"id": ex.id, "prompt": prompt_messages(ex), "style": style,
                 "completion": [{"role": "assistant", "content": text}]}
                for ex, (style, text) in zip(examples, mixed)
            ])
            styles = Counter(style for style, _ in mixed)
        pairs = preference_pairs(examples, seed=args.seed, pairs_per_example=PAIRS_PER_EXAMPLE)
        write_jsonl(args.out / f"pairs_{split}.jsonl", pairs)
        pair_counts[split] = Counter((p["chosen_style"], p["rejected_style"]) for p in pairs)
        counts = Counter(ex.kind for ex in examples)
        rows.append((split, counts["arithmetic"], counts["fact"], len(examples), len(pairs)))

    table = "\n".join(f"| {kind}_{split}.jsonl | {n} | {split} {what} |"
                      for split, _, _, total, n_pairs in rows
                      for kind, what, n in [("prompts", "questions", total), ("sft", "demonstrations", total),
                                            ("pairs", "preference pairs", n_pairs)])
    table += (f"\n| sft_mixed_train.jsonl | {rows[0][3]} | train demonstrations of mixed quality: "
              f"{styles['evasive'] + styles['hedging']} unhelpful |")
    readme = README.format(
        seed=args.seed, table=table, unhelpful=styles["evasive"] + styles["hedging"],
        unhelpful_share=UNHELPFUL_SHARE, n_evasive=styles["evasive"], n_hedging=styles["hedging"],
        per_example=PAIRS_PER_EXAMPLE, margin=MIN_MARGIN,
        mix=", ".join(f"{PAIR_MIX[kind]:.0%} {kind}" for kind in PAIR_TYPES),
        split_heads=" | ".join(f"{split} pairs" for split in splits),
        split_rules="---:|" * len(splits),
        mix_table=_mix_table(pair_counts), style_table=_style_table(pair_counts))
    (args.out / "README.md").write_text(readme, encoding="utf-8", newline="\n")

    print(f"wrote {args.out}/ (seed {args.seed})")
    print(f"{'split':<6} {'arithmetic':>10} {'fact':>5} {'total':>6} {'pairs':>6}")
    for split, n_arith, n_fact, total, n_pairs in rows:
        print(f"{split:<6} {n_arith:>10} {n_fact:>5} {total:>6} {n_pairs:>6}")


def _mix_table(pair_counts: dict[str, Counter]) -> str:
    """Rows "| type | n (share) | ... |" of the pair types per split, and a total row."""
    lines = []
    for kind in PAIR_TYPES:
        cells = []
        for counts in pair_counts.values():
            n = sum(c for styles, c in counts.items() if pair_type(*styles) == kind)
            cells.append(f"{n} ({n / sum(counts.values()):.1%})")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines.append("| total | " + " | ".join(str(sum(c.values())) for c in pair_counts.values()) + " |")
    return "\n".join(lines)


def _style_table(pair_counts: dict[str, Counter]) -> str:
    """Rows "| chosen | rejected | n | ... |" of every style pair that occurs, in style order."""
    order = {style: i for i, style in enumerate(VARIANT_STYLES)}
    styles = sorted(set().union(*pair_counts.values()), key=lambda p: (order[p[0]], order[p[1]]))
    return "\n".join(f"| {chosen} | {rejected} | " + " | ".join(str(c[chosen, rejected]) for c in pair_counts.values())
                     + " |" for chosen, rejected in styles)


if __name__ == "__main__":
    main()
