"""Fault injection (issue 7: "a kiosk that never needs a power cycle").

The whole appliance runs in-process (WAV source, SDL's dummy driver, no GPIO) with fast
retry settings, against servers and links that misbehave: refused connections, resets and
closes at every stage, half-open links, stalled links while audio keeps coming, hostile
messages, authentication errors, a speaker that cannot open, a hundred forced reconnects,
TLS verification and the ws:// policy. For each fault the appliance stays alive (no
worker thread dies), says what happened in the event log, comes back to a connected,
ready state once the fault ends, never plays audio of a stale seq, and never writes the
private key anywhere.

Every wait polls a concrete condition against a deadline; the few fixed sleeps only open a
window whose length is the thing being measured, and say so.
"""
from __future__ import annotations

import base64
import gc
import io
import json
import logging
import os
import socket
import ssl
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, Optional

import pytest
import websocket

from soca_appliance import config
from soca_appliance.appliance import Appliance
from soca_appliance.events import EventLog, setup_logging
from soca_appliance.framing import Frame
from soca_appliance.wavsource import WavSource

from conftest import ASSETS, wait_for
from hostile import HostileServer, TightProxy, free_port, self_signed_cert
from servers import Proxy
from test_appliance import sentence_messages

KEY = "sk-fault-9f8e7d6c5b4a39281706"
MP3 = (ASSETS / "answer-en-1-1.mp3").read_bytes()
PING_INTERVAL = 1.0
PING_TIMEOUT = 0.5
FAST = dict(backoff_initial=0.05, backoff_max=0.2, ping_interval=PING_INTERVAL,
            ping_timeout=PING_TIMEOUT, connect_timeout=2.0, auth_retry=1.0)


def chunk(seq: Any = 1, sid: Any = 1, index: Any = 0, last: Any = False,
          audio: Any = None, **extra: Any) -> dict[str, Any]:
    msg = {"stepType": "sentence", "seq": seq, "sentenceId": sid, "chunkIndex": index,
           "isLastChunk": last, "audioBase64": audio, "audioMime": "audio/mp3"}
    msg.update(extra)
    return msg


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class Sink:
    """A stream that keeps nothing: counts lines and whether the key went by."""

    def __init__(self) -> None:
        self.lines = 0
        self.leaked = False

    def write(self, text: str) -> None:
        self.lines += text.count("\n")
        self.leaked = self.leaked or KEY in text

    def flush(self) -> None:
        pass


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Harness:
    """One in-process appliance with a JSON event log, its expiry loop on a thread, and
    checks that hold after every fault: no thread died, the key was never written."""

    def __init__(self, url: str, fmt: str = "json", log_level: str = "info",
                 key: str = KEY, **overrides: Any) -> None:
        values: dict[str, Any] = dict(url=url, agent_id="agent-faults", lang="en",
                                      gpio="off", duplex="full", log_format=fmt, **FAST)
        values.update(overrides)
        self.cfg = config.load(None, env={}, overrides=values)
        self.out = io.StringIO()                 # the event log (stdout of the service)
        self.err = io.StringIO()                 # diagnostics in text mode (its stderr)
        self.events = EventLog(fmt, stream=self.out)
        self.key = key
        self.events.redact.add(key)              # as the CLI does once it read the key
        self.records: list[dict[str, Any]] = []
        self.keep_records = True                 # False: only count (memory measurements)
        self.warnings = 0                        # log lines at warning level, all kept or not
        self._lock = threading.Lock()
        self.events.subscribe(self._record)
        setup_logging(self.events, log_level, stream=self.err)
        self.source = WavSource(ASSETS / "chime.wav")     # a short chime, then silence
        self.app = Appliance(self.cfg, events=self.events, source=self.source,
                             private_key=key)
        self._stop = threading.Event()
        self._runner = threading.Thread(target=self.app.run, args=(self._stop,),
                                        name="appliance-run", daemon=True)
        self.thread_errors: list[str] = []
        self._old_hook = threading.excepthook
        self.closed = False

    # --- events ----------------------------------------------------------------------

    def _record(self, record: dict[str, Any]) -> None:
        with self._lock:
            if record["event"] == "log" and record.get("level") == "warning":
                self.warnings += 1
            if self.keep_records:
                self.records.append({**record, "_mono": time.monotonic()})

    def events_of(self, name: str, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records if r["event"] == name
                    and all(r.get(k) == v for k, v in match.items())]

    def count(self, name: str, **match: Any) -> int:
        return len(self.events_of(name, **match))

    def wait(self, name: str, count: int = 1, timeout: float = 10.0,
             **match: Any) -> list[dict[str, Any]]:
        return wait_for(lambda: len(self.events_of(name, **match)) >= count
                        and self.events_of(name, **match), timeout)

    def logs(self, contains: str = "", level: Optional[str] = None) -> list[str]:
        return [r["message"] for r in self.events_of("log")
                if contains in r["message"] and (level is None or r["level"] == level)]

    def plays(self) -> list[dict[str, Any]]:
        return self.events_of("sentence.play")

    def send_sentence(self, server: HostileServer, seq: int, sid: Any, text: str,
                      chunks: int = 4) -> None:
        for msg in sentence_messages(seq, sid, MP3, text, chunks=chunks):
            server.send(msg)

    # --- life cycle ------------------------------------------------------------------

    def _excepthook(self, args: Any) -> None:
        self.thread_errors.append(f"{args.thread.name if args.thread else '?'}: "
                                  f"{args.exc_type.__name__}: {args.exc_value}")
        self._old_hook(args)

    def __enter__(self) -> "Harness":
        threading.excepthook = self._excepthook
        self.app.start()
        self._runner.start()
        return self

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            assert self.app.healthy(), "a worker thread of the appliance died"
        finally:
            self._stop.set()
            self.app.shutdown()
            self._runner.join(2)
            threading.excepthook = self._old_hook
        assert not self.thread_errors, self.thread_errors
        self.assert_no_secret()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def assert_no_secret(self) -> None:
        texts = [self.out.getvalue(), self.err.getvalue(), *self.thread_errors,
                 repr(self.app.link.settings), repr(self.cfg), json.dumps(self.app.status())]
        for text in texts:
            assert self.key not in text


