"""rlhf.jsonl: the one JSONL scanner, its strict rules (data a person gives) and tolerant ones (the toolkit's own
files). The readers built on it are tested with their callers (test_data, test_user_errors, test_preferences,
test_fsio)."""

from __future__ import annotations

from rlhf.jsonl import INVALID_UTF8, MALFORMED_JSON, NOT_AN_OBJECT, NOT_JSON, scan

LINES = [
    b'\xef\xbb\xbf{"a": 1}',  # 1: a byte-order mark at the start of the file
    b"",  # 2: blank
    b'{"n": NaN}',  # 3
    b"[1, 2]",  # 4
    b'{"b": "\xe2"}',  # 5: a cut-off UTF-8 character
    b"   ",  # 6: blank
    b'{"c": 1e999}',  # 7: overflows a float
    b'{"d": 2}\r',  # 8: a CRLF line
    b'{"e": 3',  # 9: the last line, without newline, torn
]


def test_strict_and_tolerant_rules_line_by_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\n".join(LINES))
    strict = list(scan(path))
    assert [line.number for line in strict] == [1, 3, 4, 5, 7, 8, 9]  # blank lines are not lines
    assert [line.reason for line in strict] == [None, MALFORMED_JSON, NOT_AN_OBJECT, INVALID_UTF8, MALFORMED_JSON,
                                                None, MALFORMED_JSON]
    assert [line.value for line in strict if line.reason is None] == [{"a": 1}, {"d": 2}]
    assert [line.message for line in strict[1:5]] == [
        "NaN is not a number (NaN and infinities are not valid JSON)", "expected a JSON object, got list",
        "invalid UTF-8 (invalid continuation byte at byte 7)", "1e999 overflows a float (not a finite number)"]
    assert strict[-1].message == "malformed JSON: Expecting ',' delimiter (column 8)"
    assert [line.ended for line in strict] == [True] * 6 + [False]
    assert strict[-1].raw == b'{"e": 3' and strict[-2].raw == b'{"d": 2}\r'  # as stored, without the newline

    tolerant = list(scan(path, strict=False))
    assert [line.number for line in tolerant] == [1, 3, 4, 5, 7, 8, 9]
    # the toolkit writes no BOM and reads NaN, overflows and any JSON value back as Python's json does
    assert [line.reason for line in tolerant] == [NOT_JSON, None, None, NOT_JSON, None, None, NOT_JSON]
    values = [line.value for line in tolerant if line.reason is None]
    assert values[0]["n"] != values[0]["n"] and values[1:] == [[1, 2], {"c": float("inf")}, {"d": 2}]
