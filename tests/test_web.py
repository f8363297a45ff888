"""The kiosk's web server without a browser: real HTTP on 127.0.0.1 (and on this machine's
own address for the token): pages, the two buttons, bad requests of every kind, the token,
and the SSE feed. Metrics, the mic level, [web] config and `run`: test_web_metrics.py."""
from __future__ import annotations

import io
import json
import threading
import time
from typing import Iterator

import pytest

from conftest import assert_never_wakes, wait_for
from soca_appliance.events import EventLog, Redactor
from soca_appliance.web import WebServer, serve
from soca_appliance.web.feed import CLIENT_QUEUE
from web_helpers import (KEY, TOKEN, FakeApp, SseStream, make_server, non_loopback_address,
                         post_json, raw, request, status_of)


@pytest.fixture
def events() -> EventLog:
    return EventLog("json", stream=io.StringIO(), redactor=Redactor([KEY]))


@pytest.fixture
def app() -> FakeApp:
    return FakeApp()


@pytest.fixture
def web(app: FakeApp, events: EventLog) -> Iterator[WebServer]:
    server = make_server(app, events)
    yield server
    server.close()


def test_an_idle_web_thread_never_wakes_and_close_still_stops_it(web: WebServer) -> None:
    """It waits on its socket and a wake-up pipe (serve_forever polled 5 times a second)."""
    thread = web._thread
    assert thread is not None and thread.is_alive()
    assert_never_wakes(thread)
    assert request(web.port, "GET", "/api/status")[0] == 200   # and still serves
    started = time.monotonic()
    web.close()
    assert not thread.is_alive() and time.monotonic() - started < 0.5


