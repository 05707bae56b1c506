"""Tests of the browser labeler (rlhf.labeling.browser), in two tiers:

1. the JSON API over real HTTP with urllib (no browser): decisions reach the store on disk, stale items,
   bad requests, undo, the cross-origin guard, the loopback default, quit stopping `serve`;
2. the page itself in Debian's headless Chromium driven by selenium: clicks and keys, literal HTML in a
   completion, all done, undo, quit. Skipped (with the reason) where Chromium, chromedriver or selenium is
   missing; `bash scripts/install_browser.sh` installs them.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.error import HTTPError, URLError

import pytest

from rlhf.labeling.browser import make_server, serve
from rlhf.labeling.store import DecisionStore, LabelSession, comparisons, read_candidates

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BOLD = "<b>not bold</b>"
PROMPTS = {  # prompt_id -> (prompt, first candidate, second candidate)
    "p0": ("What is 2 + 3?", "2 + 3 = 5.\n    (indented line)", f"It is 5. {BOLD} <script>alert(1)</script>"),
    "p1": ("Name a primary colour.", "Red.", "Blue, which is also the sky's colour."),
    "p2": ("Say hello in French.", "Bonjour !", "Salut."),
}


def make_session(tmp_path: Path) -> LabelSession:
    """3 prompts x 2 candidates -> 3 comparisons (p0:0-1, p1:0-1, p2:0-1), store in tmp_path/decisions.jsonl."""
    path = tmp_path / "candidates.jsonl"
    with open(path, "w") as f:
        for pid, (prompt, a, b) in PROMPTS.items():
            rec = {"prompt_id": pid, "prompt": [{"role": "user", "content": prompt}],
                   "candidates": [{"text": a}, {"text": b}]}
            f.write(json.dumps(rec) + "\n")
    items = comparisons(read_candidates(path))
    assert [c.item for c in items] == ["p0:0-1", "p1:0-1", "p2:0-1"]
    return LabelSession(items, DecisionStore(tmp_path / "decisions.jsonl"), labeler="browser")


def events_on_disk(session: LabelSession) -> list[dict]:
    """The store's file as written, not the in-memory copy."""
    path = session.store.path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def request(url: str, method: str = "GET", body=None, headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of one request; `body` is JSON-encoded unless it is already bytes."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.load(r)
    except HTTPError as e:
        with e:
            return e.code, json.load(e)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(session: LabelSession) -> tuple[threading.Thread, str]:
    """`serve` (the blocking entry point) in a background thread; returns the thread and the base URL."""
    port = free_port()
    thread = threading.Thread(target=serve, args=(session,), kwargs={"port": port, "open_message": False},
                              daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):  # wait until it accepts connections
        try:
            request(url + "/api/state")
            break
        except URLError:
            thread.join(0.05)
    return thread, url


@pytest.fixture
def api(tmp_path):
    """A server from make_server(port=0) running in a background thread: (session, base url without '/')."""
    session = make_session(tmp_path)
    server, url = make_server(session, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield session, url.rstrip("/")
    server.shutdown()
    server.server_close()
    thread.join(5)


# --------------------------------------------------------------------- 1. the API, no browser


def test_binds_loopback_by_default(tmp_path):
    server, url = make_server(make_session(tmp_path))
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert url == f"http://127.0.0.1:{server.server_address[1]}/" and server.server_address[1] > 0
    finally:
        server.server_close()
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"


def test_page_is_self_contained(api):
    _, url = api
    with urllib.request.urlopen(url + "/", timeout=5) as r:
        html = r.read().decode()
        csp = r.headers["Content-Security-Policy"]
    assert "First is better" in html and "white-space: pre-wrap" in html
    assert "innerHTML" not in html
    for needle in ("http://", "https://", "src=", "href=", "@import"):  # nothing fetched from anywhere
        assert needle not in html, needle
    assert "default-src 'none'" in csp


def test_state_then_decide_writes_the_store(api):
    session, url = api
    status, state = request(url + "/api/state")
    assert status == 200 and state["finished"] is False
    assert state["item"]["item"] == "p0:0-1" and state["item"]["second"] == PROMPTS["p0"][2]
    assert state["progress"] == {"done": 0, "total": 3, "first": 0, "second": 0, "tie": 0, "skip": 0}

    status, state = request(url + "/api/decide", "POST", {"item": "p0:0-1", "choice": "first"})
    assert status == 200 and state["item"]["item"] == "p1:0-1"
    assert state["progress"] == {"done": 1, "total": 3, "first": 1, "second": 0, "tie": 0, "skip": 0}
    [event] = events_on_disk(session)
    assert {k: event[k] for k in ("seq", "event", "item", "prompt_id", "a", "b", "choice", "labeler")} == {
        "seq": 0, "event": "label", "item": "p0:0-1", "prompt_id": "p0", "a": 0, "b": 1, "choice": "first",
        "labeler": "browser"}


def test_stale_item_is_409_and_writes_nothing(api):
    session, url = api
    status, body = request(url + "/api/decide", "POST", {"item": "p1:0-1", "choice": "first"})
    assert status == 409 and "not the current item" in body["error"]
    assert events_on_disk(session) == []
    # a double submit: the second request names an item that is already decided
    assert request(url + "/api/decide", "POST", {"item": "p0:0-1", "choice": "tie"})[0] == 200
    assert request(url + "/api/decide", "POST", {"item": "p0:0-1", "choice": "tie"})[0] == 409
    assert len(events_on_disk(session)) == 1


@pytest.mark.parametrize("body", [
    {"item": "p0:0-1", "choice": "maybe"},
    {"item": "p0:0-1"},
    {"choice": "first"},
    b"{not json",
    b"[1, 2]",
])
def test_bad_request_is_400_and_writes_nothing(api, body):
    session, url = api
    status, reply = request(url + "/api/decide", "POST", body)
    assert status == 400 and reply["error"]
    assert events_on_disk(session) == []


def test_unknown_path_is_404(api):
    _, url = api
    assert request(url + "/nope")[0] == 404
    assert request(url + "/api/nope", "POST", {})[0] == 404


def test_undo_makes_the_undone_item_current_again(api):
    session, url = api
    request(url + "/api/decide", "POST", {"item": "p0:0-1", "choice": "first"})
    request(url + "/api/decide", "POST", {"item": "p1:0-1", "choice": "second"})
    status, state = request(url + "/api/undo", "POST")
    assert status == 200 and state["item"]["item"] == "p1:0-1"
    assert state["progress"]["done"] == 1 and state["progress"]["second"] == 0
    assert [(e["event"], e.get("undoes")) for e in events_on_disk(session)] == [
        ("label", None), ("label", None), ("undo", 1)]


def test_foreign_origin_is_403(api):
    session, url = api
    decide = {"item": "p0:0-1", "choice": "first"}
    port = url.rsplit(":", 1)[1]
    # another site, and a DNS-rebinding page (its Host and Origin agree, but name a foreign host)
    for headers in ({"Origin": "http://evil.example"},
                    {"Origin": f"http://evil.example:{port}", "Host": f"evil.example:{port}"}):
        status, body = request(url + "/api/decide", "POST", decide, headers)
        assert status == 403 and "cross-origin" in body["error"]
        assert request(url + "/api/quit", "POST", None, headers)[0] == 403
    assert events_on_disk(session) == []
    # the page's own origin, and the laptop end of `ssh -L 9000:127.0.0.1:<port>`, are accepted
    assert request(url + "/api/decide", "POST", decide, {"Origin": url})[0] == 200
    tunnel = {"Origin": "http://127.0.0.1:9000", "Host": "127.0.0.1:9000"}
    assert request(url + "/api/decide", "POST", {"item": "p1:0-1", "choice": "tie"}, tunnel)[0] == 200
    assert len(events_on_disk(session)) == 2


def test_quit_stops_serve(tmp_path):
    session = make_session(tmp_path)
    thread, url = start_serve(session)
    status, state = request(url + "/api/quit", "POST")
    assert status == 200 and state["finished"] is True and state["item"]["item"] == "p0:0-1"
    thread.join(5)
    assert not thread.is_alive()
    assert events_on_disk(session) == []


# --------------------------------------------------------------------- 2. the page in headless Chromium


@pytest.fixture
def chromium(tmp_path, monkeypatch):
    """A headless Chromium through selenium, using only Debian's binaries (selenium downloads nothing)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (Python package)")
    if missing:
        reason = f"browser test needs {', '.join(missing)}: run `bash scripts/install_browser.sh`"
        print(reason)
        pytest.skip(reason)

    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager fetch a browser or driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def test_label_in_headless_chromium(tmp_path, chromium):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium
    session = make_session(tmp_path)
    thread, url = start_serve(session)
    wait = WebDriverWait(driver, 10)
    by_id = lambda i: driver.find_element(By.ID, i)  # noqa: E731

    def current_item(expected: str) -> None:
        """Wait until the page shows `expected` ("" once nothing is left)."""
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-item") == expected)

    driver.get(url + "/")
    current_item("p0:0-1")
    assert [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#buttons button")] == [
        "1 First is better", "2 Second is better", "T Tie", "S Skip", "U Undo", "Q Quit"]
    assert by_id("progress").text == "0 / 3 decided (first 0, second 0, tie 0, skip 0)"
    assert PROMPTS["p0"][0] in by_id("prompt").text
    assert by_id("first").text.startswith("2 + 3 = 5.")
    assert by_id("first").value_of_css_property("white-space") == "pre-wrap"
    # markup in a completion is shown as literal text, never parsed
    assert BOLD in by_id("second").text and "<script>" in by_id("second").text
    assert by_id("second").find_elements(By.CSS_SELECTOR, "*") == []
    assert not by_id("btn-undo").is_enabled()

    by_id("btn-first").click()
    current_item("p1:0-1")
    assert by_id("second").text == PROMPTS["p1"][2]
    ActionChains(driver).send_keys("2").perform()
    current_item("p2:0-1")
    by_id("btn-tie").click()
    current_item("")
    by_id("btn-undo").click()
    current_item("p2:0-1")
    assert by_id("first").text == PROMPTS["p2"][1]
    by_id("btn-skip").click()
    current_item("")
    assert "All done" in by_id("message").text
    assert by_id("progress").text == "3 / 3 decided (first 1, second 1, tie 0, skip 1)"
    assert not by_id("btn-first").is_enabled()

    events = events_on_disk(session)
    assert [(e["event"], e.get("item"), e.get("choice"), e.get("undoes")) for e in events] == [
        ("label", "p0:0-1", "first", None),
        ("label", "p1:0-1", "second", None),
        ("label", "p2:0-1", "tie", None),
        ("undo", None, None, 2),
        ("label", "p2:0-1", "skip", None),
    ]
    assert {item: e["choice"] for item, e in DecisionStore(session.store.path).effective().items()} == {
        "p0:0-1": "first", "p1:0-1": "second", "p2:0-1": "skip"}

    by_id("btn-quit").click()
    wait.until(lambda d: "Session ended" in d.find_element(By.ID, "message").text)
    thread.join(5)
    assert not thread.is_alive()
    assert len(events_on_disk(session)) == 5