@pytest.fixture(autouse=True)
def client_lib_log():
    """Everything websocket-client logs, at every level: it must not carry the key."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("websocket")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old_level)
    assert KEY not in stream.getvalue()


def assert_backs_to_ready(h: Harness, connects: int, timeout: float = 10.0) -> None:
    h.wait("connected", count=connects, timeout=timeout)
    h.wait("audio.output", timeout=timeout)          # the speaker is open too
    wait_for(lambda: h.app.state == "ready" and h.app.link.streaming, timeout)


# --- connection faults -----------------------------------------------------------------

def test_connection_refused_backs_off_then_connects() -> None:
    port = free_port()
    with Harness(f"ws://127.0.0.1:{port}/voice-ws") as h:
        gone = h.wait("disconnected", count=6)
        assert all(g["reason"] == "connection refused" and g["code"] is None for g in gone)
        delays = [g["retry_in"] for g in gone]
        # 0.05 s doubling (jitter +/- 20 %) to the 0.2 s cap, and never above it
        assert delays[0] < delays[1] < delays[2], delays
        assert all(0.159 <= d <= 0.2 for d in delays[2:]), delays
        assert h.app.state == "connecting" and not h.app.link.streaming
        assert h.count("connected") == 0
        # The fault ends: a server comes up on that port.
        with HostileServer(port=port) as server:
            assert_backs_to_ready(h, 1)
            assert server.starts[-1]["private_key"] == KEY
            h.close()
    # one line per failed attempt, no tracebacks
    assert "Traceback" not in h.out.getvalue()


def test_reset_mid_start_then_recovers() -> None:
    with HostileServer(mode="reset_after_start") as server, Harness(server.url) as h:
        gone = h.wait("disconnected", count=3)
        assert all(g["code"] is None and ("reset" in g["reason"] or g["reason"] ==
                                          "connection lost") for g in gone), gone
        assert h.count("connected") == 0 and h.app.state == "connecting"
        assert len(server.starts) >= 3                  # a new start on each attempt
        server.mode = "normal"
        assert_backs_to_ready(h, 1)


def test_close_mid_start_then_recovers() -> None:
    with HostileServer(mode="close_after_start", close_code=1011) as server, \
            Harness(server.url) as h:
        gone = h.wait("disconnected", count=2)
        assert all("1011" in g["reason"] for g in gone), gone
        assert h.count("connected") == 0
        server.mode = "normal"
        assert_backs_to_ready(h, 1)


def test_close_mid_start_reports_the_close_code() -> None:
    with HostileServer(mode="close_after_start", close_code=1011) as server, \
            Harness(server.url) as h:
        gone = h.wait("disconnected")[0]
        assert gone["code"] == 1011


def test_closed_mid_sentence_never_plays_it() -> None:
    chunks = sentence_messages(2, 70, MP3, "half a sentence", chunks=6)
    # collect-then-play: a sentence cut short never starts (progressive: tested apart)
    with HostileServer() as server, Harness(server.url, progressive_playback=False) as h:
        assert_backs_to_ready(h, 1)
        for msg in chunks[:3]:
            server.send(msg)
        wait_for(lambda: h.app.assembler.pending == 1)
        server.close_clients(1011)
        gone = h.wait("disconnected")[0]
        assert gone["code"] == 1011
        assert_backs_to_ready(h, 2)
        assert h.app.assembler.pending == 0
        # The new session numbers its answers from 1 again: they play; the half sentence
        # of the old session never does.
        h.send_sentence(server, 1, 71, "after the reconnect")
        h.wait("sentence.play", sentence_id=71)
        assert [p["sentence_id"] for p in h.plays()] == [71]


CLOSES = [1000, 1001, 1008, 1011, "server-reset", "proxy-cut"]


@pytest.mark.parametrize("how", CLOSES, ids=[str(c) for c in CLOSES])
def test_close_with_each_code_then_reconnect(how: Any) -> None:
    with HostileServer() as server, Proxy(server.port) as proxy, \
            Harness(proxy.url()) as h:
        assert_backs_to_ready(h, 1)
        if how == "server-reset":
            server.reset_clients()
        elif how == "proxy-cut":
            proxy.cut()
        else:
            server.close_clients(how, "bye")
        gone = h.wait("disconnected")[0]
        if isinstance(how, int):
            assert gone["code"] == how and gone["reason"] == "bye"
        else:
            assert gone["code"] is None
            assert "reset" in gone["reason"] or gone["reason"] == "connection lost", gone
        if how == 1008:
            # Policy violation is the server's way to refuse the key (PROTOCOL.md): the
            # error state and the slow auth_retry, not the fast backoff.
            assert 0.8 <= gone["retry_in"] <= 1.2, gone
            wait_for(lambda: any("authentication refused" in e["message"]
                                 for e in h.events_of("error")))
        else:
            assert 0 < gone["retry_in"] <= 0.2
        assert_backs_to_ready(h, 2)
        assert h.count("disconnected") == 1                   # one line for one fault
        assert h.app.state == "ready"                   # reconnected: any auth fault cleared
        wait_for(lambda: len(server.starts) == 2)
        assert server.starts[0]["session_id"] != server.starts[1]["session_id"]


def test_half_open_link_is_detected_by_the_ping_watchdog() -> None:
    with HostileServer() as server, Proxy(server.port) as proxy, \
            Harness(proxy.url()) as h:
        assert_backs_to_ready(h, 1)
        stalled_at = time.monotonic()
        proxy.stall()
        gone = h.wait("disconnected", timeout=10)[0]
        took = gone["_mono"] - stalled_at
        assert took <= PING_INTERVAL + PING_TIMEOUT + 1.0, f"found after {took:.2f} s"
        assert len(h.logs("the link is dead", level="warning")) == 1
        assert h.app.state == "connecting"
        proxy.resume()
        assert_backs_to_ready(h, 2)
        assert h.count("disconnected") == 1


def _stall(proxy: Proxy) -> None:
    """Stall the proxy and wait until it is in effect: its pipe threads look at the flag
    between reads of up to 0.1 s, and one already reading still forwards what it gets."""
    proxy.stall()
    time.sleep(0.25)


def _tight_link(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small client send buffers, like a Pi on Wi-Fi whose access point vanished: unacked
    audio stops being accepted after a fraction of a second."""
    opts = list(websocket._http.DEFAULT_SOCKET_OPTION)
    opts.append((socket.SOL_SOCKET, socket.SO_SNDBUF, 4096))
    monkeypatch.setattr(websocket._http, "DEFAULT_SOCKET_OPTION", opts)


