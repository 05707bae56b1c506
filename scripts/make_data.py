"""Regenerate the committed task data under reward_data/ from rlhf.tasks.qa.

    python scripts/make_data.py --seed 0 --out reward_data

Writes, deterministically (same bytes on every run):
    prompts_train.jsonl, prompts_test.jsonl  questions with reference answers
    sft_train.jsonl, sft_test.jsonl          demonstrations (TRL conversational prompt-completion)
    README.md                                what the files are and how to regenerate them
tests/test_tasks.py checks that the committed files match this script byte for byte.
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from rlhf.tasks.qa import build_examples, demonstration, prompt_messages, prompt_record  # noqa: E402

README = """\
# reward_data

Questions, reference answers and demonstrations of the built-in task `rlhf.tasks.qa`
(short arithmetic and factual questions; see that module's docstring for the judge).
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
    rows = []
    for split, examples in splits.items():
        write_jsonl(args.out / f"prompts_{split}.jsonl", [prompt_record(ex) for ex in examples])
        write_jsonl(args.out / f"sft_{split}.jsonl", [
            {"id": ex.id, "prompt": prompt_messages(ex),
             "completion": [{"role": "assistant", "content": demonstration(ex)}]}
            for ex in examples
        ])
        counts = Counter(ex.kind for ex in examples)
        rows.append((split, counts["arithmetic"], counts["fact"], len(examples)))

    table = "\n".join(f"| {kind}_{split}.jsonl | {total} | {split} {what} |"
                      for split, _, _, total in rows
                      for kind, what in [("prompts", "questions"), ("sft", "demonstrations")])
    readme = README.format(seed=args.seed, table=table)
    (args.out / "README.md").write_text(readme, encoding="utf-8", newline="\n")

    print(f"wrote {args.out}/ (seed {args.seed})")
    print(f"{'split':<6} {'arithmetic':>10} {'fact':>5} {'total':>6}")
    for split, n_arith, n_fact, total in rows:
        print(f"{split:<6} {n_arith:>10} {n_fact:>5} {total:>6}")


if __name__ == "__main__":
    main()
