"""Short factual and arithmetic questions with reference answers, and a programmatic judge.

This is the gold signal of the "simulated annotator": a small chat model is asked
questions such as "What is 17 + 25?" or "What is the capital of France?", and
`judge` scores its completion. The judge rewards exactly what likelihood-trained
small models get wrong: being correct, being concise, and not repeating itself.

Examples
--------
- arithmetic: addition, subtraction (non-negative results) and multiplication of
  small integers, drawn with `random.Random(seed)`; unique questions, and a
  commutative question never appears twice in swapped order.
- fact: five fixed tables of well-known facts (category in brackets):
  country capitals [capital], chemical element symbols [symbol], the day after or
  before a weekday [day], the month after or before a month [month], opposites of
  common words [opposite]. An example id is "<kind>-<category>-<slug>", e.g.
  "arith-add-0007" or "fact-capital-france"; the judge reads the category from it.

Judge rules
-----------
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

import dataclasses
import random
import re
from dataclasses import dataclass

# --------------------------------------------------------------------------- examples


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


def _fact_examples() -> list[TaskExample]:
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
    examples = _arithmetic_examples(rng, n_arithmetic) + _fact_examples()
    questions = [ex.question for ex in examples]
    assert len(set(questions)) == len(questions), "duplicate questions"
    assert len({ex.id for ex in examples}) == len(examples), "duplicate ids"

    groups: dict[str, list[TaskExample]] = {}
    for ex in examples:
        groups.setdefault(_category(ex), []).append(ex)
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


# --------------------------------------------------------------------------- judge

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


def _category(ex: TaskExample) -> str:
    """The group an example belongs to: "add" for "arith-add-0007", "capital" for "fact-capital-france"."""
    return ex.id.split("-")[1]


def _numbers(text: str) -> set[float]:
    """All numbers in text: digit runs with an optional decimal part ("4.2" is one number)."""
    return {float(s) for s in re.findall(r"\d+(?:\.\d+)?", text)}


def _mentions(text: str, phrase: str) -> bool:
    """Whether lowercased `text` contains `phrase` as a whole word/phrase."""
    phrase = " ".join(phrase.lower().split())
    return re.search(r"(?<![\w-])" + re.escape(phrase) + r"(?![\w-])", text) is not None


def _entities_by_category() -> dict[str, set[str]]:
    """Every accepted answer (reference or alias) of each fact category, lowercased."""
    entities: dict[str, set[str]] = {}
    for ex in _fact_examples():
        entities.setdefault(_category(ex), set()).update(a.lower() for a in (ex.reference, *ex.aliases))
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
    if not any(_mentions(text, a) for a in answers):
        return False
    rivals = FACT_ENTITIES[_category(ex)] - answers
    return not any(_mentions(text, r) and not _mentions(question, r) for r in rivals)


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


# --------------------------------------------------------------------------- preference pairs
#
# Responses of graded quality to each question, in the styles a small chat model produces, and
# preference pairs between them whose order is the judge's. Every template below is free of digits and
# of every fact entity (capitals, symbols, weekdays, months, opposites), so that filling in the
# reference, the operands or a chosen rival answer is all that decides correctness.

VARIANT_STYLES = ("concise", "paraphrase", "rambling", "repetitive", "wrong", "hedging", "evasive")
CORRECT_STYLES = ("concise", "paraphrase", "rambling", "repetitive")  # judged correct
CONCISE_STYLES = ("concise", "paraphrase")  # correct, no penalty: score 1.0
VERBOSE_STYLES = ("rambling", "repetitive")  # correct, with a length or a repetition penalty
EVASIVE_STYLES = ("hedging", "evasive")  # no committed answer: judged incorrect

PAIR_TYPES = ("correct_vs_wrong", "concise_vs_verbose", "other")
PAIR_MIX = {"correct_vs_wrong": 0.5, "concise_vs_verbose": 0.25, "other": 0.25}  # target shares of the pairs
MIN_MARGIN = 0.05  # least gold score difference of a pair (no ties)
MIN_REPETITION_PENALTY = 0.06  # the repetitive style repeats until its penalty is at least this
RAMBLING_WORDS = (40, 64)  # the rambling style grows to at least a target word count drawn from this range

_OP_WORDS = {"+": ("plus", "added to"), "-": ("minus",), "×": ("times", "multiplied by")}

_PARAPHRASES = ["{Ref}", "{Ref}.", "It's {ref}.", "The answer is {ref}.", "That would be {ref}.",
                "{Ref} is {subject}.", "It is {ref}.", "Answer: {ref}"]
_ARITH_PARAPHRASES = ["{a} {opword} {b} is {ref}.", "{a} {opword} {b} equals {ref}.",
                      "{a} {op} {b} is {ref}.", "The result is {ref}."]

_OPENERS = ["Great question!", "Sure, I can help with that.", "Of course!", "Let's think about this together.",
            "Good question, thanks for asking.", "Certainly! Here is what I know."]
_CLOSERS = ["I hope this helps!", "Let me know if you have any other questions.",
            "Feel free to ask if anything is unclear.", "Is there anything else you would like to know?"]
_FILLERS = [
    "This is a common question, and it comes up a lot in quizzes and homework.",
    "It is always a good idea to double-check answers like this one.",
    "Many people learn this sort of thing at school and remember it for years.",
    "Knowing facts like this can be surprisingly useful in everyday life.",
    "If you want to be completely sure, you can confirm it in a reliable reference book.",
    "There is usually a simple trick that makes it easy to remember.",
    "Questions like this are a nice way to practise and keep your mind sharp.",
    "Teachers often use this kind of exercise as a warm-up at the start of a lesson.",
    "Once you have seen it a few times, it becomes second nature.",
    "Of course, context matters, but in this case the answer is clear.",
]
_TOPIC_FILLERS = {
    "add": ["Addition combines two quantities into a single total.",
            "Adding numbers in either order gives the same sum."],
    "sub": ["Subtraction finds the difference between two numbers.",
            "You can check a subtraction by adding the result back to the smaller number."],
    "mul": ["Multiplication is repeated addition, so the result grows quickly.",
            "Learning the multiplication tables by heart makes sums like this much quicker to do."],
    "capital": ["A capital city is usually where the national government and parliament are based.",
                "Capitals often host embassies, museums and important historical sites."],
    "symbol": ["Chemical symbols are short abbreviations used on the periodic table.",
               "Some symbols come from the Latin name of the element rather than its English one."],
    "day": ["A week has seven days, and they always follow one another in the same order.",
            "The names of the days go back a very long way."],
    "month": ["The year has twelve months, and they always come in the same order.",
              "Some months are longer than others, but the order never changes."],
    "opposite": ["Opposites, also called antonyms, are words with contrary meanings.",
                 "Learning antonyms is a good way to build your vocabulary."],
}
_ARITH_FILLERS = ["To get the result, we simply apply the operation to the two numbers.",
                  "You can verify this on paper or with a calculator.",
                  "Arithmetic like this is the foundation of more advanced mathematics."]
_RAMBLING_ANSWERS = ["{Demo}", "{Ref} is {subject}.", "So, the answer is {ref}.", "The answer here is {ref}."]

_REPEAT_UNITS = ["{Demo}", "The answer is {ref}.", "{Ref} is {subject}.", "It is {ref}.", "{Ref}."]
_REPEAT_LOOPS = ["That is the answer.", "I am sure of it.", "It is {ref}.", "The answer is {ref}."]

_HEDGES = ["It's either {x} or {y}.", "I think it's {x}, but it might be {y}.", "Maybe {x}? Or {y}. I'm not sure.",
           "{X} or {y}, I can't remember which.", "Probably {x}, although {y} is also possible.",
           "{Subject} is {x} or {y}.", "Either {x} or {y}, I believe."]

_EVASIONS = ["I'm not sure.", "I don't know the answer to that.", "That's a good question.",
             "I'd rather not guess.", "It depends on the context.", "Sorry, I can't answer that right now.",
             "Let me think about it and get back to you.", "There are different opinions on this."]
_LONG_EVASIONS = [
    "As an AI language model, I try not to give answers that I cannot verify, so I would rather not say.",
    "That is an interesting question, and there are several ways one could approach it depending on "
    "what exactly you are looking for.",
    "I don't have enough information to give you a reliable answer, and I would not want to mislead you.",
]
_EVASION_HINTS = {
    "add": "You could check with a calculator.", "sub": "You could check with a calculator.",
    "mul": "A multiplication table would tell you.", "capital": "An atlas or a map would tell you.",
    "symbol": "The periodic table lists it.", "day": "A calendar would tell you.",
    "month": "A calendar would tell you.", "opposite": "A dictionary or thesaurus would list it.",
}


def _template_texts() -> list[str]:
    """Every fixed text the variants are built from (tests check that none holds a digit or an entity)."""
    topic = [s for group in _TOPIC_FILLERS.values() for s in group]
    return (_PARAPHRASES + _ARITH_PARAPHRASES + _OPENERS + _CLOSERS + _FILLERS + topic + _ARITH_FILLERS
            + _RAMBLING_ANSWERS + _REPEAT_UNITS + _REPEAT_LOOPS + _HEDGES + _EVASIONS + _LONG_EVASIONS
            + list(_EVASION_HINTS.values()))


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(template: str, **values: str) -> str:
    """`template` with {name} and {Name} (the value with its first letter upper-cased) filled in."""
    values = {**values, **{k.capitalize(): _upper_first(v) for k, v in values.items()}}
    return template.format(**values)


def _rival_references() -> dict[str, list[str]]:
    """The references of each fact category, as spelled in the tables, in table order."""
    rivals: dict[str, list[str]] = {}
    for ex in _fact_examples():
        names = rivals.setdefault(_category(ex), [])
        if ex.reference not in names:
            names.append(ex.reference)
    return rivals


FACT_REFERENCES = _rival_references()


def _near_misses(category: str, reference: str) -> list[str]:
    """The entities a model most plausibly confuses with `reference`: capitals and symbols at most three
    rows away in their table (the tables run roughly by region and by kind), days and months at most two
    steps away, and for opposites the two words of the neighbouring pair (hot/cold ~ wet/dry,
    north/south ~ east/west, ...)."""
    if category in ("capital", "symbol"):
        table = [c for _, c, _ in CAPITALS] if category == "capital" else [s for _, s in SYMBOLS]
        i = table.index(reference)
        return table[max(0, i - 3):i + 4]
    if category in ("day", "month"):
        cycle = DAYS if category == "day" else MONTHS
        i = cycle.index(reference)
        return [cycle[(i + d) % len(cycle)] for d in (-2, -1, 1, 2)]
    k = next(k for k, pair in enumerate(OPPOSITES) if reference in pair)
    return list(OPPOSITES[k ^ 1])


def _wrong_answer(ex: TaskExample, rng: random.Random) -> str:
    """A plausible wrong answer: a number off by a little (by 1, 2 or 10, or for a product by one operand),
    or another entity of the same category, a near miss where there is one (`_near_misses`). Never an
    accepted answer, a question operand or an entity the question names, so that naming it makes any
    completion incorrect."""
    if ex.kind == "arithmetic":
        a, _, b = re.fullmatch(TEMPLATES[0][0], ex.question).groups()
        ref = int(ex.reference)
        deltas = [-10, -2, -1, 1, 2, 10]
        if _category(ex) == "mul":
            deltas += [-int(a), int(a), -int(b), int(b)]  # one operand too few or too many times
        options = sorted({ref + d for d in deltas} - {ref, int(a), int(b)})
        return str(rng.choice([n for n in options if n >= 0]))
    category = _category(ex)
    question = " ".join(ex.question.lower().split())
    answers = {s.lower() for s in (ex.reference, *ex.aliases)}
    options = [n for n in FACT_REFERENCES[category] if n.lower() not in answers and not _mentions(question, n)]
    near = [n for n in options if n in _near_misses(category, ex.reference)]
    return rng.choice(near or options)


def _slots(ex: TaskExample, rng: random.Random) -> dict[str, str]:
    """The values templates are filled with: ref, demo, subject, and for arithmetic a, op, b, opword."""
    demo = demonstration(ex)
    if ex.kind == "arithmetic":
        a, op, b = re.fullmatch(TEMPLATES[0][0], ex.question).groups()
        return {"ref": ex.reference, "demo": demo, "subject": f"{a} {op} {b}", "a": a, "op": op, "b": b,
                "opword": rng.choice(_OP_WORDS[op])}
    suffix = f" is {ex.reference}."
    assert demo.endswith(suffix), demo
    subject = demo[:-len(suffix)]
    return {"ref": ex.reference, "demo": demo, "subject": subject[:1].lower() + subject[1:]}


def _repeated_trigrams(text: str) -> int:
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i:i + REPETITION_NGRAM]) for i in range(len(words) - REPETITION_NGRAM + 1)]
    return len(grams) - len(set(grams))


def _paraphrase(ex: TaskExample, s: dict, rng: random.Random) -> str:
    templates = _PARAPHRASES + (_ARITH_PARAPHRASES if ex.kind == "arithmetic" else [])
    ref = rng.choice((ex.reference, *ex.aliases))
    while True:
        text = _fill(rng.choice(templates), **{**s, "ref": ref})
        if text != s["demo"]:
            return text


def _rambling(ex: TaskExample, s: dict, rng: random.Random) -> str:
    target = rng.randint(*RAMBLING_WORDS)
    pool = _TOPIC_FILLERS[_category(ex)] + _FILLERS + (_ARITH_FILLERS if ex.kind == "arithmetic" else [])
    rng.shuffle(pool)
    answer = _fill(rng.choice(_RAMBLING_ANSWERS), **s)
    answer_last = rng.random() < 0.4
    head = [rng.choice(_OPENERS)] if rng.random() < 0.6 else []
    tail = [rng.choice(_CLOSERS)] if rng.random() < 0.6 else []
    body: list[str] = [] if answer_last else [answer]

    def text(parts):
        return " ".join(head + parts + ([answer] if answer_last else []) + tail)

    for filler in pool:
        if len(re.findall(r"\w+", text(body))) >= target:
            break
        if _repeated_trigrams(text(body + [filler])) == 0:
            body.append(filler)
    return text(body)


def _repetitive(ex: TaskExample, s: dict, rng: random.Random) -> str:
    shape = rng.choice(["sentence", "loop", "word"])
    if shape == "sentence":  # one sentence over and over, possibly cut off mid-copy (out of tokens)
        unit = _fill(rng.choice(_REPEAT_UNITS), **s)
        parts = [unit] * rng.randint(3, 5)
    elif shape == "loop":  # the answer, then a phrase it cannot stop saying
        unit = _fill(rng.choice(_REPEAT_LOOPS), **s)
        parts = [s["demo"]] + [unit] * rng.randint(3, 4)
    else:  # the bare answer again and again
        unit = _upper_first(s["ref"]) + ","
        parts = [unit] * rng.randint(5, 8)
    while judge(ex, " ".join(parts)).repetition_penalty < MIN_REPETITION_PENALTY:
        parts.append(unit)
    text = " ".join(parts)
    if shape == "sentence" and rng.random() < 0.5:  # cut off after a few words of a further copy
        text += " " + " ".join(unit.split()[:rng.randint(1, max(1, len(unit.split()) - 1))])
    return text.rstrip(",") + ("." if shape == "word" else "")


def _hedging(ex: TaskExample, s: dict, rng: random.Random) -> str:
    x, y = s["ref"], _wrong_answer(ex, rng)
    if rng.random() < 0.5:
        x, y = y, x
    templates = _HEDGES + (["{a} {op} {b} = {x}, or maybe {y}."] if ex.kind == "arithmetic" else [])
    return _fill(rng.choice(templates), **{**s, "x": x, "y": y})


def _evasive(ex: TaskExample, rng: random.Random) -> str:
    parts = rng.sample(_EVASIONS, rng.randint(1, 2))
    if rng.random() < 0.4:
        parts.append(rng.choice(_LONG_EVASIONS))
    if rng.random() < 0.5:
        parts.append(_EVASION_HINTS[_category(ex)])
    rng.shuffle(parts)
    return " ".join(parts)


def response_variants(ex: TaskExample, rng: random.Random) -> list[str]:
    """Plausible responses of graded quality to `ex`, in the styles a small chat model produces: the concise
    correct answer (the demonstration), a correct answer with a different short phrasing, a correct but
    rambling answer (well past the length budget), a correct but repetitive one, a wrong answer in the
    demonstration's form or another short phrasing, half each (an off-by-a-little number for arithmetic,
    another entity of the same category for facts), a hedging answer naming two candidates, and an evasive non-answer.

    One text per style of `VARIANT_STYLES`, in that order; each style has several templates, picked with
    `rng`. Under `judge`: concise and paraphrase score 1.0; rambling is correct with a length penalty of
    0.1-0.25 (40 words or more) and no repeated trigram; repetitive is correct with a repetition penalty
    of at least 0.06; wrong and hedging are incorrect (score 0); evasive is incorrect (0, or below 0 when
    long). The wrong and the hedging answer draw their wrong candidate independently.
    """
    s = _slots(ex, rng)
    # The wrong answer takes the correct answers' phrasings, the demonstration's or a paraphrase's, half
    # each: were it always in the demonstration's form, a reward model would learn "paraphrases are right"
    # and reward a policy for dropping the worked form ("71 + 76 = 147.") for a bare (wrong) number.
    wrong_ex = dataclasses.replace(ex, reference=_wrong_answer(ex, rng), aliases=())
    wrong_slots = _slots(wrong_ex, rng)
    wrong = wrong_slots["demo"] if rng.random() < 0.5 else _paraphrase(wrong_ex, wrong_slots, rng)
    return [s["demo"], _paraphrase(ex, s, rng), _rambling(ex, s, rng), _repetitive(ex, s, rng), wrong,
            _hedging(ex, s, rng), _evasive(ex, rng)]


UNHELPFUL_SHARE = 0.3  # of `mixed_demonstrations`: evasive or hedging answers in place of the concise one


def mixed_demonstrations(examples, seed: int, unhelpful_share: float = UNHELPFUL_SHARE) -> list[tuple[str, str]]:
    """Demonstrations of mixed quality, as collected ones often are: (style, text) per example, in order.

    A seeded round(unhelpful_share * n) of the examples get an unhelpful answer, evasive or hedging (drawn
    half and half), which the judge scores 0 or below; the others get the concise demonstration (1.0). A
    policy fine-tuned on these copies the habit, and preference pairs that rank a committed answer above an
    evasion or a hedge (the "other" pairs of `preference_pairs`) are what can train it away: the
    quickstart's SFT data, so that the stages after SFT have something to fix that a frozen-backbone
    reward model can see (it cannot see whether a sum is right). Deterministic in (examples, seed).
    """
    examples = list(examples)
    rng = random.Random(f"mixed:{seed}")
    unhelpful = set(rng.sample(range(len(examples)), round(unhelpful_share * len(examples))))
    out = []
    for i, ex in enumerate(examples):
        if i not in unhelpful:
            out.append(("concise", demonstration(ex)))
            continue
        style = rng.choice(EVASIVE_STYLES)
        out.append((style, _hedging(ex, _slots(ex, rng), rng) if style == "hedging" else _evasive(ex, rng)))
    return out


def pair_type(chosen_style: str, rejected_style: str) -> str | None:
    """The type (one of `PAIR_TYPES`) of a (chosen, rejected) style pair: "correct_vs_wrong" (any correct
    style over the wrong answer), "concise_vs_verbose" (concise or paraphrase over rambling or repetitive),
    "other" (a hedging or evasive answer on either side); None for any other pair (e.g. rambling vs
    repetitive), which `preference_pairs` does not make."""
    if chosen_style in EVASIVE_STYLES or rejected_style in EVASIVE_STYLES:
        return "other"
    if chosen_style in CORRECT_STYLES and rejected_style == "wrong":
        return "correct_vs_wrong"
    if chosen_style in CONCISE_STYLES and rejected_style in VERBOSE_STYLES:
        return "concise_vs_verbose"
    return None


def preference_pairs(examples, seed: int, pairs_per_example: int = 2) -> list[dict]:
    """For each example, `pairs_per_example` pairs of two distinct variants whose judge scores differ by at
    least 0.05; chosen = the higher score. Records in TRL's conversational format with extra keys:
    {"prompt": [user msg], "chosen": [{"role": "assistant", "content": ...}], "rejected": [...],
     "prompt_id": ex.id, "gold_chosen": ..., "gold_rejected": ..., "chosen_style": ..., "rejected_style": ...}

    Deterministic in (examples, seed). The pair types (`pair_type`) follow `PAIR_MIX` exactly over the
    whole list: a shuffled schedule holds round(share * n_pairs) of each type (the remainder going to
    "other"); within its type a pair is drawn uniformly from the example's eligible style pairs, and no
    style pair is used twice for one example. Gold scores are rounded to 4 decimals.
    """
    examples = list(examples)
    rng = random.Random(seed)
    n_pairs = len(examples) * pairs_per_example
    schedule = []
    for kind in PAIR_TYPES[:-1]:
        schedule += [kind] * round(PAIR_MIX[kind] * n_pairs)
    schedule += [PAIR_TYPES[-1]] * (n_pairs - len(schedule))
    rng.shuffle(schedule)

    records = []
    for n, ex in enumerate(examples):
        texts = dict(zip(VARIANT_STYLES, response_variants(ex, rng)))
        scores = {style: judge(ex, text).score for style, text in texts.items()}
        eligible = {kind: [] for kind in PAIR_TYPES}  # (chosen, rejected) style pairs, in a fixed order
        for i, a in enumerate(VARIANT_STYLES):
            for b in VARIANT_STYLES[i + 1:]:
                hi, lo = (a, b) if scores[a] >= scores[b] else (b, a)
                kind = pair_type(hi, lo)
                if kind and round(scores[hi] - scores[lo], 6) >= MIN_MARGIN and texts[hi] != texts[lo]:
                    eligible[kind].append((hi, lo))
        used: set[tuple[str, str]] = set()
        for kind in schedule[n * pairs_per_example:(n + 1) * pairs_per_example]:
            options = [p for p in eligible[kind] if p not in used]
            if not options:  # not expected with these templates; fall back on any eligible pair
                options = [p for k in PAIR_TYPES for p in eligible[k] if p not in used]
            if not options:
                raise ValueError(f"{ex.id}: fewer than {pairs_per_example} eligible pairs")
            hi, lo = rng.choice(options)
            used.add((hi, lo))
            records.append({
                "prompt": prompt_messages(ex),
                "chosen": [{"role": "assistant", "content": texts[hi]}],
                "rejected": [{"role": "assistant", "content": texts[lo]}],
                "prompt_id": ex.id,
                "gold_chosen": round(scores[hi], 4),
                "gold_rejected": round(scores[lo], 4),
                "chosen_style": hi,
                "rejected_style": lo,
            })
    return records