def _wait_sender_blocked(h: Harness) -> None:
    """The link-tx thread is stuck in send(): the outbox fills and drops audio."""
    wait_for(lambda: h.app.link.stats.frames_dropped_full > 0, timeout=5)


def test_stalled_link_while_frames_keep_coming_stays_bounded(monkeypatch) -> None:
    _tight_link(monkeypatch)
    with HostileServer() as server, TightProxy(server.port) as proxy, \
            Harness(proxy.url(), ping_interval=30.0, ping_timeout=20.0) as h:
        assert_backs_to_ready(h, 1)
        wait_for(lambda: server.frames > 10)
        proxy.stall()
        _wait_sender_blocked(h)
        outbox = h.app.link.session.outbox
        dropped_before = h.app.link.stats.frames_dropped_full
        gc.collect()
        rss_before = rss_bytes()
        tracemalloc.start()
        try:
            base = tracemalloc.take_snapshot()
            # The microphone keeps delivering (here faster than real time: 100 000 frames,
            # 64 MB if the appliance kept them), while nothing goes out.
            longest = 0
            for n in range(100_000):
                h.app.on_frame(Frame(bytes(640), time.monotonic(), n))
                if n % 1000 == 0:
                    longest = max(longest, len(outbox.audio))
            after = tracemalloc.take_snapshot()
            grown = sum(s.size_diff for s in after.compare_to(base, "filename"))
        finally:
            tracemalloc.stop()
        assert longest <= outbox.max_frames
        assert len(outbox.audio) <= outbox.max_frames
        assert h.app.link.stats.frames_dropped_full - dropped_before >= 99_000
        assert grown < 512 * 1024, f"{grown} bytes more allocated during the stall"
        assert rss_bytes() - rss_before < 16 * 1024 * 1024
        # The stall ends: the link carries audio again, nobody had to reconnect.
        proxy.resume()
        frames = server.frames
        wait_for(lambda: server.frames > frames + 20)
        assert h.app.link.streaming and h.app.state == "ready"
        assert h.app.link.stats.connects == 1