# --- pages and buttons --------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["en", "id"])
def test_page_is_served_in_the_configured_language(app: FakeApp, events: EventLog,
                                                   lang: str) -> None:
    server = make_server(app, events, lang=lang)
    try:
        status, headers, body = request(server.port, "GET", "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert f'<html lang="{lang}">'.encode() in body
        assert "default-src 'self'" in headers["content-security-policy"]
        for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            status, headers, asset = request(server.port, "GET", f"/static/{name}")
            assert status == 200 and headers["content-type"].startswith(kind) and asset
    finally:
        server.close()


def test_stop_and_mute_go_through_the_button_code_path(web: WebServer, app: FakeApp) -> None:
    assert post_json(web.port, "/api/stop", {}) == (200, {"ok": True, "result": "barged"})
    assert post_json(web.port, "/api/mute", {"muted": True}) == (200, {"ok": True,
                                                                       "muted": True})
    assert post_json(web.port, "/api/mute", {"muted": False})[0] == 200
    assert app.calls == [("press", "screen"), ("set_muted", True), ("set_muted", False)]


def test_status_is_the_appliance_status(web: WebServer, app: FakeApp) -> None:
    status, _, body = request(web.port, "GET", "/api/status")
    doc = json.loads(body)
    assert status == 200
    assert doc == {**app.status(), "lang": "en", "version": "9.9.9"}


@pytest.mark.parametrize("body, headers, code", [
    (b'{"muted": "yes"}', {"Content-Type": "application/json"}, 400),
    (b'{"muted": true, "x": 1}', {"Content-Type": "application/json"}, 400),
    (b'[true]', {"Content-Type": "application/json"}, 400),
    (b'{"muted": tru', {"Content-Type": "application/json"}, 400),
    (b'\xff\xfe', {"Content-Type": "application/json"}, 400),
    (b'muted=1', {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    (b'{"muted": true}', {}, 415),
    (b'{"muted": true}', {"Content-Type": "application/json",
                          "Origin": "http://evil.example"}, 403),
    (b'{"muted": true}', {"Content-Type": "application/json", "Origin": "null"}, 403),
    (b'{"muted": true}' + b" " * 2000, {"Content-Type": "application/json"}, 413),
])
def test_bad_button_requests_are_refused(web: WebServer, app: FakeApp, body: bytes,
                                         headers: dict[str, str], code: int) -> None:
    status, _, reply = request(web.port, "POST", "/api/mute", body, headers)
    assert status == code
    assert json.loads(reply)["ok"] is False
    assert app.calls == []


def test_post_without_length_is_411(web: WebServer, app: FakeApp) -> None:
    reply = raw(web.port, b"POST /api/stop HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                          b"Content-Type: application/json\r\n\r\n")
    assert status_of(reply) == 411 and app.calls == []


# --- bad requests -------------------------------------------------------------------------

@pytest.mark.parametrize("data, code", [
    (b"GET /nope HTTP/1.0\r\n\r\n", 404),
    (b"GET /static/../server.py HTTP/1.0\r\n\r\n", 404),
    (b"GET /static/%2e%2e/server.py HTTP/1.0\r\n\r\n", 404),
    (b"GET /static/index.html\x00 HTTP/1.0\r\n\r\n", 404),
    (b"GET http://evil.example/ HTTP/1.0\r\n\r\n", 400),
    (b"GET * HTTP/1.0\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\n\r\n", 505),
    (b"GET / HTTP/1.0 extra\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n", 400),
    (b"PUT / HTTP/1.0\r\n\r\n", 405),
    (b"DELETE /api/stop HTTP/1.0\r\n\r\n", 405),
    (b"HEAD / HTTP/1.0\r\n\r\n", 405),
    (b"OPTIONS * HTTP/1.0\r\n\r\n", 405),
    (b"FROB / HTTP/1.0\r\n\r\n", 405),
    (b"GET /api/stop HTTP/1.0\r\n\r\n", 405),
    (b"POST /metrics HTTP/1.0\r\n\r\n", 405),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n", 431),
    (b"GET / HTTP/1.0\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.0\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(150)) + b"\r\n", 431),
    (b"GET / HTTP/1.0\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 500)
                                      for i in range(60)) + b"\r\n", 431),
    (b"GET / HTTP/1.0\r\nHost: evil.example:8080\r\n\r\n", 403),
    (b"GET /metrics HTTP/1.0\r\nHost: rebind.attacker.example\r\n\r\n", 403),
])
def test_bad_requests_get_4xx_never_a_traceback(web: WebServer, data: bytes, code: int,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    reply = raw(web.port, data)
    assert status_of(reply) == code, reply[:200]
    assert 400 <= code < 600 and (code < 500 or code == 505)
    assert b"Traceback" not in reply
    # the server still serves, and nothing was printed
    assert request(web.port, "GET", "/api/status")[0] == 200
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out


def test_client_that_says_nothing_or_leaves_does_not_block(web: WebServer) -> None:
    import socket
    silent = socket.create_connection(("127.0.0.1", web.port))
    half = socket.create_connection(("127.0.0.1", web.port))
    half.sendall(b"GET / HT")
    half.close()
    try:
        assert request(web.port, "GET", "/api/status")[0] == 200
    finally:
        silent.close()


def test_a_trickling_client_is_cut_off_at_the_deadline(app: FakeApp, events: EventLog,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    from soca_appliance.web import access as server_module
    monkeypatch.setattr(server_module, "HEAD_DEADLINE", 1.0)
    web = make_server(app, events)
    try:
        sock = socket.create_connection(("127.0.0.1", web.port), timeout=5)
        sock.sendall(b"GET / HTTP/1.0\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 4:       # one header byte every 0.2 s
            try:
                sock.sendall(b"X")
                if sock.recv(1, socket.MSG_DONTWAIT) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = True
                break
            time.sleep(0.2)
        sock.close()
        assert closed, "the server kept waiting for a request that never ends"
        assert time.monotonic() - started < 3
    finally:
        web.close()


def test_handler_failure_is_a_500_without_traceback(web: WebServer, app: FakeApp,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> dict:
        raise RuntimeError("status exploded")
    monkeypatch.setattr(app, "status", broken)
    status, _, body = request(web.port, "GET", "/api/status")
    assert status == 500 and b"Traceback" not in body and b"exploded" not in body
    assert any("failed" in r.getMessage() for r in caplog.records)


# --- the token ----------------------------------------------------------------------------

@pytest.fixture
def guarded(app: FakeApp, events: EventLog) -> Iterator[WebServer]:
    # every peer must show the token (as a client on another machine would)
    server = make_server(app, events, token=TOKEN, trusted=lambda ip: False)
    yield server
    server.close()


@pytest.mark.parametrize("path", ["/", "/events", "/api/status", "/metrics",
                                  "/static/app.js"])
def test_without_token_everything_is_401(guarded: WebServer, path: str) -> None:
    status, headers, _ = request(guarded.port, "GET", path)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"}, {"Authorization": f"Basic {TOKEN}"},
    {"Cookie": "soca_token=nope"}, {"Cookie": 'soca_token="\\'},
    {"Authorization": "Bearer " + "\u00e9" * 30}, {"Authorization": f"Bearer {KEY}"}])
def test_bad_tokens_are_refused(guarded: WebServer, app: FakeApp,
                                headers: dict[str, str]) -> None:
    assert request(guarded.port, "GET", "/api/status", headers=headers)[0] == 401
    status, _ = post_json(guarded.port, "/api/stop", {}, **headers)
    assert status == 401 and app.calls == []
    assert request(guarded.port, "GET", f"/metrics?token={TOKEN[:-1]}")[0] == 401


def test_good_token_by_header_cookie_and_query(guarded: WebServer, app: FakeApp) -> None:
    port = guarded.port
    assert request(port, "GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})[0] \
        == 200
    assert request(port, "GET", f"/metrics?token={TOKEN}")[0] == 200
    # The page: ?token= once, then a cookie the script cannot read, and a clean URL.
    status, headers, _ = request(port, "GET", f"/?token={TOKEN}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = cookie.split(";", 1)[0]
    status, _, body = request(port, "GET", "/", headers={"Cookie": jar})
    assert status == 200 and TOKEN.encode() not in body
    assert post_json(port, "/api/stop", {}, Cookie=jar)[0] == 200
    assert app.calls == [("press", "screen")]
    # With the token any Host will do (a name in the shop's DNS, say).
    assert request(port, "GET", "/api/status", headers={"Cookie": jar,
                                                        "Host": "kiosk-7.local"})[0] == 200


def test_token_on_a_real_non_loopback_address(app: FakeApp, events: EventLog) -> None:
    addr = non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address")
    server = make_server(app, events, host="0.0.0.0", token=TOKEN)
    try:
        assert request(server.port, "GET", "/api/status", host=addr)[0] == 401
        assert request(server.port, "GET", "/api/status", host=addr,
                       headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        # the kiosk's own browser, on loopback, needs no token
        assert request(server.port, "GET", "/api/status")[0] == 200
    finally:
        server.close()


def test_token_never_logged_and_key_never_served(app: FakeApp, events: EventLog,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    assert serve("127.0.0.1", 0, KEY, "en", "1", app, events, private_key=KEY) is None
    assert "token is the private key" in caplog.text and KEY not in caplog.text
    server = serve("127.0.0.1", 0, TOKEN, "en", "1", app, events, private_key=KEY)
    assert server is not None
    try:
        events.emit("error", message=f"server said {TOKEN} and {KEY}")
        stream = SseStream(server.port)
        assert stream.next()[0] == "snapshot"
        for path in ("/", "/static/app.js", "/api/status", "/metrics"):
            body = request(server.port, "GET", path)[2]
            assert KEY.encode() not in body and TOKEN.encode() not in body
        events.emit("error", message=f"again {KEY} {TOKEN}")
        name, data = stream.next()
        assert name == "event" and data["message"] == "again *** ***"
        stream.close()
    finally:
        server.close()
    assert TOKEN not in events.stream.getvalue() and KEY not in events.stream.getvalue()


# --- the live feed ------------------------------------------------------------------------

def test_feed_starts_with_a_snapshot_then_events_in_order(web: WebServer, app: FakeApp,
                                                          events: EventLog) -> None:
    app.muted = True
    events.emit("transcript", final=True, text="earlier question")     # history
    stream = SseStream(web.port)
    assert stream.status == 200 and stream.headers["content-type"].startswith(
        "text/event-stream")
    name, snap = stream.next()
    assert stream.retry == 1000
    assert name == "snapshot"
    assert snap == {"state": "ready", "connected": True, "muted": True, "faults": [],
                    "lang": "en", "version": "9.9.9"}
    assert stream.next()[1]["text"] == "earlier question"
    events.emit("transcript", final=False, text="hel")
    events.emit("log", level="info", logger="soca.x", message="diagnostic")
    events.emit("audio.output", frequency=22050, channels=1, buffer=512, buffer_ms=23.2,
                driver="dummy")
    events.emit("transcript", final=True, text="hello")
    events.emit("sentence.play", seq=1, sentence_id=0, bytes=10, text="Hi there.")
    events.emit("state", state="speaking")
    seen = stream.until(lambda e: e[1].get("event") == "state", what="the state event")
    assert [(n, d["event"], d.get("text")) for n, d in seen] == [
        ("event", "transcript", "hel"), ("event", "transcript", "hello"),
        ("event", "sentence.play", "Hi there."), ("event", "state", None)]
    stream.close()


def test_too_many_screens_get_503(app: FakeApp, events: EventLog) -> None:
    server = make_server(app, events)
    streams = []
    try:
        for _ in range(server.feed.max_clients):
            streams.append(SseStream(server.port))
            assert streams[-1].next()[0] == "snapshot"
        status, headers, _ = request(server.port, "GET", "/events")
        assert status == 503 and headers["retry-after"]
        assert request(server.port, "GET", "/api/status")[0] == 200
    finally:
        for s in streams:
            s.close()
        server.close()


def test_slow_screen_never_blocks_the_emitter(web: WebServer, events: EventLog) -> None:
    stream = SseStream(web.port)
    assert stream.next()[0] == "snapshot"
    wait_for(lambda: web.feed.clients == 1, 2, "the stream to join")
    client = web.feed._clients[0]
    done = threading.Event()

    def flood() -> None:
        # the stream's socket buffer fills, its queue fills: the emitter must not wait
        for i in range(CLIENT_QUEUE * 40):
            events.emit("transcript", final=False, text="x" * 2000 + str(i))
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    wait_for(done.is_set, 20, "the emitter to finish without waiting on the screen")
    wait_for(lambda: client.overflowed, 5, "the slow client to be dropped")
    wait_for(lambda: web.feed.clients == 0, 5, "the slow client to leave")
    stream.close()
    # a reconnecting page starts again from a snapshot
    again = SseStream(web.port)
    assert again.next()[0] == "snapshot"
    again.close()


def test_close_ends_streams_and_threads(app: FakeApp, events: EventLog) -> None:
    server = make_server(app, events)
    stream = SseStream(server.port)
    assert stream.next()[0] == "snapshot"
    wait_for(lambda: server.feed.clients == 1, 2, "the stream to join")
    server.close(timeout=2)
    assert stream.next(timeout=3) is None                # the server ended the stream
    assert server.feed.clients == 0
    assert not [t for t in threading.enumerate() if t.name == "web"]
    assert server.feed.on_event not in events._listeners
    stream.close()


def test_port_in_use_is_a_warning_not_a_crash(web: WebServer, app: FakeApp, events: EventLog,
                                              caplog: pytest.LogCaptureFixture) -> None:
    assert serve("127.0.0.1", web.port, "", "en", "1", app, events) is None
    assert "cannot listen on 127.0.0.1" in caplog.text


def test_ipv6_loopback(app: FakeApp, events: EventLog) -> None:
    import socket
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        server = make_server(app, events, host="::1")
    except OSError as exc:
        pytest.skip(f"cannot bind ::1 here: {exc}")
    try:
        assert server.url.startswith("http://[::1]:")
        status, _, body = request(server.port, "GET", "/api/status", host="::1",
                                  headers={"Host": f"[::1]:{server.port}"})
        assert status == 200 and json.loads(body)["state"] == "ready"
    finally:
        server.close()
