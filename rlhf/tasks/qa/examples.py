"""The QA task's examples: short factual and arithmetic questions with reference answers.

- arithmetic: addition, subtraction (non-negative results) and multiplication of
  small integers, drawn with `random.Random(seed)`; unique questions, and a
  commutative question never appears twice in swapped order.
- fact: five fixed tables of well-known facts (category in brackets):
  country capitals [capital], chemical element symbols [symbol], the day after or
  before a weekday [day], the month after or before a month [month], opposites of
  common words [opposite]. An example id is "<kind>-<category>-<slug>", e.g.
  "arith-add-0007" or "fact-capital-france"; the judge reads the category from it.
"""

import random
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskExample:
    """One question with its reference answer.

    id:        stable id "<kind>-<category>-<slug>", e.g. "arith-add-0007", "fact-capital-france"
    kind:      "arithmetic" or "fact"
    question:  the user prompt text, e.g. "What is 17 + 25?"
    reference: the canonical answer, e.g. "42" or "Paris"
    aliases:   other accepted spellings of the reference, e.g. ("Kiev",) for "Kyiv"
    """

    id: str
    kind: str
    question: str
    reference: str
    aliases: tuple[str, ...] = ()


def category_of(ex: TaskExample) -> str:
    """The group an example belongs to: "add" for "arith-add-0007", "capital" for "fact-capital-france"."""
    return ex.id.split("-")[1]


# (country, capital, aliases of the capital). Countries with a disputed, split or
# moving capital (e.g. Switzerland, Bolivia, South Africa, Indonesia) are left out.
CAPITALS = [
    ("France", "Paris", ()),
    ("Germany", "Berlin", ()),
    ("Italy", "Rome", ()),
    ("Spain", "Madrid", ()),
    ("Portugal", "Lisbon", ()),
    ("the United Kingdom", "London", ()),
    ("Ireland", "Dublin", ()),
    ("the Netherlands", "Amsterdam", ()),
    ("Belgium", "Brussels", ()),
    ("Austria", "Vienna", ()),
    ("Poland", "Warsaw", ()),
    ("the Czech Republic", "Prague", ()),
    ("Hungary", "Budapest", ()),
    ("Greece", "Athens", ()),
    ("Norway", "Oslo", ()),
    ("Sweden", "Stockholm", ()),
    ("Finland", "Helsinki", ()),
    ("Denmark", "Copenhagen", ()),
    ("Iceland", "Reykjavík", ("Reykjavik",)),
    ("Russia", "Moscow", ()),
    ("Ukraine", "Kyiv", ("Kiev",)),
    ("Turkey", "Ankara", ()),
    ("Egypt", "Cairo", ()),
    ("Kenya", "Nairobi", ()),
    ("Ethiopia", "Addis Ababa", ()),
    ("Nigeria", "Abuja", ()),
    ("Japan", "Tokyo", ()),
    ("China", "Beijing", ()),
    ("South Korea", "Seoul", ()),
    ("India", "New Delhi", ()),
    ("Pakistan", "Islamabad", ()),
    ("Nepal", "Kathmandu", ()),
    ("Thailand", "Bangkok", ()),
    ("Vietnam", "Hanoi", ()),
    ("the Philippines", "Manila", ()),
    ("Iran", "Tehran", ()),
    ("Iraq", "Baghdad", ()),
    ("Saudi Arabia", "Riyadh", ()),
    ("Afghanistan", "Kabul", ()),
    ("Australia", "Canberra", ()),
    ("New Zealand", "Wellington", ()),
    ("Canada", "Ottawa", ()),
    ("Cuba", "Havana", ()),
    ("Argentina", "Buenos Aires", ()),
    ("Brazil", "Brasília", ("Brasilia",)),
    ("Peru", "Lima", ()),
    ("Chile", "Santiago", ()),
    ("Colombia", "Bogotá", ("Bogota",)),
    ("Venezuela", "Caracas", ()),
]