def test_half_open_link_with_full_send_buffer_is_detected(monkeypatch) -> None:
    _tight_link(monkeypatch)
    with HostileServer() as server, TightProxy(server.port) as proxy:
        h = Harness(proxy.url()).__enter__()
        try:
            assert_backs_to_ready(h, 1)
            stalled_at = time.monotonic()
            proxy.stall()
            # Real-time audio from the WAV source fills the small buffers within about a
            # second; the watchdog must still fire within ping_interval + ping_timeout + 1 s.
            deadline = PING_INTERVAL + PING_TIMEOUT + 1.0
            try:
                gone = h.wait("disconnected", timeout=deadline + 0.5)[0]
            except AssertionError:
                pytest.fail(f"no disconnect {deadline + 0.5:.1f} s after the stall; link-tx "
                            f"blocked: {h.app.link.stats.frames_dropped_full} frames dropped")
            assert gone["_mono"] - stalled_at <= deadline
        finally:
            proxy.cut()              # unblock the stuck send() so that shutdown can finish
            h.close()


def test_shutdown_with_send_blocked_finishes(monkeypatch) -> None:
    _tight_link(monkeypatch)
    with HostileServer() as server, TightProxy(server.port) as proxy:
        h = Harness(proxy.url(), ping_interval=30.0, ping_timeout=20.0).__enter__()
        stopper: Optional[threading.Thread] = None
        try:
            assert_backs_to_ready(h, 1)
            proxy.stall()
            _wait_sender_blocked(h)
            stopper = threading.Thread(target=h.close, daemon=True)
            stopper.start()
            stopper.join(3.0)         # SIGTERM must finish well within systemd's timeout
            assert not stopper.is_alive(), "shutdown still blocked 3 s later"
        finally:
            proxy.cut()
            if stopper is not None:
                stopper.join(5)
            else:
                h.close()


