"""A person labels in a small local web page: the prompt, the two completions side by side, one key or button
per decision. Same actions and same append-only store as the terminal labeler (`rlhf.labeling.terminal`):

    1 / 2   the first / second completion is better
    t       tie            s   skip (not comparable, or unsure)
    u       undo the last decision (that comparison is shown again)
    q       quit (every decision so far is already on disk; run the same command again to resume)

The server binds 127.0.0.1 only and the page needs nothing from the internet (inline CSS and JS, no fonts or
scripts from elsewhere), so on a remote machine it is reached through an ssh tunnel from the laptop:

    ssh -L 8765:127.0.0.1:8765 user@host        # on the laptop; keep it open
    # then open http://127.0.0.1:8765 in the laptop's browser

Standard library only (`http.server`). Routes:

    GET  /              the page
    GET  /api/state     {"item": Comparison.to_json() | null, "progress": {...}, "finished": bool}
    POST /api/decide    {"item": "<item id>", "choice": "first" | "second" | "tie" | "skip"} -> state
                        (409 if the item is no longer the current one: a stale page cannot mislabel)
    POST /api/undo      -> state
    POST /api/quit      -> state with "finished": true, then the server shuts down and `serve` returns

`item` is null once every comparison is decided; `finished` turns true when the person quits. Errors are
JSON `{"error": ...}`: 400 bad request, 403 a request from another origin or for another host, 404 unknown
path, 409 stale item.

Every request, GET included, is checked: its Host must be a loopback name or the bound address (a
DNS-rebinding page, whose Host is its own name, cannot read the prompts and completions), and an Origin or
Sec-Fetch-Site header, when the browser sends one, must say the page's own origin. No response may be framed
(`frame-ancestors 'none'`, X-Frame-Options DENY). Text is sent through `rlhf.labeling.display.visible`:
control characters, escape sequences, bidi overrides and lone surrogates are shown as visible marks.
"""

from __future__ import annotations

import errno
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from rlhf.config import ConfigError
from rlhf.labeling.display import visible_json
from rlhf.labeling.store import CHOICES, LabelSession

MAX_BODY = 64 * 1024  # bytes; a decision is a few dozen
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}

