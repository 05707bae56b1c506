"""Tests of SFT data (rlhf.data): reading files, completion-only masking, truncation, collation, errors;
and of the token-level loss (rlhf.losses.token_nll_sum)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from rlhf.data import (
    IGNORE_INDEX,
    DataError,
    Record,
    TokenizedExample,
    collate,
    read_records,
    split_records,
    tokenize_sft,
)
from rlhf.losses import IGNORE_INDEX as LOSS_IGNORE_INDEX
from rlhf.losses import token_nll_sum
from rlhf.models import build_tiny_tokenizer

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


# --------------------------------------------------------------------- expected ids, built by hand


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which the byte-level pre-tokenizer uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_CHAR = _bytes_to_unicode()
CHAR_ID = {c: i for i, c in enumerate(sorted(BYTE_CHAR.values()))}  # the tiny vocabulary: sorted alphabet
SPECIAL_ID = {IM_START: 256, IM_END: 257}


def hand_ids(text: str) -> list[int]:
    """Token ids of `text` under the tiny tokenizer: one id per UTF-8 byte, one per special token."""
    ids = []
    for part in re.split(r"(<\|im_start\|>|<\|im_end\|>)", text):
        if part in SPECIAL_ID:
            ids.append(SPECIAL_ID[part])
        else:
            ids += [CHAR_ID[BYTE_CHAR[b]] for b in part.encode("utf-8")]
    return ids


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def masked_positions(labels: list[int]) -> list[int]:
    return [i for i, t in enumerate(labels) if t == IGNORE_INDEX]


def test_tiny_tokenizer_matches_hand_ids(tok):
    assert tok.pad_token_id == tok.eos_token_id == SPECIAL_ID[IM_END]
    assert tok.convert_tokens_to_ids(IM_START) == SPECIAL_ID[IM_START]
    assert hand_ids("a b") == [64, 220, 65]
    for text in ("What is 2 + 3?", f"{IM_START}user\nhé{IM_END}\n", "x\ty"):
        assert enc(tok, text) == hand_ids(text)


# ------------------------------------------------------------------------------------------- masking

CONV = {"prompt": [{"role": "user", "content": "What is 2 + 3?"}],
        "completion": [{"role": "assistant", "content": "2 + 3 = 5."}]}
CONV_PROMPT = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
CONV_COMPLETION = "2 + 3 = 5.<|im_end|>\n"


def test_conversational_prompt_completion_masks_exactly_the_prompt(tok):
    prompt_ids, completion_ids = hand_ids(CONV_PROMPT), hand_ids(CONV_COMPLETION)
    # 1 special + "user\n" (5) + question (14) + special + "\n" + special + "assistant\n" (10)
    assert len(prompt_ids) == 33
    assert len(completion_ids) == 12  # "2 + 3 = 5." (10) + <|im_end|> + "\n"

    ex = tokenize_sft(Record(CONV, "mem:1"), tok, max_length=256)
    assert ex.input_ids == prompt_ids + completion_ids
    assert ex.input_ids == enc(tok, CONV_PROMPT) + enc(tok, CONV_COMPLETION)
    assert masked_positions(ex.labels) == list(range(33))
    assert ex.labels[33:] == ex.input_ids[33:] == completion_ids
    assert ex.num_targets == 12
    assert ex.source == "mem:1"


def test_standard_prompt_completion_appends_eos(tok):
    prompt, completion = "Q: What is 2 + 3?\nA:", " 5"
    ex = tokenize_sft(Record({"prompt": prompt, "completion": completion}, "mem:2"), tok, max_length=256)
    expected_prompt = hand_ids(prompt)
    expected_completion = hand_ids(" 5") + [SPECIAL_ID[IM_END]]
    assert len(expected_prompt) == 20 and len(expected_completion) == 3
    assert ex.input_ids == expected_prompt + expected_completion
    assert ex.input_ids == enc(tok, prompt) + enc(tok, completion + tok.eos_token)
    assert masked_positions(ex.labels) == list(range(20))
    assert ex.labels[20:] == expected_completion
    assert ex.input_ids[-1] == tok.eos_token_id


def test_multi_turn_messages_unmask_only_assistant_turns(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    pieces = [  # (text, is_assistant), rendered by hand from the ChatML template
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False),
        ("Hello.<|im_end|>\n", True),
        ("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", False),
        ("4<|im_end|>\n", True),
    ]
    assert "".join(p for p, _ in pieces) == tok.apply_chat_template(messages, tokenize=False)
    ex = tokenize_sft(Record({"messages": messages}, "mem:3"), tok, max_length=256)

    expected_ids, expected_labels, unmasked = [], [], []
    for text, is_assistant in pieces:
        ids = hand_ids(text)
        if is_assistant:
            unmasked += range(len(expected_ids), len(expected_ids) + len(ids))
        expected_ids += ids
        expected_labels += ids if is_assistant else [IGNORE_INDEX] * len(ids)
    assert ex.input_ids == expected_ids
    assert ex.labels == expected_labels
    # Exact positions: system+user header is 1+7+9+1+1 + 1+5+2+1+1 + 1+10 = 40 tokens; "Hello.<|im_end|>\n" = 8;
    # second user header 1+5+4+1+1 + 1+10 = 23; "4<|im_end|>\n" = 3.
    assert unmasked == list(range(40, 48)) + list(range(71, 74))
    assert [i for i, t in enumerate(ex.labels) if t != IGNORE_INDEX] == unmasked
    assert len(ex.input_ids) == 74 and ex.num_targets == 11


def test_text_record_has_no_masking(tok):
    ex = tokenize_sft(Record({"text": "hello world"}, "mem:4"), tok, max_length=256)
    assert ex.input_ids == hand_ids("hello world") + [SPECIAL_ID[IM_END]]
    assert ex.labels == ex.input_ids
    assert ex.num_targets == 12


def test_completion_only_loss_false_masks_nothing(tok):
    for data in (CONV, {"prompt": "Q?", "completion": " A"}):
        full = tokenize_sft(Record(data, "mem:5"), tok, max_length=256, completion_only_loss=False)
        masked = tokenize_sft(Record(data, "mem:5"), tok, max_length=256)
        assert full.input_ids == masked.input_ids
        assert full.labels == full.input_ids
        assert IGNORE_INDEX not in full.labels
        assert full.num_targets == len(full.input_ids)


# ---------------------------------------------------------------------------------------- truncation


def test_truncation_cuts_on_the_right(tok):
    full = hand_ids(CONV_PROMPT) + hand_ids(CONV_COMPLETION)
    ex = tokenize_sft(Record(CONV, "mem:6"), tok, max_length=40)
    assert ex.input_ids == full[:40]
    assert masked_positions(ex.labels) == list(range(33))
    assert ex.labels[33:] == full[33:40] and ex.num_targets == 7
    exact = tokenize_sft(Record(CONV, "mem:6"), tok, max_length=45)
    assert exact.input_ids == full  # a sequence of exactly max_length is kept whole
    one = tokenize_sft(Record(CONV, "mem:6"), tok, max_length=34)
    assert one.num_targets == 1 and one.labels[-1] == full[33]


@pytest.mark.parametrize("max_length", [33, 10, 1])
def test_prompt_filling_max_length_is_an_error_naming_the_source(tok, max_length):
    with pytest.raises(DataError) as info:
        tokenize_sft(Record(CONV, "data/train.jsonl:7"), tok, max_length=max_length)
    msg = str(info.value)
    assert msg.startswith("data/train.jsonl:7:")
    assert f"max_length={max_length}" in msg


# --------------------------------------------------------------------------------------------- collate


def test_collate_right_pads(tok):
    a = TokenizedExample([5, 6, 7], [IGNORE_INDEX, 6, 7], "a")
    b = TokenizedExample([8], [8], "b")
    c = TokenizedExample([1, 2, 3, 4, 9], [IGNORE_INDEX, IGNORE_INDEX, 3, 4, 9], "c")
    pad = tok.pad_token_id
    batch = collate([a, b, c], pad)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    for v in batch.values():
        assert v.shape == (3, 5) and v.dtype == torch.long
    assert batch["input_ids"].tolist() == [[5, 6, 7, pad, pad], [8, pad, pad, pad, pad], [1, 2, 3, 4, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    m = IGNORE_INDEX
    assert batch["labels"].tolist() == [[m, 6, 7, m, m], [8, m, m, m, m], [m, m, 3, 4, 9]]


def test_collate_real_examples(tok):
    ex1 = tokenize_sft(Record(CONV, "x:1"), tok, max_length=256)
    ex2 = tokenize_sft(Record({"text": "hi"}, "x:2"), tok, max_length=256)
    batch = collate([ex1, ex2], tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 45)
    assert batch["input_ids"][1].tolist() == hand_ids("hi") + [257] + [257] * 42
    assert batch["attention_mask"][1].sum().item() == 3
    assert (batch["labels"] != IGNORE_INDEX).sum().item() == ex1.num_targets + ex2.num_targets == 15


# ------------------------------------------------------------------------------------------ bad input

GOOD_LINE = json.dumps(CONV)


def write_jsonl(tmp_path: Path, bad_line: bytes) -> Path:
    """A file whose line 4 is `bad_line`, after two good lines and a blank line (blank lines still count)."""
    path = tmp_path / "data.jsonl"
    path.write_bytes(GOOD_LINE.encode() + b"\n" + GOOD_LINE.encode() + b"\n\n" + bad_line + b"\n" + GOOD_LINE.encode() + b"\n")
    return path


@pytest.mark.parametrize("bad_line, words", [
    (b'{"prompt": "x", "completion": ', "malformed JSON"),
    (b'{"text": "caf\xe9"}', "invalid UTF-8"),
    (b'[1, 2, 3]', "expected a JSON object"),
    (b'"just a string"', "expected a JSON object"),
])
def test_unreadable_lines_name_file_and_line(tmp_path, bad_line, words):
    path = write_jsonl(tmp_path, bad_line)
    with pytest.raises(DataError) as info:
        read_records(str(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}:4:")
    assert words in msg


@pytest.mark.parametrize("record, words", [
    ({"question": "x", "answer": "y"}, "found keys: answer, question"),
    ({"prompt": "What?"}, "found keys: prompt"),
    ({"prompt": "What?", "completion": "   "}, "empty completion"),
    ({"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": ""}]},
     "empty completion"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"content": "Hello"}]}, "'messages'[1]"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "no assistant turn"),
    ({"messages": []}, "non-empty list"),
    ({"prompt": "Hi", "completion": [{"role": "assistant", "content": "x"}]}, "'prompt'"),
    ({"text": ""}, "'text'"),
    ({"text": 5}, "'text'"),
])
def test_bad_records_name_file_and_line(tmp_path, tok, record, words):
    path = write_jsonl(tmp_path, json.dumps(record).encode())
    records = read_records(str(path))
    assert [r.source for r in records] == [f"{path}:{n}" for n in (1, 2, 4, 5)]
    tokenize_sft(records[0], tok, max_length=256)  # the good line before is fine
    with pytest.raises(DataError) as info:
        tokenize_sft(records[2], tok, max_length=256)
    msg = str(info.value)
    assert msg.startswith(f"{path}:4:")
    assert words in msg


def test_missing_local_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_records(str(tmp_path / "nope.jsonl"))


# -------------------------------------------------------------------------------------------- formats

ROWS = [
    {"prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
     "completion": [{"role": "assistant", "content": f"{i} + 1 = {i + 1}."}]}
    for i in range(4)
]


def test_jsonl_json_and_parquet_read_the_same_records(tmp_path, tok, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")  # keep ~/.cache clean

    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    as_data = tmp_path / "data.json"
    as_data.write_text(json.dumps({"data": ROWS}), encoding="utf-8")
    parquet = tmp_path / "d.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(parquet))

    by_format = {p.name: read_records(str(p)) for p in (jsonl, as_list, as_data, parquet)}
    for name, records in by_format.items():
        assert [r.data for r in records] == ROWS, name
        assert len({r.source for r in records}) == 4 and all(str(tmp_path) in r.source for r in records), name
    assert [r.source for r in by_format["d.jsonl"]] == [f"{jsonl}:{i}" for i in (1, 2, 3, 4)]
    tokenized = {name: [tokenize_sft(r, tok, 256).input_ids for r in recs] for name, recs in by_format.items()}
    assert tokenized["list.json"] == tokenized["data.json"] == tokenized["d.parquet"] == tokenized["d.jsonl"]


def test_json_that_is_not_a_list_is_an_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"rows": []}', encoding="utf-8")
    with pytest.raises(DataError, match="expected a list"):
        read_records(str(path))
    path.write_text('[\n{"text": "a"},\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_records(str(path))
    assert str(info.value).startswith(f"{path}:") and "malformed JSON" in str(info.value)


# ---------------------------------------------------------------------------------------------- split


def test_split_records_is_deterministic_and_disjoint():
    records = [Record({"text": f"t{i}"}, f"f:{i}") for i in range(10)]
    train, held = split_records(records, 0.3, seed=1)
    assert (len(train), len(held)) == (7, 3)
    ids = lambda rs: [id(r) for r in rs]  # noqa: E731
    assert not set(ids(train)) & set(ids(held))
    assert sorted(ids(train) + ids(held)) == sorted(ids(records))
    # both halves keep the file order
    assert [records.index(r) for r in train] == sorted(records.index(r) for r in train)
    assert [records.index(r) for r in held] == sorted(records.index(r) for r in held)
    again = split_records(records, 0.3, seed=1)
    assert ids(again[0]) == ids(train) and ids(again[1]) == ids(held)
    helds = {tuple(records.index(r) for r in split_records(records, 0.3, seed=s)[1]) for s in range(10)}
    assert len(helds) > 1  # the seed matters
    assert split_records(records, 0.0, seed=1) == (records, [])
    t, h = split_records(records, 0.1, seed=5)
    assert (len(t), len(h)) == (9, 1)
    assert split_records([], 0.5, seed=0) == ([], [])


# ---------------------------------------------------------------------------------------------- losses


def test_token_nll_sum_by_hand():
    assert LOSS_IGNORE_INDEX == IGNORE_INDEX == -100
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [5.0, -5.0]]])  # B=1, T=3, V=2
    # position 0 predicts labels[1] = 1 from logits (0, 1); position 1 predicts labels[2] = 0 from (2, 0);
    # position 2 predicts nothing (no next label).
    nll0 = -(1.0 - math.log(math.exp(0.0) + math.exp(1.0)))
    nll1 = -(2.0 - math.log(math.exp(2.0) + math.exp(0.0)))
    nll, count = token_nll_sum(logits, torch.tensor([[IGNORE_INDEX, 1, 0]]))
    assert nll.item() == pytest.approx(nll0 + nll1, rel=1e-6)
    assert count.item() == 2

    # labels[0] is never a target, whatever it holds
    nll_b, count_b = token_nll_sum(logits, torch.tensor([[1, 1, 0]]))
    assert nll_b.item() == pytest.approx(nll0 + nll1, rel=1e-6) and count_b.item() == 2

    # an IGNORE_INDEX target contributes nothing and is not counted
    nll_c, count_c = token_nll_sum(logits, torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0]]))
    assert nll_c.item() == pytest.approx(nll1, rel=1e-6) and count_c.item() == 1
    nll_d, count_d = token_nll_sum(logits, torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]))
    assert nll_d.item() == 0.0 and count_d.item() == 0


def test_token_nll_sum_sums_over_batch():
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [5.0, -5.0]],
                           [[3.0, 3.0], [0.0, 0.0], [1.0, 2.0]]])  # B=2
    labels = torch.tensor([[IGNORE_INDEX, 1, 0], [0, 0, IGNORE_INDEX]])
    expected = (math.log(1 + math.exp(1.0)) - 1.0) + (math.log(math.exp(2.0) + 1) - 2.0) + math.log(2.0)
    nll, count = token_nll_sum(logits, labels)
    assert nll.item() == pytest.approx(expected, rel=1e-6) and count.item() == 3
    assert nll.dtype == torch.float32


def test_hub_dataset_names_go_through_datasets_load_dataset(monkeypatch):
    """A name that is not a local file is a hub dataset: the real `datasets.load_dataset` call, here faked."""
    import datasets

    calls = []

    def fake_load_dataset(name, split=None, **kw):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = read_records("some-org/demos", split="validation")
    assert calls == [("some-org/demos", "validation")]
    assert [r.data for r in records] == [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    assert [r.source for r in records] == ["some-org/demos[validation][0]", "some-org/demos[validation][1]"]