# (element, symbol). Symbols that are common English words when lowercased
# ("He", "I", "In", "As", "Be", "S" as in "it's", ...) are left out, since the
# judge matches case-insensitively.
SYMBOLS = [
    ("hydrogen", "H"),
    ("carbon", "C"),
    ("nitrogen", "N"),
    ("oxygen", "O"),
    ("sodium", "Na"),
    ("potassium", "K"),
    ("iron", "Fe"),
    ("gold", "Au"),
    ("silver", "Ag"),
    ("copper", "Cu"),
    ("lead", "Pb"),
    ("mercury", "Hg"),
    ("tin", "Sn"),
    ("zinc", "Zn"),
    ("calcium", "Ca"),
    ("chlorine", "Cl"),
    ("neon", "Ne"),
    ("lithium", "Li"),
    ("nickel", "Ni"),
    ("platinum", "Pt"),
    ("uranium", "U"),
]

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December"]
# "May" is also an everyday word ("it may be"), so no month question involves May
# and May is not a contradicting month.
SKIPPED_MONTHS = {"May"}

# Pairs of opposites, asked in both directions. Pairs whose words have several
# common opposites (old: new/young, light: dark/heavy, ...) are left out.
OPPOSITES = [
    ("hot", "cold"), ("wet", "dry"), ("happy", "sad"), ("rich", "poor"),
    ("early", "late"), ("fast", "slow"), ("push", "pull"), ("buy", "sell"),
    ("north", "south"), ("east", "west"), ("strong", "weak"), ("black", "white"),
    ("alive", "dead"), ("asleep", "awake"), ("wide", "narrow"), ("friend", "enemy"),
]
OPPOSITE_ALIASES = {"fast": ("quick",), "friend": ("ally",)}  # accepted besides the reference

# Question and demonstration templates. The demonstration template is filled with
# the question's captured groups (in order) and the reference, so a demonstration
# can be rebuilt from any TaskExample, e.g. one loaded back from a jsonl record.
TEMPLATES = [
    (r"What is (\d+) ([-+×]) (\d+)\?", "{0} {1} {2} = {ref}."),
    (r"What is the capital of (.+)\?", "The capital of {0} is {ref}."),
    (r"What is the chemical symbol for (.+)\?", "The chemical symbol for {0} is {ref}."),
    (r"What (day|month) comes (after|before) (.+)\?", "The {0} {1} {2} is {ref}."),
    (r"What is the opposite of (.+)\?", "The opposite of {0} is {ref}."),
]

ARITHMETIC_OPS = {"add": ("+", lambda a, b: a + b),
                  "sub": ("-", lambda a, b: a - b),
                  "mul": ("×", lambda a, b: a * b)}


def _slug(text: str) -> str:
    text = text.lower().removeprefix("the ")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def _arithmetic_examples(rng: random.Random, n: int) -> list[TaskExample]:
    """n unique arithmetic questions, split as evenly as possible over add/sub/mul."""
    examples = []
    for i, (name, (symbol, fn)) in enumerate(ARITHMETIC_OPS.items()):
        n_op = n // 3 + (i < n % 3)
        seen = set()
        while len(seen) < n_op:
            if name == "mul":
                a, b = rng.randint(2, 20), rng.randint(2, 20)
            else:
                a, b = rng.randint(1, 99), rng.randint(1, 99)
                if name == "sub" and b > a:
                    a, b = b, a  # keep results non-negative
            key = (a, b) if name == "sub" else (min(a, b), max(a, b))  # 3+4 and 4+3 are one question
            if key in seen:
                continue
            seen.add(key)
            examples.append(TaskExample(
                id=f"arith-{name}-{len(seen) - 1:04d}",
                kind="arithmetic",
                question=f"What is {a} {symbol} {b}?",
                reference=str(fn(a, b)),
            ))
    return examples


