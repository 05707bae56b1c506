"""Preference pairs: reading, validating and writing the common formats a reward model trains on.

Every format maps to one in-memory type, `PreferencePair` (prompt, chosen and rejected as lists of
`{"role", "content"}` messages, plus `tie`, `meta` and `source`). Formats (the `format` argument; "auto"
detects it per record):

- "standard" (TRL, explicit prompt):
      {"prompt": "What is 2+3?", "chosen": " 5", "rejected": " 6"}
- "conversational" (TRL, explicit prompt):
      {"prompt": [{"role": "user", "content": "What is 2+3?"}],
       "chosen": [{"role": "assistant", "content": "5"}], "rejected": [{"role": "assistant", "content": "6"}]}
- "implicit" (TRL, implicit prompt, standard): the prompt is the shared start of the two texts, cut at a
  whitespace boundary (see `split_text`):
      {"chosen": "Q: What is 2+3? A: 5", "rejected": "Q: What is 2+3? A: 6"}
      -> prompt "Q: What is 2+3? A:", chosen " 5", rejected " 6"
- "implicit_conversational" (TRL, implicit prompt, conversational): the prompt is the shared leading
  messages (see `split_messages`):
      {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
       "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}
- "hh" (Anthropic/hh-rlhf transcripts): turns split at "\\n\\nHuman: " and "\\n\\nAssistant: ", then as
  "implicit_conversational":
      {"chosen": "\\n\\nHuman: Hi\\n\\nAssistant: Hello!", "rejected": "\\n\\nHuman: Hi\\n\\nAssistant: Go away."}

Plain strings become one message: a prompt string `[{"role": "user", ...}]`, a response string
`[{"role": "assistant", ...}]`; writing back in a string format gives the strings back exactly. Any format
may carry a boolean `tie` (written back only when true) and other keys, which go to `meta` and are written
back unchanged.

Bad input raises `PairError` (a `DataError`) whose message starts with the record's `file:line` and names
the problem: malformed JSON, invalid UTF-8, a missing key, a value of the wrong type or format, a bad HH
transcript, an empty completion, identical chosen and rejected, or (given a tokenizer and `max_length`) a
prompt that is too long. `read_pairs(..., skip_invalid=True)` skips such records instead and counts them by
reason in its `ReadSummary`, which the caller prints:

    pairs, summary = read_pairs("prefs.jsonl", skip_invalid=True, tokenizer=tok, max_length=512)
    print(summary)
    write_pairs("prefs.parquet", pairs, "conversational")
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rlhf.data import DataError, Record, read_records
from rlhf.jsonl import scan

FORMATS = ("standard", "conversational", "implicit", "implicit_conversational", "hh")
STRING_FORMATS = ("standard", "implicit")  # formats whose prompt is a plain string, tokenised as it is

HUMAN, ASSISTANT = "\n\nHuman: ", "\n\nAssistant: "
_HH_MARKER = re.compile(r"(\n\nHuman: |\n\nAssistant: )")
_HH_ROLE = {HUMAN: "user", ASSISTANT: "assistant"}
_HH_MARK = {"user": HUMAN, "assistant": ASSISTANT}

# Reasons a record is rejected: the keys of ReadSummary.skipped (and, for a line that does not read, the
# reasons of rlhf.jsonl: "malformed JSON", "invalid UTF-8", "not a JSON object").
MISSING_KEY = "missing key"
WRONG_TYPE = "wrong type"
WRONG_FORMAT = "wrong format"
BAD_TRANSCRIPT = "bad HH transcript"
NO_PROMPT = "no shared prompt"
EMPTY_COMPLETION = "empty completion"
IDENTICAL = "identical responses"
PROMPT_TOO_LONG = "prompt too long"


class PairError(DataError):
    """A record that is not a valid preference pair; `reason` is one of the reason constants above."""

    def __init__(self, source: str, reason: str, problem: str):
        super().__init__(f"{source}: {problem}")
        self.source, self.reason = source, reason


@dataclass
class PreferencePair:
    """One preference judgement: `chosen` was preferred to `rejected` as a continuation of `prompt`.

    `format` and `source` record where the pair came from; neither takes part in equality, so a pair read
    back from another file (or another format that holds the same messages) compares equal.
    """

    prompt: list[dict]  # the conversation before the response; may hold a system turn or several turns
    chosen: list[dict]  # the preferred response, usually one assistant message
    rejected: list[dict]
    tie: bool = False  # the two were judged equal (chosen/rejected then in arbitrary order)
    meta: dict = field(default_factory=dict)  # any other keys of the record, carried through unchanged
    source: str = field(default="", compare=False)  # "file:line" it came from (not written out)
    format: str = field(default="", compare=False)  # the format it was read from ("" if built in code)


@dataclass
class ReadSummary:
    """What `read_pairs` read: records seen, pairs kept, and records skipped per reason."""

    total: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    first: dict[str, str] = field(default_factory=dict)  # reason -> source of its first skipped record
    source: str = ""

    def skip(self, error: PairError) -> None:
        self.skipped[error.reason] = self.skipped.get(error.reason, 0) + 1
        self.first.setdefault(error.reason, error.source)

    def __str__(self) -> str:
        n_skipped = sum(self.skipped.values())
        head = f"{self.source}: " if self.source else ""
        lines = [f"{head}{self.total} records, {self.kept} kept, {n_skipped or 'none'} skipped"]
        if self.skipped:
            width = max(len(r) for r in self.skipped)
            lines.append(f"  {'skipped':>7}  {'reason':<{width}}  first at")
            for reason, count in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {count:>7}  {reason:<{width}}  {self.first.get(reason, '')}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ value checks


def _require(data: dict, key: str, source: str) -> Any:
    if key not in data:
        raise PairError(source, MISSING_KEY, f"missing key '{key}'")
    return data[key]


def _string(data: dict, key: str, source: str, fmt: str) -> str:
    value = _require(data, key, source)
    if not isinstance(value, str):
        raise PairError(source, WRONG_TYPE, f"'{key}' must be a string in format '{fmt}', "
                        f"got {type(value).__name__}")
    return value


def _messages(data: dict, key: str, source: str, fmt: str) -> list[dict]:
    """A list of messages, each an object with string 'role' and 'content' (other keys are kept)."""
    value = _require(data, key, source)
    if not isinstance(value, list):
        raise PairError(source, WRONG_TYPE, f"'{key}' must be a list of messages in format '{fmt}', "
                        f"got {type(value).__name__}")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise PairError(source, WRONG_TYPE, f"'{key}'[{i}] must be a message object, got {type(m).__name__}")
        for part in ("role", "content"):
            if part not in m:
                raise PairError(source, MISSING_KEY, f"missing key '{part}' in '{key}'[{i}]")
            if not isinstance(m[part], str):
                raise PairError(source, WRONG_TYPE, f"'{key}'[{i}].{part} must be a string, "
                                f"got {type(m[part]).__name__}")
    return value


def _tie(data: dict, source: str) -> bool:
    value = data.get("tie", False)
    if not isinstance(value, bool):
        raise PairError(source, WRONG_TYPE, f"'tie' must be true or false, got {value!r}")
    return value


def _meta(data: dict, core: tuple[str, ...]) -> dict:
    return {k: v for k, v in data.items() if k not in core and k != "tie"}


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------------------------- prompt splits


def split_text(chosen: str, rejected: str) -> int:
    """Length of the implicit prompt shared by two texts: their common prefix, cut at a whitespace boundary.

    The cut goes before the last run of whitespace inside the common prefix, so that no word is split
    and each response starts with its whitespace, as TRL's standard examples do (" 5"):
    "Q: 2+3? A: 5" / "Q: 2+3? A: 6" share "Q: 2+3? A: " and split into "Q: 2+3? A:" + " 5" / " 6".
    0 when the common prefix holds no whitespace after its first character.
    """
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    ws = [i for i in range(n) if chosen[i].isspace()]
    if not ws:
        return 0
    cut = ws[-1]
    while cut > 0 and chosen[cut - 1].isspace():
        cut -= 1
    return cut


def split_messages(chosen: list[dict], rejected: list[dict]) -> int:
    """Number of leading messages that form the implicit prompt of two conversations.

    The longest common prefix of messages, shortened while it ends with an assistant turn or leaves a
    response empty, so that the prompt ends where the assistant is to speak and both responses are
    non-empty. (TRL's `extract_prompt` takes the plain common prefix; the two agree whenever the
    conversations differ only after their last shared user turn, as nearly all data does.) 0 if no prompt.
    """
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and (n == len(chosen) or n == len(rejected) or chosen[n - 1]["role"] == "assistant"):
        n -= 1
    return n


def parse_hh(transcript: str, key: str, source: str) -> list[dict]:
    """The messages of an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ..."), user/assistant roles.

    Joining `marker + content` over the messages gives the transcript back exactly (`hh_transcript`).
    """
    if not transcript.startswith(HUMAN):
        raise PairError(source, BAD_TRANSCRIPT, f"HH transcript '{key}' does not start with "
                        f"{HUMAN!r}: {transcript[:30]!r}")
    parts = _HH_MARKER.split(transcript)[1:]  # [marker, content, marker, content, ...]; parts[0] was ""
    messages = [{"role": _HH_ROLE[m], "content": c} for m, c in zip(parts[0::2], parts[1::2])]
    if messages[-1]["role"] != "assistant":
        if messages[-1]["content"].rstrip().endswith("\n\nAssistant:"):  # "...\n\nAssistant:" with no reply
            raise PairError(source, EMPTY_COMPLETION, f"empty completion: HH transcript '{key}' ends with an "
                            "empty assistant turn")
        raise PairError(source, BAD_TRANSCRIPT, f"HH transcript '{key}' has no final assistant turn "
                        "(it ends with a Human turn)")
    return messages


def hh_transcript(messages: list[dict]) -> str:
    return "".join(_HH_MARK[m["role"]] + m["content"] for m in messages)


# -------------------------------------------------------------------------------------- parsers
# Each takes a record's data and source and returns a PreferencePair (format and source set by parse_pair).


def _parse_standard(d: dict, src: str) -> PreferencePair:
    prompt, chosen, rejected = (_string(d, k, src, "standard") for k in ("prompt", "chosen", "rejected"))
    return PreferencePair(_user(prompt), _assistant(chosen), _assistant(rejected), _tie(d, src),
                          _meta(d, ("prompt", "chosen", "rejected")))


def _parse_conversational(d: dict, src: str) -> PreferencePair:
    prompt, chosen, rejected = (_messages(d, k, src, "conversational") for k in ("prompt", "chosen", "rejected"))
    return PreferencePair(prompt, chosen, rejected, _tie(d, src), _meta(d, ("prompt", "chosen", "rejected")))


def _no_prompt_key(d: dict, src: str, fmt: str) -> None:
    if "prompt" in d:
        raise PairError(src, WRONG_FORMAT, f"a '{fmt}' record has no 'prompt' key (its prompt is the shared "
                        "start of chosen and rejected); this one has one")


def _check_not_identical(chosen: Any, rejected: Any, src: str) -> None:
    if chosen == rejected:
        raise PairError(src, IDENTICAL, "'chosen' and 'rejected' are identical; a pair must differ")


def _parse_implicit(d: dict, src: str) -> PreferencePair:
    _no_prompt_key(d, src, "implicit")
    chosen, rejected = (_string(d, k, src, "implicit") for k in ("chosen", "rejected"))
    _check_not_identical(chosen, rejected, src)
    n = split_text(chosen, rejected)
    if n == 0:
        raise PairError(src, NO_PROMPT, "'chosen' and 'rejected' share no prompt ending at a whitespace "
                        "boundary; use format 'standard' with an explicit prompt")
    return PreferencePair(_user(chosen[:n]), _assistant(chosen[n:]), _assistant(rejected[n:]), _tie(d, src),
                          _meta(d, ("chosen", "rejected")))


def _split_conversations(chosen: list[dict], rejected: list[dict], d: dict, src: str) -> PreferencePair:
    _check_not_identical(chosen, rejected, src)
    n = split_messages(chosen, rejected)
    if n == 0:
        raise PairError(src, NO_PROMPT, "'chosen' and 'rejected' share no leading prompt message "
                        "(their first messages differ)")
    return PreferencePair(chosen[:n], chosen[n:], rejected[n:], _tie(d, src), _meta(d, ("chosen", "rejected")))


def _parse_implicit_conversational(d: dict, src: str) -> PreferencePair:
    _no_prompt_key(d, src, "implicit_conversational")
    chosen, rejected = (_messages(d, k, src, "implicit_conversational") for k in ("chosen", "rejected"))
    return _split_conversations(chosen, rejected, d, src)


def _parse_hh(d: dict, src: str) -> PreferencePair:
    _no_prompt_key(d, src, "hh")
    chosen, rejected = (_string(d, k, src, "hh") for k in ("chosen", "rejected"))
    _check_not_identical(chosen, rejected, src)
    return _split_conversations(parse_hh(chosen, "chosen", src), parse_hh(rejected, "rejected", src), d, src)


_PARSERS = {
    "standard": _parse_standard,
    "conversational": _parse_conversational,
    "implicit": _parse_implicit,
    "implicit_conversational": _parse_implicit_conversational,
    "hh": _parse_hh,
}


def detect_format(data: dict) -> str | None:
    """The format a record's keys and value types suggest, or None when they fit none."""
    if "prompt" in data:
        return {str: "standard", list: "conversational"}.get(type(data["prompt"]))
    chosen = data.get("chosen")
    if isinstance(chosen, list):
        return "implicit_conversational"
    if isinstance(chosen, str):
        return "hh" if chosen.startswith("\n\nHuman:") else "implicit"
    return None