def test_shutdown_on_half_open_link_stops_the_link_threads() -> None:
    with HostileServer() as server, Proxy(server.port) as proxy:
        h = Harness(proxy.url(), ping_interval=30.0, ping_timeout=20.0).__enter__()
        try:
            assert_backs_to_ready(h, 1)
            _stall(proxy)
            h.close()
            wait_for(lambda: not h.app.link._rx.is_alive(), timeout=1.0)
        finally:
            proxy.cut()


# --- hostile messages ------------------------------------------------------------------

WRONG_FIELDS: list[tuple[str, Any]] = [
    ("seq", "1"), ("seq", 1.0), ("seq", None), ("seq", True), ("seq", [1]), ("seq", -1),
    ("sentenceId", None), ("sentenceId", 1.5), ("sentenceId", True), ("sentenceId", [1]),
    ("sentenceId", {"id": 1}),
    ("chunkIndex", "0"), ("chunkIndex", 0.0), ("chunkIndex", None), ("chunkIndex", False),
    ("chunkIndex", -1), ("chunkIndex", -(2 ** 63)), ("chunkIndex", 4096), ("chunkIndex", 10 ** 30),
    ("isLastChunk", "true"), ("isLastChunk", 1), ("isLastChunk", None), ("isLastChunk", [True]),
    ("audioBase64", 12345), ("audioBase64", ["QUJD"]), ("audioBase64", {"b64": "QUJD"}),
    ("audioMime", 3), ("audioMime", ["audio/mp3"]),
    ("contentStep", 42), ("contentStep", ["text"]),
]

NOT_OBJECTS = ["[1, 2, 3]", '"a string"', "null", "42", "true", "[]"]

NOT_JSON = ["this is not json", "{", "{'single': 'quotes'}", "[" * 100_000 + "]" * 100_000,
            '{"stepType":"sentence","seq":' + "9" * 5000 + "}", ""]


def test_hostile_messages_are_rejected_and_later_audio_plays() -> None:
    b64 = base64.b64encode(MP3[:400]).decode()
    with HostileServer() as server, Harness(server.url) as h:
        assert_backs_to_ready(h, 1)
        sent = 0
        server.send_text_bytes(b'{"type":"stt.partial","text":"\xff\xfe broken"}')
        sent += 1
        for message in NOT_OBJECTS + NOT_JSON:
            server.send(message)
            sent += 1
        for n, (name, value) in enumerate(WRONG_FIELDS):
            server.send(chunk(sid=1000 + n, audio=b64, **{name: value}))
            sent += 1
        wait_for(lambda: h.app.counters.bad_messages >= sent)
        # Binary frames from the server: ignored, one warning for the connection.
        for _ in range(3):
            server.send_binary(b"\x00\x01 binary from the server")
        wait_for(lambda: h.logs("unexpected binary frame"))
        # Parsed but unusable audio: invalid base64, bytes that are not MP3.
        server.send(chunk(seq=1, sid=2000, last=True, audio="!!not base64!!"))
        server.send(chunk(seq=1, sid=2001, last=True,
                          audio=base64.b64encode(b"ID3 not an mp3 at all " * 40).decode()))
        # A real sentence after all of that still plays, and nothing rejected ever did.
        h.send_sentence(server, 1, 3000, "still alive")
        h.wait("sentence.play", sentence_id=3000)
        wait_for(lambda: any("not valid MP3" in e["message"] for e in h.events_of("error")))
        assert [p["sentence_id"] for p in h.plays()] == [3000]
        assert h.app.counters.bad_messages == sent + 1           # + the binary warning
        logs = h.logs("bad message from the server", level="warning")
        assert len(logs) == sent + 1                             # one clear line each
        assert any("not valid UTF-8" in m for m in logs)
        assert any("not an object" in m for m in logs)
        assert any("not JSON" in m for m in logs)
        assert any("chunkIndex" in m for m in logs)
        assert all(len(m) < 400 for m in logs)                   # short lines, no dumps
        assert h.logs("invalid base64")
        assert h.app.link.stats.connects == 1                    # never reconnected
        # (progressive playback starts before the last chunk: wait for it to arrive)
        wait_for(lambda: h.app.assembler.pending == 0)


