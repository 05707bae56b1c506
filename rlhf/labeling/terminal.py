"""A person labels in the terminal: the prompt, then the two completions side by side, one key per decision.

    1 / 2   the first / second completion is better
    t       tie            s   skip (not comparable, or unsure)
    u       undo the last decision (that comparison is shown again)
    q       quit (every decision so far is already on disk; run the same command again to resume)

Keys act at once where standard input is a terminal (cbreak mode); otherwise a line per key is read, so the
labeler can also be driven by a script.

Model output is printed through `rlhf.labeling.display.visible`: an escape sequence, carriage return, backspace
or bidi override in a completion is shown as a visible mark (ESC as "␛") and cannot rewrite the screen.
"""

from __future__ import annotations

import itertools
import shutil
import sys
import textwrap

from rlhf.labeling.display import visible
from rlhf.labeling.store import Comparison, LabelSession

KEYS = {"1": "first", "2": "second", "t": "tie", "s": "skip"}
HELP = "[1] first better  [2] second better  [t] tie  [s] skip  [u] undo  [q] quit"


def side_by_side(left: str, right: str, width: int) -> list[str]:
    """Two texts wrapped into columns of equal width, separated by a bar."""
    col = max(20, (width - 3) // 2)

    def wrap(text: str) -> list[str]:
        lines = []
        for para in text.splitlines() or [""]:
            lines += textwrap.wrap(para, col, replace_whitespace=False, drop_whitespace=True) or [""]
        return lines

    rows = itertools.zip_longest(wrap(left), wrap(right), fillvalue="")
    return [f"{a:<{col}} | {b}" for a, b in rows]


def render(item: Comparison, progress: dict, width: int) -> str:
    """The screen for one comparison; every text from the data passes through `visible`."""
    bar = "=" * width
    head = (f"[{progress['done'] + 1}/{progress['total']}] {visible(item.item)}   decided {progress['done']}: "
            f"first {progress['first']}, second {progress['second']}, tie {progress['tie']}, skip {progress['skip']}")
    prompt = "\n".join(f"{visible(str(m['role']))}: {visible(m['content'])}" for m in item.prompt)
    cols = side_by_side(visible(item.first), visible(item.second), width)
    col = max(20, (width - 3) // 2)
    return "\n".join([bar, head, bar, "PROMPT", prompt, "-" * width,
                      f"{'FIRST':<{col}} | SECOND", *cols, "-" * width, HELP, "> "])


class KeyReader:
    """Single keys from a terminal in cbreak mode, or one line per key from a pipe."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdin
        self.tty = self.stream.isatty()
        self.saved = None

    def __enter__(self):
        if self.tty:
            import termios
            import tty

            self.saved = termios.tcgetattr(self.stream.fileno())
            tty.setcbreak(self.stream.fileno())
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self.saved)
        return False

    def read(self) -> str:
        if self.tty:
            return self.stream.read(1)
        line = self.stream.readline()
        return line.strip()[:1] if line else "q"  # end of input quits


def run_terminal(session: LabelSession, stdin=None, stdout=None) -> str:
    """Label until done or quit; returns "done" or "quit". Decisions are on disk as they are made."""
    out = stdout or sys.stdout
    width = min(shutil.get_terminal_size((100, 30)).columns, 160)
    with KeyReader(stdin) as keys:
        while True:
            item = session.current()
            if item is None:
                p = session.progress()
                out.write(f"\nAll {p['total']} comparisons decided. Decisions are in {session.store.path}\n")
                out.flush()
                return "done"
            if keys.tty:
                out.write("\x1b[2J\x1b[H")  # clear the screen
            out.write(render(item, session.progress(), width))
            out.flush()
            try:
                key = keys.read().lower()
            except KeyboardInterrupt:
                key = "q"
            if key in KEYS:
                session.decide(item.item, KEYS[key])
                out.write(f"{KEYS[key]}\n")
            elif key == "u":
                undone = session.undo()
                out.write(f"undone: {visible(undone['item'])}\n" if undone else "nothing to undo\n")
            elif key == "q":
                p = session.progress()
                out.write(f"\nQuit with {p['done']}/{p['total']} decided; they are saved in {session.store.path}. "
                          "Run the same command to resume.\n")
                out.flush()
                return "quit"
            else:
                out.write(f"unknown key {visible(key)!r}; {HELP}\n")