def _check_responses(pair: PreferencePair, src: str) -> None:
    for key in ("chosen", "rejected"):
        messages = getattr(pair, key)
        if not messages or not messages[-1]["content"].strip():
            raise PairError(src, EMPTY_COMPLETION, f"empty completion: '{key}' is empty or whitespace")
    _check_not_identical(pair.chosen, pair.rejected, src)


def _check_format_name(format: str, allowed: tuple[str, ...]) -> None:
    if format not in allowed:
        raise ValueError(f"unknown preference format {format!r}; use one of {', '.join(allowed)}")


def parse_pair(record: Record, format: str = "auto") -> PreferencePair:
    """The preference pair in `record`, read in `format` ("auto": detected from the record).

    Raises PairError (a DataError) whose message starts with `record.source` and names the problem. When an
    explicit format does not fit but another does, the error (reason "wrong format") says which.
    """
    _check_format_name(format, FORMATS + ("auto",))
    d, src = record.data, record.source
    fmt = format
    if format == "auto":
        fmt = detect_format(d)
        if fmt is None:
            if "prompt" in d:
                raise PairError(src, WRONG_TYPE, "'prompt' must be a string or a list of messages, "
                                f"got {type(d['prompt']).__name__}")
            _require(d, "chosen", src)
            raise PairError(src, WRONG_TYPE, "'chosen' must be a string or a list of messages, "
                            f"got {type(d['chosen']).__name__}")
    try:
        pair = _PARSERS[fmt](d, src)
    except PairError as e:
        other = detect_format(d)
        if format == "auto" or other in (None, fmt) or not _parses_as(d, other):
            raise
        problem = str(e)[len(src) + 2:]
        raise PairError(src, WRONG_FORMAT, f"not a '{fmt}' record ({problem}); it reads as '{other}': "
                        f"pass format='{other}' or 'auto'") from None
    _check_responses(pair, src)
    pair.source, pair.format = src, fmt
    return pair