def test_ten_megabyte_message_is_rejected_by_size() -> None:
    huge = json.dumps(chunk(seq=1, sid=1, last=True,
                            audio=base64.b64encode(bytes(7_600_000)).decode()))
    assert len(huge) > 10_000_000
    with HostileServer() as server, Harness(server.url) as h:
        assert_backs_to_ready(h, 1)
        server.send(huge)
        wait_for(lambda: h.logs("over the"), timeout=15)
        assert any("limit" in m for m in h.logs("over the", level="warning"))
        h.send_sentence(server, 1, 2, "after the flood")
        h.wait("sentence.play", sentence_id=2)
        assert [p["sentence_id"] for p in h.plays()] == [2]
        assert h.app.link.stats.connects == 1


def test_sentence_that_never_completes_expires_and_later_ones_play() -> None:
    parts = sentence_messages(1, 10, MP3, "never finished", chunks=4)
    with HostileServer() as server, Harness(server.url, sentence_timeout=1.0,
                                             progressive_playback=False) as h:
        assert_backs_to_ready(h, 1)
        server.send(parts[0])
        server.send(parts[1])
        h.send_sentence(server, 1, 11, "the next one")
        # It waits behind the stuck sentence (play order is first-chunk order) until the
        # run loop expires it: 1 s without a chunk, checked once a second.
        played = h.wait("sentence.play", sentence_id=11, timeout=5)[0]
        expired = [r for r in h.events_of("log") if "no chunk for 1 s" in r["message"]]
        assert expired and expired[0]["_mono"] <= played["_mono"]
        assert [p["sentence_id"] for p in h.plays()] == [11]
        assert h.app.assembler.pending == 0


def test_thousands_of_open_sentences_stay_capped(monkeypatch) -> None:
    # pytest's log capture (on the root logger) would hold every record: not the appliance
    monkeypatch.setattr(logging.getLogger("soca"), "propagate", False)
    b64 = base64.b64encode(MP3[:1000]).decode()
    # The open sentences must outlive the flood (which takes ~1 s on a loaded 2-core
    # machine) for the cap to be seen; then they expire.
    with HostileServer() as server, Harness(server.url, sentence_timeout=4.0,
                                             progressive_playback=False) as h:
        assert_backs_to_ready(h, 1)
        cap = h.cfg.max_pending_sentences
        h.keep_records = False          # the harness must not hold the 5000 log lines itself,
        h.events.stream = sink = Sink() # nor its StringIO (the service writes to stdout)
        warnings = h.warnings
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.take_snapshot()
            server.send_many([chunk(seq=1, sid=sid, index=0, audio=b64) for sid in range(5000)])
            wait_for(lambda: h.app.assembler.dropped_sentences >= 5000 - cap, timeout=20,
                     interval=0.1)
            assert h.app.assembler.pending == cap
            gc.collect()
            keep = [tracemalloc.Filter(True, "*soca_appliance*")]
            grown = sum(s.size_diff for s in tracemalloc.take_snapshot().filter_traces(keep)
                        .compare_to(base.filter_traces(keep), "filename"))
        finally:
            tracemalloc.stop()
            h.keep_records = True
            h.events.stream = h.out
        assert 1 <= sink.lines <= 25 and not sink.leaked     # the flood is rate-limited
        # 32 open sentences of 1 KB and a capped memory of dropped ones
        assert grown < 256 * 1024, f"{grown} bytes held by the appliance"
        assert h.app.assembler.dropped_sentences >= 5000 - cap
        # the first drops are logged, the rest only counted, not a line each
        assert 1 <= h.warnings - warnings <= 25
        # They expire; a real sentence plays afterwards.
        wait_for(lambda: h.app.assembler.pending == 0, timeout=10)
        h.send_sentence(server, 1, 9999, "after the flood")
        h.wait("sentence.play", sentence_id=9999)
        assert [p["sentence_id"] for p in h.plays()] == [9999]