# The page fetches everything else as JSON and writes user text with textContent only; the CSP below
# forbids any resource from elsewhere, so a completion holding HTML or a <script> stays inert text.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# on every response, JSON included: never framed (clickjacking), never read by another site
SAFETY_HEADERS = {"X-Frame-Options": "DENY", "Cross-Origin-Resource-Policy": "same-origin",
                  "Referrer-Policy": "no-referrer"}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rlhf labeler</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 1rem; color: #222; }
  header { display: flex; justify-content: space-between; align-items: baseline; gap: 1rem; flex-wrap: wrap; }
  h1 { font-size: 1.1rem; margin: 0; }
  #progress { font-variant-numeric: tabular-nums; }
  #item-id { color: #777; font-size: 0.85rem; }
  .text { white-space: pre-wrap; overflow-wrap: anywhere; font-family: ui-monospace, monospace;
          font-size: 0.92rem; line-height: 1.4; margin: 0; }
  #prompt { background: #f4f4f4; border-radius: 6px; padding: 0.6rem 0.8rem; margin: 0.8rem 0; }
  .role { font-weight: 600; color: #555; font-size: 0.8rem; text-transform: uppercase; }
  .pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
  .pair section { border: 1px solid #ccc; border-radius: 6px; padding: 0.6rem 0.8rem; min-width: 0; }
  .pair h2 { font-size: 0.9rem; margin: 0 0 0.4rem; color: #555; }
  #buttons { display: flex; flex-wrap: wrap; gap: 0.5rem; margin: 1rem 0; }
  button { font-size: 0.95rem; padding: 0.45rem 0.8rem; border: 1px solid #888; border-radius: 6px;
           background: #fff; cursor: pointer; }
  button:disabled { opacity: 0.4; cursor: default; }
  kbd { font-family: ui-monospace, monospace; font-weight: 700; margin-right: 0.2rem; }
  #message { font-size: 1.1rem; margin: 1.5rem 0; }
  #error { color: #b00020; min-height: 1.2em; }
  [hidden] { display: none !important; }
</style>
</head>
<body>
<header>
  <h1>Which completion is better?</h1>
  <div><span id="progress">loading...</span> <span id="item-id"></span></div>
</header>
<div id="error" role="alert"></div>
<div id="message" hidden></div>
<main id="comparison" hidden>
  <div id="prompt"></div>
  <div class="pair">
    <section><h2>First</h2><pre class="text" id="first"></pre></section>
    <section><h2>Second</h2><pre class="text" id="second"></pre></section>
  </div>
</main>
<div id="buttons">
  <button id="btn-first"><kbd>1</kbd> First is better</button>
  <button id="btn-second"><kbd>2</kbd> Second is better</button>
  <button id="btn-tie"><kbd>T</kbd> Tie</button>
  <button id="btn-skip"><kbd>S</kbd> Skip</button>
  <button id="btn-undo"><kbd>U</kbd> Undo</button>
  <button id="btn-quit"><kbd>Q</kbd> Quit</button>
</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let state = null;    // the last state from the server
let busy = false;    // a request is in flight: ignore further input (a held key must not label twice)
let ended = false;   // the person pressed quit

async function call(method, path, body) {
  const opts = {method: method, headers: {}};
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
  return data;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function render(s) {
  state = s;
  const p = s.progress;
  $("progress").textContent = p.done + " / " + p.total + " decided (first " + p.first + ", second " +
    p.second + ", tie " + p.tie + ", skip " + p.skip + ")";
  if (s.finished) ended = true;
  const item = ended ? null : s.item;
  $("comparison").hidden = !item;
  $("message").hidden = !!item;
  $("item-id").textContent = item ? item.item : "";
  document.body.dataset.item = item ? item.item : "";
  if (ended) {
    $("message").textContent = "Session ended. Your decisions are saved; you can close this page.";
  } else if (!item) {
    $("message").textContent = "All done: every comparison is decided. Undo still works; Quit ends the session.";
  } else {
    const prompt = $("prompt");
    prompt.replaceChildren();
    for (const m of item.prompt) {
      prompt.append(el("div", "role", m.role), el("pre", "text", m.content));
    }
    $("first").textContent = item.first;
    $("second").textContent = item.second;
  }
  for (const c of ["first", "second", "tie", "skip"]) $("btn-" + c).disabled = ended || !item;
  $("btn-undo").disabled = ended || p.done === 0;
  $("btn-quit").disabled = ended;
}

async function act(path, body) {
  if (busy || ended) return;
  busy = true;
  try {
    render(await call("POST", path, body));
    $("error").textContent = "";
  } catch (e) {
    $("error").textContent = e.message;
    try { render(await call("GET", "/api/state")); } catch (_) { /* server gone: keep the error shown */ }
  } finally {
    busy = false;
  }
}

const decide = (choice) => { if (state && state.item) act("/api/decide", {item: state.item.item, choice: choice}); };
const undo = () => act("/api/undo");
const quit = () => act("/api/quit");

for (const c of ["first", "second", "tie", "skip"]) $("btn-" + c).addEventListener("click", () => decide(c));
$("btn-undo").addEventListener("click", undo);
$("btn-quit").addEventListener("click", quit);

const KEYS = {"1": () => decide("first"), "2": () => decide("second"), "t": () => decide("tie"),
              "s": () => decide("skip"), "u": undo, "q": quit};
document.addEventListener("keydown", (e) => {
  if (e.repeat || e.ctrlKey || e.metaKey || e.altKey) return;
  const action = KEYS[e.key.toLowerCase()];
  if (action) { e.preventDefault(); action(); }
});

call("GET", "/api/state").then(render, (e) => { $("error").textContent = e.message; });
</script>
</body>
</html>
"""


class LabelServer(ThreadingHTTPServer):
    """The HTTP server plus the one `LabelSession` it drives; session calls are serialised by a lock."""

    daemon_threads = True

    def __init__(self, session: LabelSession, host: str, port: int):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.session = session
        self.finished = False  # set by quit
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def state(self) -> dict:
        item = self.session.current()
        return {"item": visible_json(item.to_json()) if item else None, "progress": self.session.progress(),
                "finished": self.finished}

    def trusts_host(self, host_header: str) -> bool:
        """Whether the page may have been loaded under this Host: a loopback name (also the laptop's end of an
        ssh tunnel, whatever its port) or the address the server binds. Bound to all interfaces, any."""
        name = urlsplit("//" + host_header).hostname or ""
        bound = self.server_address[0]
        return name in LOOPBACK_NAMES or name == bound or bound in ("0.0.0.0", "::")


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer
    server_version = "rlhf-labeler"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # one line per request would bury the terminal

    # ------------------------------------------------------------------ routes

    def do_GET(self):
        path = urlsplit(self.path).path
        refused = self._refusal()
        if refused:
            return self._json(403, {"error": refused})
        if path == "/":
            self._send(200, PAGE.encode("utf-8"), "text/html; charset=utf-8", {"Content-Security-Policy": CSP})
        elif path == "/api/state":
            with self.server.lock:
                self._json(200, self.server.state())
        else:
            self._json(404, {"error": f"no such path: {path}"})

    def do_POST(self):
        path = urlsplit(self.path).path
        if path not in ("/api/decide", "/api/undo", "/api/quit"):
            return self._json(404, {"error": f"no such path: {path}"})
        refused = self._refusal()
        if refused:
            return self._json(403, {"error": refused})
        try:
            body = self._read_json()
        except ValueError as e:
            return self._json(400, {"error": str(e)})
        srv = self.server
        with srv.lock:
            if srv.finished:
                return self._json(409, {"error": "the session has ended"})
            if path == "/api/decide":
                item, choice = body.get("item"), body.get("choice")
                if not isinstance(item, str) or choice not in CHOICES:
                    return self._json(400, {"error": f"expected {{'item': <id>, 'choice': one of {list(CHOICES)}}}, "
                                                     f"got {body!r}"})
                try:
                    srv.session.decide(item, choice)
                except ValueError as e:  # a stale page: the item is no longer the current one
                    return self._json(409, {"error": str(e)})
            elif path == "/api/undo":
                srv.session.undo()
            else:  # /api/quit
                srv.finished = True
            self._json(200, srv.state())
        if path == "/api/quit":
            # shutdown() waits for serve_forever to stop, so it runs in its own thread, after the reply is sent
            threading.Thread(target=srv.shutdown, name="labeler-shutdown", daemon=True).start()

    # ------------------------------------------------------------------ helpers

    def _refusal(self) -> str | None:
        """Why this request is refused (None: it is not). Checked on every request, GET included.

        Host must be trusted (`trusts_host`): a DNS-rebinding page reaches this server under its own name, so
        its requests carry that name as Host. A browser sends Origin with every POST and with cross-origin
        GETs, and Sec-Fetch-Site with every request; they must say the page's own origin. Requests with
        neither (curl, scripts) are not from a page and pass."""
        host = self.headers.get("Host")
        if host is not None and not self.server.trusts_host(host):
            return f"cross-origin request refused (Host {host!r} is not this labeler's address)"
        origin = self.headers.get("Origin")
        if origin is not None and not (host is not None and origin == f"http://{host}"):
            return f"cross-origin request refused (Origin {origin})"
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return f"cross-origin request refused (Sec-Fetch-Site {site})"
        return None

    def _read_json(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError(f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"request body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise ValueError("request body must be a JSON object")
        return body

    def _json(self, status: int, obj: dict) -> None:
        # ASCII JSON (\u escapes): encodable whatever the text holds; the page decodes it exactly
        self._send(status, json.dumps(obj).encode("ascii"), "application/json; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        headers = {"Content-Security-Policy": "frame-ancestors 'none'", **SAFETY_HEADERS, **(headers or {})}
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


def make_server(session: LabelSession, host: str = "127.0.0.1", port: int = 0) -> tuple[LabelServer, str]:
    """A ready (bound, not yet serving) server and its URL; port 0 picks a free port. Run it with
    `server.serve_forever()`; `POST /api/quit` or `server.shutdown()` stops it. A port in use is a ConfigError
    (one line, naming the port), not a traceback."""
    try:
        server = LabelServer(session, host, port)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use (another labeler or program); pass "
                              "--port with a free port, or --port 0 to pick one") from None
        if e.errno == errno.EADDRNOTAVAIL or isinstance(e, socket.gaierror):
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        raise
    return server, server.url


def serve(session: LabelSession, host: str = "127.0.0.1", port: int = 8765, *, open_message: bool = True) -> None:
    """Serve until the person presses quit (or Ctrl-C). Blocks. Prints the URL (and the ssh -L tunnel hint)
    on start."""
    server, url = make_server(session, host, port)
    port = server.server_address[1]
    if open_message:
        p = session.progress()
        print(f"Labelling {p['total']} comparisons ({p['done']} already decided); decisions go to "
              f"{session.store.path}\n"
              f"Open {url} in a browser. From a laptop, first run there:\n"
              f"    ssh -L {port}:127.0.0.1:{port} user@{socket.gethostname()}\n"
              f"then open http://127.0.0.1:{port}/ on the laptop. Keys: 1 first, 2 second, t tie, s skip, "
              f"u undo, q quit. Ctrl-C here also stops (nothing is lost).", flush=True)
        if host not in LOOPBACK_NAMES:
            print(f"Warning: bound to {host}, so anyone who can reach this machine can label; there is no login.",
                  flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass  # every decision is already on disk
    finally:
        server.server_close()
    if open_message:
        p = session.progress()
        print(f"Stopped with {p['done']}/{p['total']} decided; saved in {session.store.path}. "
              "Run the same command to resume.", flush=True)