def _parses_as(data: dict, fmt: str) -> bool:
    try:
        _PARSERS[fmt](data, "")
    except PairError:
        return False
    return True


# --------------------------------------------------------------------------------- prompt length


def prompt_text(pair: PreferencePair, tokenizer) -> str:
    """The prompt as the model sees it: the plain string for string formats, else the chat template's
    rendering with the generation prompt (as at sampling time)."""
    if pair.format in STRING_FORMATS:
        return _as_string(pair.prompt, "user", "prompt", pair, pair.format)
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{pair.source or 'pair'}: the tokenizer has no chat template to render the "
                        "conversational prompt; give it one or use a tokenizer that has one")
    return tokenizer.apply_chat_template(pair.prompt, tokenize=False, add_generation_prompt=True)


def prompt_length(pair: PreferencePair, tokenizer) -> int:
    """Tokens in `prompt_text(pair, tokenizer)` (no special tokens added beyond the template's own)."""
    return len(tokenizer(prompt_text(pair, tokenizer), add_special_tokens=False)["input_ids"])


def check_prompt_length(pair: PreferencePair, tokenizer, max_length: int) -> None:
    n = prompt_length(pair, tokenizer)
    if n > max_length:
        raise PairError(pair.source, PROMPT_TOO_LONG,
                        f"prompt too long: {n} tokens, more than max_length={max_length}")


