"""The uplink's threads (issue 13): one thread wakes per frame, none polls.

A frame goes onto the socket in the capture thread when nothing is queued before it and
the socket can take it at once; only when the socket would block does it wait in the
session's outbox for link-tx, so capture never waits on the network. link-tx sleeps until
there is something queued or a ping is due. Against real servers on 127.0.0.1; thread
wake-ups are read from the kernel (``/proc/self/task/TID/status``), not timed.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

import pytest
import websocket

from soca_appliance import protocol
from soca_appliance.framing import Frame
from soca_appliance.link import Link, LinkCallbacks, LinkSettings

from conftest import wait_for
from hostile import HostileServer, TightProxy

KEY = "sk-uplink-0f0f0f0f0f0f0f0f"


def frame(tag: int, index: int) -> Frame:
    return Frame(struct.pack("<II", tag, index) + bytes(632), time.monotonic(), index)


def make_link(url: str, **overrides: Any) -> tuple[Link, list[tuple[str, Any]]]:
    log: list[tuple[str, Any]] = []
    values: dict[str, Any] = dict(url=url, agent_id="agent-u", lang="en", private_key=KEY,
                                  connect_timeout=2.0, ping_interval=1.0, ping_timeout=0.5,
                                  backoff_initial=0.01, backoff_max=0.2)
    values.update(overrides)
    callbacks = LinkCallbacks(on_connected=lambda sid: log.append(("connected", sid)),
                              on_disconnected=lambda *a: log.append(("disconnected", a)))
    return Link(LinkSettings(**values), callbacks), log


def switches(thread: threading.Thread) -> int:
    """Voluntary context switches of one thread so far: each is one wait that ended."""
    with open(f"/proc/self/task/{thread.native_id}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches line")


def tags(server: HostileServer, connection: int = 0) -> list[tuple[int, int]]:
    return [struct.unpack("<II", data[:8]) for kind, data in server.arrivals[connection]
            if kind == "binary"]


class Capture:
    """A capture thread: one frame every 5 ms into the link, noting which thread sent."""

    def __init__(self, link: Link, n: int, tag: int = 1) -> None:
        self.link, self.n, self.tag = link, n, tag
        self.offered = 0
        self.thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def _run(self) -> None:
        for i in range(self.n):
            self.link.send_audio(frame(self.tag, i))
            self.offered += 1
            time.sleep(0.005)               # the pace of a fast microphone

    def __enter__(self) -> "Capture":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(10)


def test_frames_go_out_from_the_capture_thread_and_link_tx_sleeps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    senders: list[str] = []
    send_binary = websocket.WebSocket.send_binary

    def spy(self: websocket.WebSocket, payload: bytes) -> int:
        senders.append(threading.current_thread().name)
        return send_binary(self, payload)

    monkeypatch.setattr(websocket.WebSocket, "send_binary", spy)
    with HostileServer() as server:
        link, log = make_link(server.url, ping_interval=30.0, ping_timeout=5.0)
        link.start()
        try:
            wait_for(lambda: link.streaming, 5, "the session")
            time.sleep(0.2)                    # the handshake's own wake-ups are over
            before = switches(link._tx)
            with Capture(link, 200) as cap:
                wait_for(lambda: cap.offered == 200, 10, "200 frames offered")
            wait_for(lambda: server.frames >= 200, 5, "200 frames at the server")
            woke = switches(link._tx) - before
            assert tags(server) == [(1, i) for i in range(200)]       # in order, all of them
            assert link.stats.frames_sent == 200 and link.stats.frames_dropped_full == 0
            assert set(senders) == {"capture"}, set(senders)
            # one wake-up per frame would be 200; none is needed, a stray one is allowed
            assert woke <= 3, f"link-tx woke {woke} times for 200 frames"
        finally:
            link.close(1.0)


def test_link_tx_does_not_poll_an_idle_session_and_still_pings() -> None:
    with HostileServer() as server:
        link, log = make_link(server.url, ping_interval=1.0, ping_timeout=0.5)
        link.start()
        try:
            wait_for(lambda: link.streaming, 5, "the session")
            before, t0 = switches(link._tx), time.monotonic()
            # No audio (muted, or VAD between utterances): only pings keep the link alive.
            wait_for(lambda: time.monotonic() - t0 > 3.0, 5, "three ping intervals")
            woke = switches(link._tx) - before
            assert link.streaming and not any(k == "disconnected" for k, _ in log)
            # a 100 ms poll would wake 30 times; pings once a second: 3, give or take
            assert woke <= 8, f"link-tx woke {woke} times in 3 s"
        finally:
            link.close(1.0)


def test_a_socket_that_would_block_hands_frames_to_link_tx_never_blocking_capture(
        monkeypatch: pytest.MonkeyPatch) -> None:
    opts = list(websocket._http.DEFAULT_SOCKET_OPTION)
    opts.append((socket.SOL_SOCKET, socket.SO_SNDBUF, 4096))     # a full path in a few KB
    monkeypatch.setattr(websocket._http, "DEFAULT_SOCKET_OPTION", opts)
    with HostileServer() as server, TightProxy(server.port) as proxy:
        link, log = make_link(proxy.url(), queue_frames=400, ping_interval=30.0,
                              ping_timeout=5.0)
        link.start()
        try:
            wait_for(lambda: link.streaming, 5, "the session")
            proxy.stall()                      # the far end stops reading
            with Capture(link, 300) as cap:
                # capture goes on at its own pace whatever the socket does
                wait_for(lambda: cap.offered == 300, 10, "300 frames offered, none blocked")
            assert len(link.session.outbox) > 0       # the rest waits for link-tx
            proxy.resume()
            wait_for(lambda: server.frames >= 300, 10, "every frame, once the path is back")
            assert tags(server) == [(1, i) for i in range(300)]       # in order, none lost
            assert link.stats.frames_dropped_full == 0
            assert not any(k == "disconnected" for k, _ in log)
        finally:
            proxy.cut()
            link.close(1.0)


def test_a_stop_queued_behind_audio_keeps_later_direct_frames_behind_it() -> None:
    """While link-tx holds queued items, the capture thread queues too: nothing overtakes."""
    with HostileServer() as server:
        link, _ = make_link(server.url, ping_interval=30.0, ping_timeout=5.0,
                            queue_frames=400)
        link.start()
        try:
            wait_for(lambda: link.streaming, 5, "the session")
            for u in range(30):
                for i in range(5):
                    link.send_audio(frame(u, i))
                link.send_control(protocol.stop_message())
            wait_for(lambda: sum(k == "text" for k, _ in server.arrivals[0]) >= 30, 5,
                     "30 stops")
            wait_for(lambda: server.frames >= 150, 5, "150 frames")
            order = [(kind, data if kind == "text" else struct.unpack("<II", data[:8]))
                     for kind, data in server.arrivals[0]]
            expected: list[tuple[str, Any]] = []
            for u in range(30):
                expected += [("binary", (u, i)) for i in range(5)]
                expected.append(("text", {"type": "stop"}))
            assert order == expected
        finally:
            link.close(1.0)
