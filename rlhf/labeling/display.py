"""Model output made safe to show a person, in the terminal and in the browser.

A completion is arbitrary text: escape sequences (ESC [ ... ) could clear the terminal, move the cursor or
recolour what the person reads before judging it; a carriage return or backspace overwrites what was printed;
bidirectional overrides (U+202E) and zero-width characters make the text read differently from what it is;
a lone surrogate (valid in a JSON string, not in UTF-8) cannot be encoded at all. `visible` shows each such
character as a visible mark and keeps everything else, newlines and tabs included, as it is:

    C0 controls, DEL   the Unicode control picture: ESC -> "␛", CR -> "␍", NUL -> "␀", DEL -> "␡"
    C1 controls        "<U+009B>"  (CSI: a one-byte escape sequence on some terminals)
    bidi and invisible "<U+202E>"  (overrides, isolates, marks, zero-width space and joiners, BOM)
    lone surrogates    "<U+D800>"
"""

from __future__ import annotations

import re

_BIDI_AND_INVISIBLE = "\u061c\u200b\u200c\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
_UNSAFE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI_AND_INVISIBLE}\ud800-\udfff]")


def _mark(m: re.Match) -> str:
    c = ord(m.group())
    if c < 0x20:
        return chr(0x2400 + c)  # the control picture of a C0 control
    if c == 0x7F:
        return "\u2421"
    return f"<U+{c:04X}>"


def visible(text: str) -> str:
    """`text` with every control, bidi/invisible format character and lone surrogate shown as a visible mark
    (newline and tab kept). Idempotent on its own output."""
    return _UNSAFE.sub(_mark, text)


def visible_json(obj):
    """`visible` applied to every string (keys too) in a JSON-like structure."""
    if isinstance(obj, str):
        return visible(obj)
    if isinstance(obj, dict):
        return {visible_json(k): visible_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [visible_json(v) for v in obj]
    return obj