def fact_examples() -> list[TaskExample]:
    """All fact examples, in table order (independent of any seed)."""
    def fact(category, slug, question, reference, aliases=()):
        return TaskExample(f"fact-{category}-{slug}", "fact", question, reference, tuple(aliases))

    examples = []
    for country, capital, aliases in CAPITALS:
        question = f"What is the capital of {country}?"
        examples.append(fact("capital", _slug(country), question, capital, aliases))
    for element, symbol in SYMBOLS:
        examples.append(fact("symbol", element, f"What is the chemical symbol for {element}?", symbol))
    for category, names in [("day", DAYS), ("month", MONTHS)]:
        for i, name in enumerate(names):
            for relation, other in [("after", names[(i + 1) % len(names)]), ("before", names[i - 1])]:
                if {name, other} & SKIPPED_MONTHS:
                    continue
                examples.append(fact(category, f"{relation}-{_slug(name)}",
                                     f"What {category} comes {relation} {name}?", other))
    for a, b in OPPOSITES:
        for word, opposite in [(a, b), (b, a)]:
            examples.append(fact("opposite", word, f"What is the opposite of {word}?",
                                 opposite, OPPOSITE_ALIASES.get(opposite, ())))
    return examples


def build_examples(seed: int = 0, n_arithmetic: int = 480,
                   test_fraction: float = 0.2) -> tuple[list[TaskExample], list[TaskExample]]:
    """Deterministic train/test split of all examples, disjoint by question text.

    The arithmetic questions depend on `seed`; the fact tables are fixed, but which
    facts land in the test split depends on `seed`. Each group (add, sub, mul, and
    each fact category) is shuffled and round(test_fraction * len(group)) of it goes
    to test, so both splits cover every group. Both lists are sorted by id.
    """
    rng = random.Random(seed)
    examples = _arithmetic_examples(rng, n_arithmetic) + fact_examples()
    questions = [ex.question for ex in examples]
    assert len(set(questions)) == len(questions), "duplicate questions"
    assert len({ex.id for ex in examples}) == len(examples), "duplicate ids"

    groups: dict[str, list[TaskExample]] = {}
    for ex in examples:
        groups.setdefault(category_of(ex), []).append(ex)
    train, test = [], []
    for group in groups.values():
        rng.shuffle(group)
        n_test = round(test_fraction * len(group))
        test += group[:n_test]
        train += group[n_test:]
    train.sort(key=lambda ex: ex.id)
    test.sort(key=lambda ex: ex.id)
    assert not {ex.question for ex in train} & {ex.question for ex in test}, "train/test overlap"
    return train, test


def prompt_messages(ex: TaskExample) -> list[dict]:
    """The chat prompt for an example: a single user turn holding the question."""
    return [{"role": "user", "content": ex.question}]


def demonstration(ex: TaskExample) -> str:
    """A short, correct answer in one sentence, e.g. "17 + 25 = 42." or
    "The capital of France is Paris.". Deterministic; scores 1.0 under `judge`."""
    for pattern, template in TEMPLATES:
        m = re.fullmatch(pattern, ex.question)
        if m:
            return template.format(*m.groups(), ref=ex.reference)
    raise ValueError(f"no demonstration template matches {ex.question!r}")


def prompt_record(ex: TaskExample) -> dict:
    """The jsonl record of an example (as in reward_data/prompts_*.jsonl)."""
    return {"id": ex.id, "kind": ex.kind, "prompt": prompt_messages(ex),
            "reference": ex.reference, "aliases": list(ex.aliases)}


def example_from_record(record: dict) -> TaskExample:
    """Inverse of `prompt_record`: rebuild the TaskExample from a prompts jsonl record."""
    question = [m for m in record["prompt"] if m["role"] == "user"][-1]["content"]
    return TaskExample(record["id"], record["kind"], question, record["reference"],
                       tuple(record.get("aliases", ())))
