"""Tests of preference pairs (rlhf.preferences): each format's round trip, conversions between formats,
format detection, every bad-input error with its file:line, skipping with a summary, and prompt lengths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.data import DataError, Record, read_records
from rlhf.models import build_tiny_tokenizer
from rlhf.preferences import (
    FORMATS,
    PairError,
    PreferencePair,
    ReadSummary,
    detect_format,
    iter_jsonl,
    parse_pair,
    prompt_length,
    read_pairs,
    split_messages,
    split_text,
    to_record,
    write_pairs,
)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# Two records per format; the first of each carries a tie and meta keys, the second neither.
RECORDS = {
    "standard": [
        {"prompt": "What is 2+3?", "chosen": " 5", "rejected": " 6", "tie": True, "id": "q1",
         "scores": {"chosen": 9.5, "rejected": 2.0}},
        {"prompt": "Say hi in French.", "chosen": " Bonjour !", "rejected": " Hello."},
    ],
    "conversational": [
        {"prompt": [{"role": "system", "content": "Be brief."}, user("Héllo?")],
         "chosen": [assistant("Hi.")], "rejected": [assistant("Good day to you, friend.")], "tie": True,
         "id": "c1"},
        {"prompt": [user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")], "id": "c2"},
    ],
    "implicit": [
        {"chosen": "Q: What is 2+3? A: 5", "rejected": "Q: What is 2+3? A: 6", "id": 1},
        {"chosen": "The answer is 5", "rejected": "The answer is 56"},
    ],
    "implicit_conversational": [
        {"chosen": [user("Hi"), assistant("Hello!"), user("Bye"), assistant("Bye!")],
         "rejected": [user("Hi"), assistant("Hello!"), user("Bye"), assistant("Whatever.")], "tie": True},
        {"chosen": [user("Hi"), assistant("Hello!")], "rejected": [user("Hi"), assistant("Go away.")]},
    ],
    "hh": [
        {"chosen": "\n\nHuman: What is 2+3?\n\nAssistant: 5.\n\nHuman: And 2+4?\n\nAssistant: 6.",
         "rejected": "\n\nHuman: What is 2+3?\n\nAssistant: 5.\n\nHuman: And 2+4?\n\nAssistant: 7.",
         "split": "test"},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."},
    ],
}


def write_jsonl(path: Path, lines: list) -> Path:
    """Lines as given: dicts are dumped as JSON, bytes written as they are."""
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else json.dumps(line, ensure_ascii=False).encode("utf-8"))
            f.write(b"\n")
    return path


def records_of(path: Path) -> list[dict]:
    return [r.data for r in read_records(str(path))]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")  # keep ~/.cache clean


# ------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_jsonl(tmp_path, fmt):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS[fmt])
    pairs, summary = read_pairs(str(src))
    assert [p.format for p in pairs] == [fmt, fmt]
    assert [p.source for p in pairs] == [f"{src}:1", f"{src}:2"]
    assert (summary.total, summary.kept, summary.skipped) == (2, 2, {})
    out = tmp_path / "out.jsonl"
    write_pairs(out, pairs, fmt)
    assert records_of(out) == RECORDS[fmt]
    again, _ = read_pairs(str(out), fmt)
    assert again == pairs
    assert [to_record(p, "same") for p in again] == RECORDS[fmt]


def test_written_jsonl_is_utf8_one_object_per_line(tmp_path):
    pairs, _ = read_pairs(str(write_jsonl(tmp_path / "in.jsonl", RECORDS["conversational"])))
    out = tmp_path / "out.jsonl"
    write_pairs(out, pairs, "conversational")
    lines = out.read_bytes().decode("utf-8").splitlines()
    assert len(lines) == 2 and "Héllo?" in lines[0]  # not escaped as \u00e9
    assert [json.loads(line) for line in lines] == RECORDS["conversational"]


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_round_trip_json_and_parquet(tmp_path, hf_cache, suffix):
    pairs, _ = read_pairs(str(write_jsonl(tmp_path / "in.jsonl", RECORDS["conversational"])))
    out = tmp_path / f"out{suffix}"
    write_pairs(out, pairs, "conversational")
    again, summary = read_pairs(str(out))
    assert again == pairs and summary.kept == 2
    assert [p.tie for p in again] == [True, False] and [p.meta for p in again] == [{"id": "c1"}, {"id": "c2"}]
    assert [to_record(p, "conversational") for p in again] == RECORDS["conversational"]


def test_meta_keys_survive_a_round_trip(tmp_path):
    record = {"prompt": "p", "chosen": "a", "rejected": "b", "tie": False, "id": 3, "gold": [0.25, None],
              "provenance": {"model": "x", "note": "ünï"}, "nothing": None}
    pairs, _ = read_pairs(str(write_jsonl(tmp_path / "in.jsonl", [record])))
    assert pairs[0].meta == {"id": 3, "gold": [0.25, None], "provenance": {"model": "x", "note": "ünï"},
                             "nothing": None}
    for fmt in ("standard", "conversational", "implicit_conversational", "hh"):
        out = tmp_path / f"{fmt}.jsonl"
        write_pairs(out, pairs, fmt)
        assert {k: v for k, v in records_of(out)[0].items() if k in pairs[0].meta} == pairs[0].meta
    # `tie` is written only when true: an explicit false reads the same as an absent key.
    assert "tie" not in records_of(tmp_path / "standard.jsonl")[0]


# ---------------------------------------------------------------------------------- cross-format


def test_hh_as_conversational_gives_the_expected_messages(tmp_path):
    pairs, _ = read_pairs(str(write_jsonl(tmp_path / "hh.jsonl", RECORDS["hh"])))
    out = tmp_path / "conv.jsonl"
    write_pairs(out, pairs, "conversational")
    assert records_of(out) == [
        {"prompt": [user("What is 2+3?"), assistant("5."), user("And 2+4?")],
         "chosen": [assistant("6.")], "rejected": [assistant("7.")], "split": "test"},
        {"prompt": [user("Hi")], "chosen": [assistant("Hello!")], "rejected": [assistant("Go away.")]},
    ]
    back, _ = read_pairs(str(out))
    assert back == pairs
    assert [to_record(p, "hh") for p in back] == RECORDS["hh"]


def test_standard_written_as_conversational_keeps_the_strings(tmp_path):
    pairs, _ = read_pairs(str(write_jsonl(tmp_path / "std.jsonl", RECORDS["standard"])))
    out = tmp_path / "conv.jsonl"
    write_pairs(out, pairs, "conversational")
    assert records_of(out)[1] == {"prompt": [user("Say hi in French.")], "chosen": [assistant(" Bonjour !")],
                                  "rejected": [assistant(" Hello.")]}
    back, _ = read_pairs(str(out))
    assert [p.format for p in back] == ["conversational"] * 2
    assert back == pairs
    assert [to_record(p, "standard") for p in back] == RECORDS["standard"]


def test_standard_as_hh_and_implicit(tmp_path):
    pairs, _ = read_pairs(str(write_jsonl(tmp_path / "std.jsonl", RECORDS["standard"][1:])))
    assert to_record(pairs[0], "hh") == {"chosen": "\n\nHuman: Say hi in French.\n\nAssistant:  Bonjour !",
                                         "rejected": "\n\nHuman: Say hi in French.\n\nAssistant:  Hello."}
    assert to_record(pairs[0], "implicit") == {"chosen": "Say hi in French. Bonjour !",
                                               "rejected": "Say hi in French. Hello."}


def test_implicit_prompts_are_split_as_documented(tmp_path):
    pairs, _ = read_pairs(str(write_jsonl(tmp_path / "in.jsonl", RECORDS["implicit"])))
    assert pairs[0] == PreferencePair([user("Q: What is 2+3? A:")], [assistant(" 5")], [assistant(" 6")],
                                      meta={"id": 1})
    assert pairs[1] == PreferencePair([user("The answer is")], [assistant(" 5")], [assistant(" 56")])
    assert split_text("a  b c", "a  b d") == 4  # before the last whitespace run of the common prefix
    assert split_text("ab\n\ncd", "ab\n\nce") == 2
    assert split_text("abc", "abd") == 0 and split_text(" x", " y") == 0
    pairs, _ = read_pairs(str(write_jsonl(tmp_path / "conv.jsonl", RECORDS["implicit_conversational"])))
    assert pairs[0] == PreferencePair([user("Hi"), assistant("Hello!"), user("Bye")], [assistant("Bye!")],
                                      [assistant("Whatever.")], tie=True)


def test_split_messages_ends_the_prompt_before_an_assistant_turn():
    u1, a1, u2, a2, u3 = user("1"), assistant("1"), user("2"), assistant("2"), user("3")
    assert split_messages([u1, a1, u2, a2], [u1, a1, u2, assistant("x")]) == 3
    assert split_messages([u1, a1], [u1, a1, u2, a2]) == 1  # one conversation continues the other
    assert split_messages([u1, a1, u2, a2], [u1, a1, u3, a2]) == 1  # they part at a user turn
    assert split_messages([u1, a1], [u2, a1]) == 0


def test_same_needs_a_read_pair_and_string_formats_need_single_messages(tmp_path):
    with pytest.raises(DataError, match="format 'same' needs a pair read from a file"):
        to_record(PreferencePair([user("p")], [assistant("a")], [assistant("b")]), "same")
    pairs, _ = read_pairs(str(write_jsonl(tmp_path / "hh.jsonl", RECORDS["hh"])))
    out = tmp_path / "std.jsonl"
    with pytest.raises(DataError, match=rf"^{tmp_path}/hh.jsonl:1: cannot write as 'standard': 'prompt' must be "
                                        r"a single user message .*\(it has: user, assistant, user\)"):
        write_pairs(out, pairs, "standard")
    assert not out.exists()
    with pytest.raises(DataError, match="cannot write as 'hh'"):
        to_record(PreferencePair([user("a\n\nHuman: b")], [assistant("a")], [assistant("b")]), "hh")
    with pytest.raises(ValueError, match="unknown preference format 'trl'"):
        to_record(pairs[0], "trl")


# ---------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize("fmt", FORMATS)
def test_auto_detects_each_format(fmt):
    for i, data in enumerate(RECORDS[fmt]):
        assert detect_format(data) == fmt
        assert parse_pair(Record(data, f"d.jsonl:{i + 1}")).format == fmt
        assert parse_pair(Record(data, f"d.jsonl:{i + 1}"), fmt) == parse_pair(Record(data, "x"))


@pytest.mark.parametrize("fmt, wrong, problem", [
    ("standard", "conversational", "'prompt' must be a list of messages in format 'conversational', got str"),
    ("conversational", "standard", "'prompt' must be a string in format 'standard', got list"),
    ("implicit", "hh", "HH transcript 'chosen' does not start with"),
    ("implicit_conversational", "implicit", "'chosen' must be a string in format 'implicit', got list"),
    ("hh", "standard", "missing key 'prompt'"),
    ("standard", "implicit", "has no 'prompt' key"),
])
def test_explicit_wrong_format_is_an_error_naming_the_record(fmt, wrong, problem):
    with pytest.raises(PairError) as e:
        parse_pair(Record(RECORDS[fmt][0], "d.jsonl:7"), wrong)
    message = str(e.value)
    assert message.startswith(f"d.jsonl:7: not a '{wrong}' record (")
    assert problem in message and f"it reads as '{fmt}'" in message
    assert e.value.reason == "wrong format"


def test_hh_records_read_as_implicit_when_asked():
    pair = parse_pair(Record(RECORDS["hh"][1], "d.jsonl:1"), "implicit")
    assert pair.prompt == [user("\n\nHuman: Hi\n\nAssistant:")] and pair.chosen == [assistant(" Hello!")]


# ---------------------------------------------------------------------------------------- bad input

GOOD = RECORDS["standard"][1]
STD = {"prompt": "p", "chosen": "a", "rejected": "b"}

# (line as written, problem text in the message, reason in the summary)
BAD_LINES = {
    "malformed JSON": (b'{"prompt": "p" "chosen": "a"}', "malformed JSON: Expecting ',' delimiter (column 16)"),
    "invalid UTF-8": (b'{"prompt": "\xff", "chosen": "a", "rejected": "b"}',
                      "invalid UTF-8 (invalid start byte at byte 12)"),
    "not a JSON object": (b"[1, 2]", "expected a JSON object, got list"),
    "missing key": ({"prompt": "p", "chosen": "a"}, "missing key 'rejected'"),
    "wrong type": ({**STD, "tie": "yes"}, "'tie' must be true or false, got 'yes'"),
    "bad HH transcript": ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: ?",
                           "rejected": "\n\nHuman: Hi\n\nAssistant: Go"},
                          "HH transcript 'chosen' has no final assistant turn"),
    "no shared prompt": ({"chosen": "Yes.", "rejected": "No."}, "'chosen' and 'rejected' share no prompt"),
    "empty completion": ({**STD, "rejected": " \n"}, "empty completion: 'rejected' is empty or whitespace"),
    "identical responses": ({**STD, "rejected": "a", "tie": True},
                            "'chosen' and 'rejected' are identical; a pair must differ"),
}


@pytest.mark.parametrize("reason", list(BAD_LINES))
def test_each_bad_line_is_an_error_naming_file_line_and_problem(tmp_path, reason):
    line, problem = BAD_LINES[reason]
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, b"", line, GOOD])  # the bad line is line 3
    with pytest.raises(DataError) as e:
        read_pairs(str(path))
    assert str(e.value).startswith(f"{path}:3: {problem}")
    if isinstance(e.value, PairError):  # unreadable lines are raised by rlhf.data.read_records
        assert e.value.reason == reason
    pairs, summary = read_pairs(str(path), skip_invalid=True)
    assert [p.source for p in pairs] == [f"{path}:1", f"{path}:4"]
    assert (summary.total, summary.kept, summary.skipped, summary.first) == (3, 2, {reason: 1},
                                                                             {reason: f"{path}:3"})


def test_more_bad_values_name_the_problem():
    cases = [
        ({"prompt": [user("p")], "chosen": [{"role": "assistant"}], "rejected": [assistant("b")]},
         "missing key 'content' in 'chosen'[0]"),
        ({"prompt": [user("p")], "chosen": [assistant("a")], "rejected": "b"},
         "'rejected' must be a list of messages in format 'conversational', got str"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "'prompt' must be a string or a list of messages, got int"),
        ({"rejected": "b"}, "missing key 'chosen'"),
        ({"chosen": [user("Hi"), assistant("")], "rejected": [user("Hi"), assistant("x")]},
         "empty completion: 'chosen'"),
        ({"chosen": "\n\nHuman: Hi\n\nAssistant:", "rejected": "\n\nHuman: Hi\n\nAssistant: Yo"},
         "empty completion: HH transcript 'chosen' ends with an empty assistant turn"),
        ({"chosen": "Hi\n\nHuman: x\n\nAssistant: y", "rejected": "\n\nHuman: x\n\nAssistant: z"}, None),
    ]
    for data, problem in cases[:-1]:
        with pytest.raises(PairError) as e:
            parse_pair(Record(data, "f.json: record 2"))
        assert str(e.value).startswith(f"f.json: record 2: {problem}"), str(e.value)
    with pytest.raises(PairError, match=r"^h.jsonl:1: HH transcript 'chosen' does not start with '\\n\\nHuman: '"):
        parse_pair(Record(cases[-1][0], "h.jsonl:1"), "hh")


def test_tolerant_reader_gives_read_records_messages(tmp_path):
    for reason in ("malformed JSON", "invalid UTF-8", "not a JSON object"):
        path = write_jsonl(tmp_path / "d.jsonl", [GOOD, BAD_LINES[reason][0]])
        with pytest.raises(DataError) as e:
            read_records(str(path))
        items = list(iter_jsonl(path))
        assert items[0] == Record(GOOD, f"{path}:1")
        assert isinstance(items[1], PairError) and str(items[1]) == str(e.value) and items[1].reason == reason


def test_skip_invalid_keeps_good_pairs_and_counts_each_reason(tmp_path, tok):
    lines = [GOOD]
    for reason, (line, _) in BAD_LINES.items():
        lines += [line] * (2 if reason in ("missing key", "malformed JSON") else 1)
    lines += [RECORDS["hh"][1], b"   ", {"prompt": "x" * 30, "chosen": "a", "rejected": "b"}, RECORDS["implicit"][0]]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    pairs, summary = read_pairs(str(path), skip_invalid=True, tokenizer=tok, max_length=25)
    n = len(lines)
    assert [p.source for p in pairs] == [f"{path}:1", f"{path}:{n - 3}", f"{path}:{n}"]
    expected = {reason: 1 for reason in BAD_LINES} | {"missing key": 2, "malformed JSON": 2, "prompt too long": 1}
    assert summary.skipped == expected
    assert (summary.total, summary.kept) == (n - 1, 3)  # the blank line is not a record
    assert summary.first["missing key"] == f"{path}:6" and summary.first["prompt too long"] == f"{path}:{n - 1}"
    text = str(summary)
    assert text.splitlines()[0] == f"{path}: {n - 1} records, 3 kept, {n - 4} skipped"
    for reason, count in expected.items():
        assert any(line.split()[0] == str(count) and f" {reason} " in line for line in text.splitlines()), reason
    assert str(ReadSummary(4, 4, source="x.jsonl")) == "x.jsonl: 4 records, 4 kept, none skipped"


def test_broken_json_file_is_not_skippable(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"prompt": "p",\n "chosen": }]', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: malformed JSON"):
        read_pairs(str(path), skip_invalid=True)


# -------------------------------------------------------------------------------------- prompt length


def test_prompt_too_long_with_the_tiny_tokenizer(tmp_path, tok):
    # ChatML: <|im_start|> "user\n" <content> <|im_end|> "\n" <|im_start|> "assistant\n" = 19 tokens + content bytes
    conv = {"prompt": [user("xy")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    std = {"prompt": "héllo", "chosen": "a", "rejected": "b"}  # 6 bytes, 6 tokens: no template for strings
    hh = {"chosen": "\n\nHuman: xy\n\nAssistant: a", "rejected": "\n\nHuman: xy\n\nAssistant: b"}
    assert [prompt_length(parse_pair(Record(d, "s")), tok) for d in (conv, std, hh)] == [21, 6, 21]
    path = write_jsonl(tmp_path / "d.jsonl", [std, conv, hh])
    pairs, _ = read_pairs(str(path), tokenizer=tok, max_length=21)
    assert len(pairs) == 3
    with pytest.raises(PairError, match=rf"^{path}:2: prompt too long: 21 tokens, more than max_length=20$"):
        read_pairs(str(path), tokenizer=tok, max_length=20)
    with pytest.raises(PairError, match=rf"^{path}:1: prompt too long: 6 tokens, more than max_length=5$"):
        read_pairs(str(path), tokenizer=tok, max_length=5)
    pairs, summary = read_pairs(str(path), skip_invalid=True, tokenizer=tok, max_length=20)
    assert [p.format for p in pairs] == ["standard"] and summary.skipped == {"prompt too long": 2}
    with pytest.raises(ValueError, match="pass both tokenizer and max_length"):
        read_pairs(str(path), tokenizer=tok)
