"""The kiosk's local web server: the live screen, its two buttons, and ``/metrics``.

A :class:`http.server.ThreadingHTTPServer` on one listener thread (``web``), a thread per
connection, at most :data:`MAX_CONNECTIONS` at once (others get a bare 503). Routes, a
public contract documented in the README:

``GET /``                       the page (``static/index.html``, in the configured language)
``GET /static/app.js|style.css`` its script and style
``GET /events``                 Server-Sent Events: a ``snapshot``, the recent conversation,
                                then every screen event as it happens
``GET /api/status``             ``Appliance.status()`` as JSON (what ``ctl status`` shows)
``POST /api/stop``              the button's short press (``Appliance.press(source="screen")``)
``POST /api/mute``              ``{"muted": true|false}`` -> ``Appliance.set_muted``
``GET /metrics``                Prometheus text format

Access: with no token (only allowed on a loopback listener) everything is open to local
clients. With ``[web] token`` a client that is not on loopback must present it as
``Authorization: Bearer ...``, as the ``soca_token`` cookie, or once as ``?token=`` (the
page then gets the cookie and a redirect to a clean URL). Tokens are compared in constant
time. Requests without the token must name the kiosk by IP or ``localhost`` in ``Host`` (a
DNS-rebinding page cannot pose as the kiosk), and a ``POST`` must be JSON with no foreign
``Origin``, so another web page cannot press the buttons. Every bad request gets a 4xx and
one debug log line, never a traceback.
"""
from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlsplit

from .access import (COOKIE, READ_TIMEOUT, CappedReader, HeadTooLarge, host_ok, is_loopback,
                     token_offered)
from .feed import Feed, sse, snapshot

log = logging.getLogger("soca.web")

MAX_CONNECTIONS = 16
MAX_BODY = 1024
HEARTBEAT_S = 15.0
RETRY_MS = 1000                 # EventSource reconnects this soon after a restart
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}


@dataclass(frozen=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""
    lang: str = "id"
    version: str = ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True           # SSE threads end on their own; see WebServer.close
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], web: "WebServer") -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.web = web
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("web request from %s failed", client_address[0], exc_info=True)


