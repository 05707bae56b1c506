"""Data: reading records from local files or the hub, and tokenising demonstrations for SFT.

Accepted SFT record formats (TRL's names):
- prompt-completion, standard:        {"prompt": "What is 2+3?", "completion": " 5"}
- prompt-completion, conversational:  {"prompt": [{"role": "user", ...}], "completion": [{"role": "assistant", ...}]}
- conversational:                     {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
- language modelling:                 {"text": "..."}
Conversational records are rendered with the tokenizer's chat template. With `completion_only_loss`, only
completion (assistant) tokens carry labels; every other position is IGNORE_INDEX (-100).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf.jsonl import NonFiniteNumber, loads, scan
from rlhf.losses import IGNORE_INDEX

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(ValueError):
    """Bad input data; the message names the file and line (or record) at fault."""


@dataclass
class Record:
    """One input record and where it came from (`file:line`, or `dataset[split][index]`)."""

    data: dict[str, Any]
    source: str


# ------------------------------------------------------------------------------------------ reading


def read_records(path_or_name: str, split: str = "train") -> list[Record]:
    """Records from a local .jsonl/.json/.parquet file or, for any other name, a hub dataset split."""
    path = Path(path_or_name)
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            raise DataError(f"data file not found: {path_or_name}")
        if path.suffix == ".jsonl":
            return _read_jsonl(path)
        if path.suffix == ".json":
            return _read_json(path)
        if path.suffix == ".parquet":
            import datasets

            ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
            return [Record(dict(row), f"{path}:row {i + 1}") for i, row in enumerate(ds)]
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (use {', '.join(LOCAL_SUFFIXES)})")
    import datasets  # a hub dataset name: the real path for users with a network

    ds = datasets.load_dataset(path_or_name, split=split)
    return [Record(dict(row), f"{path_or_name}[{split}][{i}]") for i, row in enumerate(ds)]


def _read_jsonl(path: Path) -> list[Record]:
    records = []
    for line in scan(path):  # the strict rules: UTF-8 (a BOM allowed), finite numbers, objects
        if line.reason is not None:
            raise DataError(f"{path}:{line.number}: {line.message}")
        records.append(Record(line.value, f"{path}:{line.number}"))
    return records


def _read_json(path: Path) -> list[Record]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
        obj = loads(text)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
    except NonFiniteNumber as e:
        import re

        # the first token outside a string that json reads as a non-finite number
        hit = re.search(r'(?<![\w."])(-?Infinity|NaN|-?\d+(\.\d+)?[eE][+-]?\d{3,})(?![\w"])', text)
        line = text.count("\n", 0, hit.start()) + 1 if hit else "?"
        raise DataError(f"{path}:{line}: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a list of records (or {{\"data\": [...]}})")
    out = []
    for i, row in enumerate(obj):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {i}: expected a JSON object, got {type(row).__name__}")
        out.append(Record(row, f"{path}: record {i}"))
    return out


def split_records(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """A seeded (train, held-out) split with round(fraction * n) held out."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = round(fraction * len(records))
    held = set(order[:n_eval])
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


# --------------------------------------------------------------------------------- SFT tokenisation


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken
    source: str
    prompt_text: str = ""  # the last prompt message (or prompt string), for sample tables

    @property
    def num_targets(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def _check_messages(messages: Any, source: str, key: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{source}: '{key}' must be a non-empty list of {{role, content}} messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{source}: '{key}'[{i}] must be an object with 'role' and 'content'")
        if not isinstance(m["content"], str):
            raise DataError(f"{source}: '{key}'[{i}].content must be a string")
    return messages


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def segments_of(record: Record, tokenizer) -> list[tuple[str, bool]]:
    """Split a record into consecutive (text, is_completion) pieces that concatenate to the full sequence.

    Conversational pieces come from rendering growing prefixes of the conversation with the chat template,
    so the completion is exactly what the template adds for the assistant turn.
    """
    d, src = record.data, record.source
    if "messages" in d:
        messages = _check_messages(d["messages"], src, "messages")
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{src}: 'messages' has no assistant turn to learn from")
        pieces, done = [], ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = _render(tokenizer, messages[:i], add_generation_prompt=True)
            after = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
            if not before.startswith(done) or not after.startswith(before):
                raise DataError(f"{src}: the chat template does not render conversations prefix by prefix, "
                                "so assistant turns cannot be masked; use prompt/completion records")
            pieces += [(before[len(done):], False), (after[len(before):], True)]
            done = after
        return [p for p in pieces if p[0]]
    if "prompt" in d and "completion" in d:
        prompt, completion = d["prompt"], d["completion"]
        if isinstance(prompt, list) or isinstance(completion, list):
            prompt = _check_messages(prompt, src, "prompt")
            completion = _check_messages(completion, src, "completion")
            before = _render(tokenizer, prompt, add_generation_prompt=True)
            after = _render(tokenizer, prompt + completion, add_generation_prompt=False)
            if not after.startswith(before):
                raise DataError(f"{src}: the chat template's rendering of prompt + completion does not start "
                                "with its rendering of the prompt")
            text = after[len(before):]
            if not completion[-1]["content"].strip():
                raise DataError(f"{src}: empty completion")
            return [(before, False), (text, True)]
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise DataError(f"{src}: 'prompt' and 'completion' must both be strings or both message lists")
        if not completion.strip():
            raise DataError(f"{src}: empty completion")
        return [(prompt, False), (completion + (tokenizer.eos_token or ""), True)]
    if "text" in d:
        if not isinstance(d["text"], str) or not d["text"].strip():
            raise DataError(f"{src}: 'text' must be a non-empty string")
        return [(d["text"] + (tokenizer.eos_token or ""), True)]
    keys = ", ".join(sorted(d)) or "none"
    raise DataError(f"{src}: no SFT fields: expected 'messages', 'prompt' + 'completion', or 'text' "
                    f"(found keys: {keys})")


def _prompt_text(d: dict) -> str:
    if "messages" in d:
        last_assistant = max(i for i, m in enumerate(d["messages"]) if m["role"] == "assistant")
        before = [m["content"] for m in d["messages"][:last_assistant] if m["role"] != "assistant"]
        return before[-1] if before else ""
    if "prompt" in d:
        return d["prompt"][-1]["content"] if isinstance(d["prompt"], list) else d["prompt"]
    return ""


def tokenize_sft(record: Record, tokenizer, max_length: int, completion_only_loss: bool = True) -> TokenizedExample:
    """Token ids and labels for one record; prompt positions get IGNORE_INDEX when `completion_only_loss`.

    Each piece is tokenised on its own (no special tokens added), as the prompt is at generation time.
    Sequences longer than `max_length` are cut on the right; a record left with no target token is an error.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for text, is_completion in segments_of(record, tokenizer):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if (is_completion or not completion_only_loss) else [IGNORE_INDEX] * len(ids)
    if len(input_ids) > max_length:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    example = TokenizedExample(input_ids, labels, record.source, _prompt_text(record.data))
    if example.num_targets == 0:
        raise DataError(f"{record.source}: no completion token fits in max_length={max_length} "
                        f"(the prompt alone is {len(input_ids)}+ tokens); raise max_length or shorten the prompt")
    return example


def collate(examples: list[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad into `input_ids`, `attention_mask` and `labels`, each [B, T_max]."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