# ---------------------------------------------------------------------------------------- reading


def iter_jsonl(path: Path) -> Iterator[Record | PairError]:
    """Each non-blank line of a .jsonl file as a Record, or as the PairError that it is unreadable.

    The tolerant twin of `rlhf.data.read_records` for .jsonl (the same strict rules of `rlhf.jsonl.scan`,
    the same `path:N: ...` messages), so that `skip_invalid` can skip bad lines and read on.
    """
    for line in scan(path):
        source = f"{path}:{line.number}"
        yield Record(line.value, source) if line.reason is None else PairError(source, line.reason, line.message)


def _records(path_or_name: str, split: str, skip_invalid: bool) -> Iterator[Record | PairError]:
    path = Path(path_or_name)
    if skip_invalid and path.suffix == ".jsonl" and path.is_file():
        yield from iter_jsonl(path)
        return
    columnar = path.suffix not in (".jsonl", ".json")  # parquet or a hub dataset
    for record in read_records(path_or_name, split):
        if columnar:  # a table has every column in every row; null stands for a key the row lacks
            record = Record({k: v for k, v in record.data.items() if v is not None}, record.source)
        yield record


def read_pairs(path_or_name: str, format: str = "auto", split: str = "train", *, skip_invalid: bool = False,
               tokenizer=None, max_length: int | None = None) -> tuple[list[PreferencePair], ReadSummary]:
    """Preference pairs from a local .jsonl/.json/.parquet file or a hub dataset split, and a summary.

    Each record is parsed in `format` ("auto": detected per record) and, given `tokenizer` and `max_length`,
    its prompt is checked to fit. A bad record raises PairError naming its `file:line`; with `skip_invalid`
    it is skipped instead and counted in the summary by reason (print the summary: nothing is dropped
    silently). Unreadable lines can be skipped only in .jsonl files; a broken .json or parquet file raises.
    In parquet files and hub datasets a null top-level value counts as an absent key.
    """
    _check_format_name(format, FORMATS + ("auto",))
    if (tokenizer is None) != (max_length is None):
        raise ValueError("pass both tokenizer and max_length to check prompt lengths, or neither")
    pairs: list[PreferencePair] = []
    summary = ReadSummary(source=str(path_or_name))
    for item in _records(path_or_name, split, skip_invalid):
        summary.total += 1
        try:
            if isinstance(item, PairError):
                raise item
            pair = parse_pair(item, format)
            if tokenizer is not None:
                check_prompt_length(pair, tokenizer, max_length)
        except PairError as e:
            if not skip_invalid:
                raise
            summary.skip(e)
            continue
        pairs.append(pair)
        summary.kept += 1
    return pairs, summary


