"""Comparisons to label, and the append-only store that every labeler writes.

Candidates come from `rlhf collect` (`candidates.jsonl`: one record per prompt with k completions). A person
compares two completions at a time (`Comparison`); a simulated annotator ranks all k at once. Both write
events to one JSONL file, each line flushed and fsynced the moment the decision is made, so a killed session
loses nothing and the next one resumes at the first undecided comparison:

    {"seq": 0, "event": "label", "item": "arith-add-0000:0-1", "prompt_id": ..., "a": 0, "b": 1,
     "choice": "first" | "second" | "tie" | "skip", "labeler": "terminal", "time": ...}
    {"seq": 1, "event": "undo", "undoes": 0, "labeler": "terminal", "time": ...}
    {"seq": 2, "event": "rank", "item": "arith-add-0000", "prompt_id": ..., "order": [2, 0, 1],
     "gold": [0.95, 1.0, -0.1], "labeler": "simulated", "time": ...}

Nothing is ever rewritten: an undo is itself an event that cancels the latest decision not yet undone.

A decision is bound to the texts it judged: it records `prompt_hash` and `text_hashes` (a content hash of
the prompt and of each candidate it ranked, or of the two it compared, whitespace-normalised by
`text_hash`), and applies only while the candidates under its item still hold those texts. A decision
whose texts changed is stale: it stays in the log but is never applied again, and the item is pending
(a machine labeler relabels it at once, a person is shown it again). A pairwise decision still applies
when its two texts swapped places; its choice follows the texts. Decisions written before hashes were
recorded cannot be checked against the texts and count as stale.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.data import DataError, read_records
from rlhf.fsio import append_jsonl, read_jsonl

CHOICES = ("first", "second", "tie", "skip")


def normalize_text(text: str) -> str:
    """Runs of whitespace as one space, none at the ends: texts equal up to whitespace are one text."""
    return " ".join(text.split())


def text_hash(text: str) -> str:
    """Content hash of a completion, up to whitespace (16 hex digits of SHA-256)."""
    # surrogatepass: a model can emit a lone surrogate; it is hashed as written, never an error
    return hashlib.sha256(normalize_text(text).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def prompt_hash(prompt: list[dict]) -> str:
    """Content hash of a prompt's chat messages (roles and whitespace-normalised contents)."""
    blob = json.dumps([[m.get("role", ""), normalize_text(str(m.get("content", "")))] for m in prompt])
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def same_text(a: str, b: str) -> bool:
    return normalize_text(a) == normalize_text(b)


@dataclass(frozen=True)
class Candidates:
    """One prompt and its k sampled completions (a line of candidates.jsonl)."""

    prompt_id: str
    prompt: list[dict]  # chat messages before the response
    texts: list[str]
    record: dict  # the whole line, for task fields (reference, ...) and provenance
    source: str  # file:line

    @property
    def prompt_text(self) -> str:
        return "\n".join(m["content"] for m in self.prompt)

    @property
    def prompt_hash(self) -> str:
        return prompt_hash(self.prompt)

    @property
    def text_hashes(self) -> list[str]:
        return [text_hash(t) for t in self.texts]


@dataclass(frozen=True)
class Comparison:
    """Completion `a` against completion `b` of one prompt, shown as first and second."""

    item: str  # "<prompt_id>:<a>-<b>"
    prompt_id: str
    prompt: list[dict]
    a: int
    b: int
    first: str
    second: str

    @property
    def prompt_hash(self) -> str:
        return prompt_hash(self.prompt)

    @property
    def text_hashes(self) -> list[str]:
        return [text_hash(self.first), text_hash(self.second)]

    def to_json(self) -> dict[str, Any]:
        return {"item": self.item, "prompt_id": self.prompt_id, "prompt": self.prompt, "a": self.a, "b": self.b,
                "first": self.first, "second": self.second}


