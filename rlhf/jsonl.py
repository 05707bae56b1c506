"""Reading JSON Lines: one scanner with a strict and a tolerant mode; the readers decide what a bad line costs.

`scan(path, strict=...)` yields every non-blank line of a file as a `Line`: its number, whether it ended with
a newline, and its value or why it cannot be read.

    strict    data a person gives (SFT records, preference pairs): UTF-8, a byte-order mark allowed at the
              start of the file, NaN, Infinity and numbers too large for a float refused (Python's json takes
              them), every line a JSON object
    tolerant  the toolkit's own files (logs, candidates, decisions): any JSON value, read as Python's json
              reads it

On top of it: `rlhf.data.read_records` raises at the first bad line (a DataError naming file and line),
`rlhf.preferences.iter_jsonl` yields each bad line as a PairError so it can be skipped and counted, and
`rlhf.fsio.read_jsonl` drops a line torn by a kill, drops or refuses damaged ones, and repairs the file when
asked.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

# why a line cannot be read (Line.reason)
INVALID_UTF8 = "invalid UTF-8"
MALFORMED_JSON = "malformed JSON"  # strict: also NaN, Infinity or an overflowing number
NOT_AN_OBJECT = "not a JSON object"
NOT_JSON = "not JSON"  # tolerant: undecodable or unparsable, either way


class NonFiniteNumber(ValueError):
    """NaN, Infinity or a number too large for a float in JSON data (Python's json accepts them)."""


def _refuse_constant(token: str):
    raise NonFiniteNumber(f"{token} is not a number (NaN and infinities are not valid JSON)")


def _finite_float(token: str) -> float:
    value = float(token)
    if value != value or value in (float("inf"), float("-inf")):
        raise NonFiniteNumber(f"{token} overflows a float (not a finite number)")
    return value


def loads(text: str):
    """json.loads that refuses NaN, Infinity and overflowing numbers (NonFiniteNumber)."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


@dataclass
class Line:
    """One non-blank line of a JSONL file: `value` when it reads, else `reason` (a constant above) and
    `message` (what is wrong, without file and line)."""

    number: int  # 1-based
    raw: bytes  # the line as stored, without its newline
    ended: bool  # False for a last line without newline: complete, or torn by a kill mid-write
    value: Any = None
    reason: str | None = None
    message: str = ""


def scan(path: str | os.PathLike, *, strict: bool = True) -> Iterator[Line]:
    """Every non-blank line of `path`, read under the strict or the tolerant rules (module docstring)."""
    read = _read_strict if strict else _read_tolerant
    with open(Path(path), "rb") as f:
        for number, stored in enumerate(f, start=1):
            ended = stored.endswith(b"\n")
            raw = stored[:-1] if ended else stored
            read_as = read(stored, number)  # (value, reason, message), or None for a blank line
            if read_as is not None:
                yield Line(number, raw, ended, *read_as)


def _read_strict(stored: bytes, number: int) -> tuple[Any, str | None, str] | None:
    try:
        text = stored.decode("utf-8")  # with its newline, which decides how a cut-off character is named
    except UnicodeDecodeError as e:
        return None, INVALID_UTF8, f"invalid UTF-8 ({e.reason} at byte {e.start})"
    if number == 1 and text.startswith("\ufeff"):  # a UTF-8 byte-order mark at the start of the file
        text = text[1:]
    if not text.strip():
        return None
    try:
        value = loads(text.rstrip("\r\n"))
    except json.JSONDecodeError as e:
        return None, MALFORMED_JSON, f"malformed JSON: {e.msg} (column {e.colno})"
    except NonFiniteNumber as e:
        return None, MALFORMED_JSON, str(e)
    if not isinstance(value, dict):
        return None, NOT_AN_OBJECT, f"expected a JSON object, got {type(value).__name__}"
    return value, None, ""


def _read_tolerant(stored: bytes, number: int) -> tuple[Any, str | None, str] | None:
    if not stored.strip():
        return None
    try:
        return json.loads(stored.decode("utf-8")), None, ""
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, NOT_JSON, "not JSON"