class WebServer:
    """Serve the screen for ``app`` (anything with ``status``, ``press``, ``set_muted``)."""

    def __init__(self, settings: WebSettings, app: Any, feed: Feed, meter: Any = None,
                 trusted: Callable[[str], bool] = is_loopback) -> None:
        self.settings, self.app, self.feed, self.meter = settings, app, feed, meter
        self.trusted = trusted
        self.stopping = threading.Event()
        self.refused = 0
        self._metrics: Any = None
        self._metrics_lock = threading.Lock()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._wake: Optional[tuple[int, int]] = None     # (read, write): wakes _serve
        self._files = {name: _asset(name) for name in ("index.html", *STATIC)}
        self._last_refusal_log = 0.0

    def start(self) -> None:
        """Bind and serve; raise OSError when the address cannot be used."""
        self._server = _Server((self.settings.host, self.settings.port), self)
        self.stopping.clear()
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._serve, args=(self._server, self._wake[0]),
                                        name="web", daemon=True)
        self._thread.start()
        log.info("screen and metrics on %s", self.url)

    def _serve(self, server: _Server, wake: int) -> None:
        """``serve_forever`` without its poll: it woke an idle kiosk five times a second
        (issue 13). Waits on the listening socket and a pipe :meth:`close` writes to."""
        with selectors.DefaultSelector() as selector:
            selector.register(server, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is server and not self.stopping.is_set():
                        server._handle_request_noblock()    # what serve_forever calls

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else 0

    @property
    def url(self) -> str:
        host = self.settings.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    def close(self, timeout: float = 1.0) -> None:
        """Stop listening, tell every SSE stream to end, wait up to ``timeout``."""
        self.stopping.set()
        self.feed.detach()
        self.feed.wake_all()
        if self._wake is not None:
            os.write(self._wake[1], b"x")       # the serving thread wakes and ends
        if self._thread is not None:
            self._thread.join(timeout)
        if self._server is not None:
            self._server.server_close()
        if self._wake is not None and not (self._thread and self._thread.is_alive()):
            for fd in self._wake:
                os.close(fd)
            self._wake = None
        deadline = time.monotonic() + timeout
        while self.feed.clients and time.monotonic() < deadline:
            time.sleep(0.02)        # SSE loops notice ``stopping`` within their wait
        self._server = self._thread = None

    def metrics(self) -> Any:
        with self._metrics_lock:
            if self._metrics is None:
                from .metrics import Metrics        # prometheus_client: on first scrape only
                self._metrics = Metrics(self.app.status, self.feed.telemetry, self.meter,
                                        self.settings.version)
            return self._metrics

    def authorised(self, peer: str, headers: Any, query: dict[str, list[str]]) -> Optional[str]:
        """How the client got in (``"open"``, ``"token"``), or None."""
        if not self.settings.token:
            return "open"
        if token_offered(self.settings.token, headers, query):
            return "token"
        return "open" if self.trusted(peer) else None

    def note_refusal(self, peer: str, why: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log > 10.0:   # a scanner must not flood the journal
            self._last_refusal_log = now
            log.info("web request from %s refused: %s (%d so far)", peer, why, self.refused)


class Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "soca-appliance"
    sys_version = ""
    timeout = READ_TIMEOUT
    default_request_version = "HTTP/1.0"   # errors about a bad request line keep a status line
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def setup(self) -> None:
        super().setup()
        # what send_response needs, before a request line has been parsed
        self.command, self.request_version, self.requestline = "", "HTTP/1.0", ""
        self.rfile = CappedReader(self.rfile, self.connection)  # type: ignore[assignment]

    def handle(self) -> None:
        try:
            super().handle()
        except HeadTooLarge:
            self._send(431, b"431 request too large\n")
        except (ConnectionError, TimeoutError):
            pass                                    # the client left or went quiet

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        log.debug("web %s: " + format, self.client_address[0], *args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):                  # any other method: 405, not 501
            return self._not_allowed
        raise AttributeError(name)

    # --- routing ---------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _not_allowed(self) -> None:
        self._send(405, b"405 method not allowed\n", headers={"Allow": "GET, POST"})

    def _route(self, method: str) -> None:
        web = self.server.web
        peer = self.client_address[0]
        self.connection.settimeout(READ_TIMEOUT)    # for what we write, whatever reads left
        if not self.path.startswith("/"):
            return self._send(400, b"400 bad request target\n")
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, max_num_fields=8)
        how = web.authorised(peer, self.headers, query)
        if how is None:
            web.note_refusal(peer, "no valid token")
            return self._send(401, b"401 token required\n",
                              headers={"WWW-Authenticate": 'Bearer realm="soca-appliance"'})
        if how == "open" and not host_ok(self.headers.get("Host", "")):
            web.note_refusal(peer, "unexpected Host header")
            return self._send(403, b"403 use the kiosk's IP address or localhost\n")
        routes: dict[tuple[str, str], Callable[[], None]] = {
            ("GET", "/"): self._page, ("GET", "/index.html"): self._page,
            ("GET", "/events"): self._events, ("GET", "/api/status"): self._status,
            ("GET", "/metrics"): self._metrics, ("POST", "/api/stop"): self._stop,
            ("POST", "/api/mute"): self._mute}
        if method == "GET" and parts.path.startswith("/static/"):
            return self._static(parts.path[len("/static/"):])
        handler = routes.get((method, parts.path))
        if handler is None:
            if any(path == parts.path for _, path in routes):
                return self._not_allowed()
            return self._send(404, b"404 not found\n")
        if how == "token" and "token" in query and parts.path == "/":
            return self._set_cookie()
        try:
            handler()
        except (ConnectionError, TimeoutError):
            pass
        except HeadTooLarge:
            self._send(413, b"413 request body too large\n")
        except Exception:  # noqa: BLE001 - logged; the client gets a 500, not a traceback
            log.exception("web %s %s failed", method, parts.path)
            self._send(500, b"500 internal error (see the appliance's log)\n")

    # --- endpoints -------------------------------------------------------------------

    def _page(self) -> None:
        settings = self.server.web.settings
        html = self.server.web._files["index.html"].replace(b"{{LANG}}", settings.lang.encode())
        # Only our own script and style run on the page, whatever text a transcript holds.
        self._send(200, html, "text/html; charset=utf-8", headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                       "frame-ancestors 'none'; base-uri 'none'"})

    def _static(self, name: str) -> None:
        if name not in STATIC:
            return self._send(404, b"404 not found\n")
        self._send(200, self.server.web._files[name], STATIC[name])

    def _status(self) -> None:
        web = self.server.web
        self._json(200, {**web.app.status(), "lang": web.settings.lang,
                         "version": web.settings.version})

    def _metrics(self) -> None:
        metrics = self.server.web.metrics()
        self._send(200, metrics.render(), metrics.content_type)

    def _stop(self) -> None:
        if self._json_body() is not None:
            self._json(200, {"ok": True, "result": self.server.web.app.press(source="screen")})

    def _mute(self) -> None:
        body = self._json_body()
        if body is None:
            return
        muted = body.get("muted") if isinstance(body, dict) else None
        if not isinstance(muted, bool) or len(body) != 1:
            return self._json(400, {"ok": False, "error": 'send {"muted": true} or '
                                    '{"muted": false}'})
        self.server.web.app.set_muted(muted)
        self._json(200, {"ok": True, "muted": muted})

    def _events(self) -> None:
        web = self.server.web
        client, history = web.feed.join()
        if client is None:
            return self._send(503, b"503 too many screens\n", headers={"Retry-After": "5"})
        try:
            first = sse("snapshot", json.dumps(snapshot(web.app.status(), web.settings.lang,
                                                        web.settings.version)))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(f"retry: {RETRY_MS}\n\n{first}{''.join(history)}".encode())
            idle = 0.0
            while not web.stopping.is_set() and not client.overflowed:
                message = client.next(timeout=1.0)
                if message is None:
                    idle += 1.0
                    if idle < HEARTBEAT_S:
                        continue
                    message, idle = ": keepalive\n\n", 0.0
                if message:                         # "" only wakes us (see close)
                    self.wfile.write(message.encode())
        except OSError:
            pass                                    # the page went away
        finally:
            web.feed.leave(client)

    def _set_cookie(self) -> None:
        cookie = SimpleCookie()
        cookie[COOKIE] = self.server.web.settings.token
        morsel = cookie[COOKIE]
        morsel["httponly"], morsel["samesite"], morsel["path"] = True, "Strict", "/"
        self._send(303, b"", headers={"Location": "/",
                                      "Set-Cookie": morsel.OutputString()})

    # --- helpers ---------------------------------------------------------------------

    def _json_body(self) -> Optional[Any]:
        """The request's JSON body ({} when empty), or None after replying with a 4xx."""
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host", ""):
            self._json(403, {"ok": False, "error": "cross-origin request refused"})
            return None
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            self._json(415, {"ok": False, "error": "send Content-Type: application/json"})
            return None
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._json(411, {"ok": False, "error": "Content-Length required"})
            return None
        if not 0 <= length <= MAX_BODY:
            self._json(413, {"ok": False, "error": f"body larger than {MAX_BODY} bytes"})
            return None
        raw = self.rfile.read(length) if length else b"{}"
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            self._json(400, {"ok": False, "error": "malformed JSON"})
            return None

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, (json.dumps(obj, default=str, ensure_ascii=False) + "\n").encode(),
                   "application/json; charset=utf-8")

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              headers: Optional[dict[str, str]] = None) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            pass


def _asset(name: str) -> bytes:
    return (resources.files("soca_appliance.web") / "static" / name).read_bytes()