def read_candidates(path: str | Path) -> list[Candidates]:
    """Read candidates.jsonl, checking each line's keys; errors name the file and line."""
    out, seen = [], set()
    for rec in read_records(str(path)):
        d = rec.data
        for key in ("prompt_id", "prompt", "candidates"):
            if key not in d:
                raise DataError(f"{rec.source}: missing key '{key}'")
        prompt = d["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        texts = [c["text"] if isinstance(c, dict) else c for c in d["candidates"]]
        if len(texts) < 2 or not all(isinstance(t, str) for t in texts):
            raise DataError(f"{rec.source}: 'candidates' must hold at least 2 completions (texts)")
        if d["prompt_id"] in seen:
            raise DataError(f"{rec.source}: duplicate prompt_id '{d['prompt_id']}'")
        seen.add(d["prompt_id"])
        out.append(Candidates(str(d["prompt_id"]), prompt, texts, d, rec.source))
    return out


def comparisons(cands: list[Candidates], rule: str = "all", skip_identical: bool = False) -> list[Comparison]:
    """The pairwise comparisons shown to a person: every pair of candidates ("all") or (0,1), (2,3), ...
    ("disjoint"), in file order. `skip_identical` leaves out pairs of two identical texts (callers count
    them: `len(comparisons(c, rule)) - len(comparisons(c, rule, True))`)."""
    items = []
    for c in cands:
        k = len(c.texts)
        pairs = itertools.combinations(range(k), 2) if rule == "all" else ((i, i + 1) for i in range(0, k - 1, 2))
        for a, b in pairs:
            if skip_identical and same_text(c.texts[a], c.texts[b]):
                continue
            items.append(comparison_at(c, a, b))
    return items


class DecisionStore:
    """The append-only event log of one labelling effort (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.events: list[dict] = []
        self._torn = False  # the file ends in a line torn by a kill: cut before the first append
        if self.path.exists():
            self.events = self._read()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _read(self) -> list[dict]:
        # A last line without its newline is kept when it is a whole event (written, then killed before the
        # newline), dropped when torn (never acknowledged); a bad line before the last was edited by hand.
        events, notes = read_jsonl(self.path, what="decision line",
                                   hint="the store is append-only, so this was edited by hand")
        self._torn = bool(notes)
        return events

    def _append(self, event: dict) -> dict:
        event = {"seq": len(self.events), **event, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if self._torn:  # once: cut the torn tail; later appends never read the file again
            read_jsonl(self.path, repair=True)
            self._torn = False
        append_jsonl(self.path, [event], what="decision")  # ends a whole last line first; fsynced
        self.events.append(event)
        return event

    def label(self, item: Comparison, choice: str, labeler: str, **extra) -> dict:
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        return self._append({"event": "label", "item": item.item, "prompt_id": item.prompt_id, "a": item.a,
                             "b": item.b, "choice": choice, "labeler": labeler, "prompt_hash": item.prompt_hash,
                             "text_hashes": item.text_hashes, **extra})

    def rank(self, cands: Candidates, order: list[int], labeler: str, **extra) -> dict:
        if sorted(order) != list(range(len(cands.texts))):
            raise ValueError(f"order {order} is not a permutation of the {len(cands.texts)} candidates")
        return self._append({"event": "rank", "item": cands.prompt_id, "prompt_id": cands.prompt_id,
                             "order": list(order), "labeler": labeler, "prompt_hash": cands.prompt_hash,
                             "text_hashes": cands.text_hashes, **extra})

    def undo(self, labeler: str, among: set[str] | None = None) -> dict | None:
        """Cancel the latest live decision (on an item in `among`, if given); return it, or None if none."""
        live = {k: e for k, e in self.effective().items() if among is None or k in among}
        if not live:
            return None
        last = max(live.values(), key=lambda e: e["seq"])
        self._append({"event": "undo", "undoes": last["seq"], "labeler": labeler})
        return last

    def effective(self) -> dict[str, dict]:
        """item -> its latest decision that has not been undone."""
        undone = {e["undoes"] for e in self.events if e["event"] == "undo"}
        live: dict[str, dict] = {}
        for e in self.events:
            if e["event"] in ("label", "rank") and e["seq"] not in undone:
                live[e["item"]] = e
        return live

    def pending(self, items: list, judge: dict | None = None) -> list:
        """Items (Comparison or Candidates) with no live decision that applies to their present texts (and,
        for a ranking, was made by `judge`), in order."""
        done = self.effective()
        out = []
        for it in items:
            event = done.get(it.item if isinstance(it, Comparison) else it.prompt_id)
            if event is None or not applies(event, it, judge):
                out.append(it)
        return out


def applies(event: dict, target, judge: dict | None = None) -> bool:
    """Whether a decision judged exactly the texts `target` (Candidates or Comparison) holds now.

    A ranking applies to the same prompt and the same k texts in the same places, and, when `judge` is given,
    only if the same judge made it (a simulated annotator's settings, a reward model's content hash). A
    pairwise decision applies to the same prompt and the same two texts, in either order."""
    hashes = event.get("text_hashes")
    if hashes is None or event.get("prompt_hash") != target.prompt_hash:
        return False
    if event["event"] == "rank":
        if judge is not None and event.get("judge") != judge:
            return False
        return isinstance(target, Candidates) and list(hashes) == target.text_hashes
    return isinstance(target, Comparison) and sorted(hashes) == sorted(target.text_hashes)


def comparison_at(c: Candidates, a: int, b: int) -> Comparison | None:
    """Candidates a and b of `c` as a Comparison, or None where `c` has fewer candidates."""
    if not (0 <= a < len(c.texts) and 0 <= b < len(c.texts)):
        return None
    return Comparison(f"{c.prompt_id}:{a}-{b}", c.prompt_id, c.prompt, a, b, c.texts[a], c.texts[b])


class LabelSession:
    """What a person's labelling UI drives (terminal or browser): the current comparison, decide, undo.

    Every decision goes straight to the store; the session itself holds no state that a kill could lose.
    """

    def __init__(self, items: list[Comparison], store: DecisionStore, labeler: str):
        self.items = items
        self.store = store
        self.labeler = labeler
        self._index = {c.item: c for c in items}

    def current(self) -> Comparison | None:
        pending = self.store.pending(self.items)
        return pending[0] if pending else None

    def decide(self, item_id: str, choice: str) -> dict:
        """Record `choice` for `item_id` (which must be the current item: a stale page cannot mislabel)."""
        cur = self.current()
        if cur is None or cur.item != item_id:
            raise ValueError(f"item {item_id!r} is not the current item ({cur.item if cur else 'none left'})")
        return self.store.label(cur, choice, self.labeler)

    def undo(self) -> dict | None:
        """Cancel the latest of this session's items' decisions; the undone item becomes current again."""
        live = self.store.effective()
        return self.store.undo(self.labeler, among={c.item for c in self.items
                                                    if c.item in live and applies(live[c.item], c)})

    def progress(self) -> dict[str, int]:
        live = self.store.effective()
        decided = [c for c in self.items if c.item in live and applies(live[c.item], c)]
        counts = {ch: 0 for ch in CHOICES}
        for c in decided:
            if live[c.item]["event"] == "label":
                counts[live[c.item]["choice"]] += 1
        done = len(decided)
        return {"done": done, "total": len(self.items), **counts}