def test_huge_seq_mutes_only_its_own_session() -> None:
    with HostileServer() as server, Harness(server.url) as h:
        assert_backs_to_ready(h, 1)
        server.send({"type": "barge", "seq": 10 ** 18, "reason": "hostile"})
        wait_for(lambda: h.app.assembler.current_seq == 10 ** 18)
        h.send_sentence(server, 1, 1, "stale in this session")
        server.send({"type": "stt.partial", "text": "flush"})       # a message after them
        wait_for(lambda: h.app.assembler.dropped_chunks >= 5)
        assert not h.plays()                                        # the seq rule holds
        server.close_clients(1011)
        assert_backs_to_ready(h, 2)
        h.send_sentence(server, 1, 2, "new session")
        h.wait("sentence.play", sentence_id=2)
        assert [p["sentence_id"] for p in h.plays()] == [2]


# --- authentication, speaker -----------------------------------------------------------

def test_auth_error_error_state_and_slow_retry() -> None:
    with HostileServer(mode="auth") as server, Harness(server.url, auth_retry=1.0) as h:
        first = h.wait("disconnected")[0]
        assert "Invalid or expired token" in first["reason"]
        assert 0.8 <= first["retry_in"] <= 1.2
        wait_for(lambda: h.app.state == "error")
        # A window whose length is what is measured: about one attempt a second.
        start, before = time.monotonic(), server.connections
        time.sleep(3.5)
        attempts = server.connections - before
        assert 2 <= attempts <= 5, f"{attempts} connections in {time.monotonic() - start:.1f} s"
        assert h.app.state == "error"
        # The key works again: connected, the error clears.
        server.mode = "normal"
        assert_backs_to_ready(h, 1, timeout=5)


def test_audio_output_failing_to_open(monkeypatch) -> None:
    monkeypatch.setenv("SDL_AUDIODRIVER", "no-such-driver")
    with HostileServer() as server:
        h = Harness(server.url)
        h.app.player.retry_s = 0.2
        with h:
            failed = wait_for(lambda: [e for e in h.events_of("error")
                                       if "audio output failed to open" in e["message"]])
            assert "retrying" in failed[0]["message"]
            wait_for(lambda: h.app.state == "error")
            wait_for(lambda: h.app.link.streaming)                  # still connected
            assert h.app.state == "error"
            h.send_sentence(server, 1, 1, "nobody hears this")
            wait_for(lambda: h.logs("no audio output", level="warning"))
            output = h.app.player.output           # it keeps retrying, one error line
            wait_for(lambda: output.attempts + output.skipped >= 3)        # per outage
            assert sum("audio output failed to open" in e["message"]
                       for e in h.events_of("error")) == 1
            assert not h.plays()
            # The fault ends: the next retry opens the output.
            monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
            h.wait("audio.output", timeout=5)
            wait_for(lambda: h.app.state == "ready")
            h.send_sentence(server, 1, 2, "now it plays")
            h.wait("sentence.play", sentence_id=2)
            assert [p["sentence_id"] for p in h.plays()] == [2]


# --- a hundred reconnects --------------------------------------------------------------

def test_hundred_forced_reconnects_leak_no_threads_or_files() -> None:
    with HostileServer() as server, Proxy(server.port) as proxy, \
            Harness(proxy.url(), backoff_initial=0.01, backoff_max=0.02) as h:
        assert_backs_to_ready(h, 1)
        gc.collect()
        threads, fds = threading.active_count(), open_fds()
        for n in range(100):
            kind = n % 3
            if kind == 0:
                server.reset_clients()
            elif kind == 1:
                server.close_clients(1011)
            else:
                proxy.cut()
            h.wait("connected", count=n + 2, timeout=10)
        assert_backs_to_ready(h, 101)
        assert h.count("disconnected") == 100
        # The proxy and server threads of closed connections wind down on their own.
        wait_for(lambda: threading.active_count() <= threads + 2, timeout=5)
        wait_for(lambda: open_fds() <= fds + 3, timeout=5)
        assert h.app.link.stats.connects == 101


# --- secrets and transport -------------------------------------------------------------

