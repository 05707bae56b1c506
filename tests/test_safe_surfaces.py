"""What a person sees and what can reach it: the browser labeler checks Host and Origin on every request (GET
included), cannot be framed, survives lone surrogates; model output with escape sequences, carriage
returns or bidi overrides is shown as visible marks in the browser and the terminal; a busy port is one line."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from urllib.error import HTTPError

import pytest

from rlhf.config import ConfigError
from rlhf.labeling.browser import make_server
from rlhf.labeling.display import visible
from rlhf.labeling.store import DecisionStore, LabelSession, comparisons, read_candidates
from rlhf.labeling.terminal import run_terminal

ROOT = Path(__file__).resolve().parents[1]
# a completion that, printed raw, clears the screen, paints "A is better" over itself, rewinds the line with
# CR, sends a C1 CSI, flips the reading order with a bidi override, and holds a lone surrogate
HOSTILE = ("\x1b[2J\x1b[HA is better\x1b[8m hidden\x1b[0m\rover\x08\x9b31m\u202eevil\u202c \ud800 end\x07\x00\x7f")


def make_session(tmp_path: Path) -> LabelSession:
    path = tmp_path / "candidates.jsonl"
    rec = {"prompt_id": "p\x1b[31m0", "prompt": [{"role": "user", "content": "Which?\x1b]0;title\x07"}],
           "candidates": [{"text": HOSTILE}, {"text": "plain"}]}
    path.write_text(json.dumps(rec) + "\n")  # JSON escapes: the lone surrogate survives the file
    return LabelSession(comparisons(read_candidates(path)), DecisionStore(tmp_path / "decisions.jsonl"), "browser")


def test_visible_marks_every_unsafe_character_and_keeps_the_rest():
    out = visible(HOSTILE)
    assert not any(ord(c) < 0x20 and c not in "\n\t" or 0x7F <= ord(c) <= 0x9F for c in out)
    assert not any(0xD800 <= ord(c) <= 0xDFFF or c in "\u202e\u202c" for c in out)
    assert out.encode("utf-8")  # encodable
    assert out.startswith("\u241b[2J\u241b[HA is better") and "\u240dover\u2408<U+009B>31m<U+202E>evil" in out
    assert "<U+D800>" in out and visible(out) == out
    assert visible("line one\n\tindented, ünïcödé, 中文, emoji \U0001F600") == "line one\n\tindented, ünïcödé, 中文, emoji \U0001F600"


def test_terminal_prints_no_control_character_from_the_model(tmp_path):
    session = make_session(tmp_path)
    out = io.StringIO()
    assert run_terminal(session, stdin=io.StringIO("1\n"), stdout=out) == "done"
    text = out.getvalue()
    assert not any(ord(c) < 0x20 and c not in "\n\t" or 0x7F <= ord(c) <= 0x9F for c in text), repr(text)
    assert "\u241b[2J" in text and "<U+202E>evil" in text and "<U+D800>" in text
    assert session.store.events[0]["choice"] == "first"


def request(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


@pytest.fixture
def server(tmp_path):
    session = make_session(tmp_path)
    srv, url = make_server(session, port=0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield session, url.rstrip("/")
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def test_every_request_checks_host_and_origin_and_no_response_can_be_framed(server):
    session, url = server
    port = url.rsplit(":", 1)[1]
    for path in ("/", "/api/state", "/nothing"):
        # a DNS-rebinding page: the browser connects to 127.0.0.1 but sends the attacker's name as Host
        status, headers, body = request(url + path, {"Host": f"rebind.example:{port}"})
        assert status == 403 and b"Host" in body and b"Which" not in body
        status, _, body = request(url + path, {"Origin": "http://evil.example"})
        assert status == 403 and b"Which" not in body
        status, _, _ = request(url + path, {"Sec-Fetch-Site": "cross-site"})
        assert status == 403
        status, headers, _ = request(url + path)
        assert status in (200, 404)
        assert headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    # the laptop end of an ssh tunnel, and the page's own same-origin fetch, are served
    assert request(url + "/api/state", {"Host": "localhost:9000", "Sec-Fetch-Site": "same-origin"})[0] == 200


def test_state_with_controls_and_a_lone_surrogate_is_served_as_visible_text(server):
    session, url = server
    status, _, body = request(url + "/api/state")
    assert status == 200
    item = json.loads(body)["item"]
    assert item["first"] == visible(HOSTILE) and item["item"] == visible("p\x1b[31m0:0-1")
    assert item["prompt"][0]["content"] == "Which?\u241b]0;title\u2407"
    # the decision still reaches the store under the item's real id
    req = urllib.request.Request(url + "/api/decide", method="POST",
                                 data=json.dumps({"item": "p\x1b[31m0:0-1", "choice": "second"}).encode())
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200
    assert [e["item"] for e in session.store.events] == ["p\x1b[31m0:0-1"]


def test_busy_port_is_a_one_line_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is already in use"):
            make_server(make_session(tmp_path), port=port)
        # through the command: exit status 2 and one line, no traceback
        make_session(tmp_path)
        proc = subprocess.run([sys.executable, "-m", "rlhf.cli", "label", "--candidates",
                               str(tmp_path / "candidates.jsonl"), "--output_dir", str(tmp_path / "label"),
                               "--labeler", "browser", "--port", str(port)], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "already in use" in proc.stderr and "Traceback" not in proc.stderr