# ---------------------------------------------------------------------------------------- writing


def _as_string(messages: list[dict], role: str, key: str, pair: PreferencePair, fmt: str) -> str:
    """The text of a one-message list `[{"role": role, "content": text}]`; anything else cannot be a string."""
    if len(messages) != 1 or set(messages[0]) != {"role", "content"} or messages[0]["role"] != role:
        shape = ", ".join(m.get("role", "?") for m in messages) or "no messages"
        raise DataError(f"{pair.source or 'pair'}: cannot write as '{fmt}': '{key}' must be a single {role} "
                        f"message with only role and content to become a string (it has: {shape}); "
                        "use a conversational format")
    return messages[0]["content"]


def _as_transcript(messages: list[dict], key: str, pair: PreferencePair) -> str:
    """An HH transcript of user/assistant messages whose contents hold no turn marker."""
    for m in messages:
        if set(m) != {"role", "content"} or m["role"] not in _HH_MARK or _HH_MARKER.search(m["content"]):
            raise DataError(f"{pair.source or 'pair'}: cannot write as 'hh': '{key}' has a message that is not "
                            "a plain user/assistant turn free of HH turn markers; use a conversational format")
    return hh_transcript(messages)


def _core(pair: PreferencePair, fmt: str) -> dict:
    if fmt == "standard":
        return {"prompt": _as_string(pair.prompt, "user", "prompt", pair, fmt),
                "chosen": _as_string(pair.chosen, "assistant", "chosen", pair, fmt),
                "rejected": _as_string(pair.rejected, "assistant", "rejected", pair, fmt)}
    if fmt == "conversational":
        return {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
    if fmt == "implicit":
        prompt = _as_string(pair.prompt, "user", "prompt", pair, fmt)
        return {"chosen": prompt + _as_string(pair.chosen, "assistant", "chosen", pair, fmt),
                "rejected": prompt + _as_string(pair.rejected, "assistant", "rejected", pair, fmt)}
    if fmt == "implicit_conversational":
        return {"chosen": pair.prompt + pair.chosen, "rejected": pair.prompt + pair.rejected}
    chosen, rejected = pair.prompt + pair.chosen, pair.prompt + pair.rejected
    for key, messages in (("chosen", chosen), ("rejected", rejected)):
        if not messages or messages[0]["role"] != "user" or messages[-1]["role"] != "assistant":
            raise DataError(f"{pair.source or 'pair'}: cannot write as 'hh': '{key}' must start with a user "
                            "turn and end with an assistant turn")
    return {"chosen": _as_transcript(chosen, "chosen", pair), "rejected": _as_transcript(rejected, "rejected", pair)}


def to_record(pair: PreferencePair, format: str) -> dict:
    """The record of `pair` in `format` (or "same": the format it was read from).

    Keys: the format's own, then `tie` (only when true), then `meta` unchanged. Reading the record back in
    the same format gives an equal pair for pairs read from that format. Writing an explicit-prompt pair in
    an implicit format loses where the prompt ended; reading it back re-derives the split.
    """
    _check_format_name(format, FORMATS + ("same",))
    fmt = pair.format if format == "same" else format
    if fmt not in FORMATS:
        raise DataError(f"{pair.source or 'pair'}: format 'same' needs a pair read from a file")
    record = _core(pair, fmt)
    clash = sorted(set(pair.meta) & {"prompt", "chosen", "rejected", "tie"})
    if clash:
        raise DataError(f"{pair.source or 'pair'}: meta keys {clash} clash with the record's own keys")
    if pair.tie:
        record["tie"] = True
    record.update(pair.meta)
    return record


def write_pairs(path: str | Path, pairs: list[PreferencePair], format: str) -> None:
    """Write `pairs` in `format` to .jsonl (UTF-8, one object per line), .json (a list) or .parquet.

    Every record is built before the file is opened, so an unwritable pair leaves no partial file.
    """
    path = Path(path)
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (use .jsonl, .json, .parquet)")
    from rlhf.fsio import atomic_file, atomic_write_json, atomic_write_jsonl

    records = [to_record(p, format) for p in pairs]
    path.parent.mkdir(parents=True, exist_ok=True)
    # written under a temporary name and renamed (rlhf.fsio): a kill or a full disk leaves the old file whole
    if path.suffix == ".jsonl":
        atomic_write_jsonl(path, records, what="pairs")
    elif path.suffix == ".json":
        atomic_write_json(path, records, indent=1, what="pairs")
    else:
        import datasets

        try:
            with atomic_file(path, what="pairs") as tmp:
                datasets.Dataset.from_list(records).to_parquet(str(tmp))
        except (ValueError, TypeError) as e:  # pyarrow's errors subclass these
            raise DataError(f"{path}: cannot write as parquet (records of differing shapes?): {e}") from None