def test_key_never_logged_in_text_mode_across_faults() -> None:
    """The key echoed back by a hostile server in every place a message can carry text."""
    with HostileServer(mode="auth") as server, \
            Harness(server.url, fmt="text", log_level="debug") as h:
        h.wait("disconnected")
        server.mode, server.close_reason = "close_after_start", f"key {KEY} refused"
        h.wait("disconnected", count=2, timeout=5)
        server.mode = "normal"
        assert_backs_to_ready(h, 1, timeout=5)
        server.send(chunk(sid=KEY, index=KEY))
        server.send({"type": KEY, "stepType": None})
        server.send(f'{{"type": "stt.final", "text": 42, "{KEY}": 1}}')
        server.send_text_bytes(KEY.encode() + b"\xff")
        wait_for(lambda: h.app.counters.bad_messages >= 3)
        server.send({"type": "stt.final", "text": f"you said {KEY}"})
        h.wait("transcript")
        server.close_clients(4000, f"bye {KEY}")
        assert_backs_to_ready(h, 2)
        server.send({"type": "error", "message": f"Invalid or expired token {KEY} for agent"})
        h.wait("disconnected", count=4)
        assert_backs_to_ready(h, 3, timeout=5)
        h.close()
    out, err = h.out.getvalue(), h.err.getvalue()
    assert "***" in out + err                # the redactor was needed, and worked
    assert KEY not in out and KEY not in err
    assert "disconnected" in out and "bad message" in err


def test_wss_verifies_the_certificate(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with HostileServer(ssl_context=context) as server:
        assert server.url.startswith("wss://127.0.0.1:")
        with Harness(server.url) as h:
            gone = h.wait("disconnected", count=3)
            assert all("certificate verify failed" in g["reason"].lower()
                       or "CERTIFICATE_VERIFY_FAILED" in g["reason"] for g in gone), gone
            assert h.count("connected") == 0 and not server.starts   # the key never left
        # The same certificate, trusted through ca_file: it connects.
        with Harness(server.url, ca_file=str(cert)) as h:
            assert_backs_to_ready(h, 1)
            assert server.starts[-1]["private_key"] == KEY
        assert len(server.starts) == 1
    # Trusted, but made for another address (127.0.0.2) than the one dialled: refused.
    # By IP, not "localhost", which a minimal root without /etc/hosts cannot resolve.
    other, other_key = self_signed_cert(tmp_path, ip="127.0.0.2")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(other, other_key)
    with HostileServer(ssl_context=context) as server:
        with Harness(server.url, ca_file=str(other)) as h:
            gone = h.wait("disconnected", count=2)
            assert all("TLS" in g["reason"] or "match" in g["reason"] for g in gone), gone
            assert h.count("connected") == 0
        assert not server.starts                  # the key never left


def test_long_key_echoed_in_a_bad_field_is_not_logged_even_in_part() -> None:
    long_key = "sk-live-" + "a1b2c3d4e5f6" * 5                  # 68 characters
    with HostileServer() as server, Harness(server.url, key=long_key) as h:
        assert_backs_to_ready(h, 1)
        server.send(chunk(index=long_key))
        wait_for(lambda: h.app.counters.bad_messages >= 1)
        h.close()
    logged = h.out.getvalue() + h.err.getvalue()
    pieces = {long_key[i:i + 16] for i in range(len(long_key) - 15)}
    assert not [p for p in pieces if p in logged], "a part of the key is in the log"


@pytest.mark.parametrize("url", ["ws://example.com/voice-ws", "ws://10.0.0.5:8765/voice-ws",
                                 "ws://localhost.example.com/voice-ws",
                                 "ws://127.0.0.1.nip.io/voice-ws"])
def test_plain_ws_to_a_remote_host_is_refused(url: str) -> None:
    with pytest.raises(config.ConfigError, match="allow_insecure"):
        config.load(None, env={}, overrides={"url": url})
    assert config.load(None, env={}, overrides={"url": url, "allow_insecure": True}).url == url


@pytest.mark.parametrize("url", ["ws://127.0.0.1:8765/voice-ws", "ws://localhost:8765",
                                 "ws://[::1]:8765/voice-ws", "wss://api.soca.ai/voice-ws"])
def test_loopback_ws_and_any_wss_are_accepted(url: str) -> None:
    assert config.load(None, env={}, overrides={"url": url}).url == url
