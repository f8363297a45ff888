"""Misbehaving servers and links for the fault-injection suite (tests/test_faults.py).

``HostileServer`` handshakes like the real voice-ws server (optionally over TLS) and then
lets a test send anything: text frames that are not UTF-8, binary frames, closes with any
code, TCP resets. ``TightProxy`` is the TCP proxy of servers.py with a small receive
buffer, so that a stalled link fills up after a fraction of a second of audio, as it does
on a real network where the peer has vanished. Everything listens on 127.0.0.1 only.
``AppHarness`` runs the whole appliance against them; ``sentence`` builds a sentence's
chunk messages from an MP3.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Optional, Union

from soca_appliance import config
from soca_appliance.appliance import Appliance
from soca_appliance.events import EventLog, setup_logging
from soca_appliance.wavsource import WavSource
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from conftest import ASSETS, wait_for
from servers import Proxy

MP3 = (ASSETS / "answer-en-1-1.mp3").read_bytes()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (closed again at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def self_signed_cert(directory: Path, ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throwaway certificate for IP ``ip`` (and its key), made with the openssl CLI.

    Named by IP, never by "localhost": a minimal root (a container, a debootstrap chroot)
    has no /etc/hosts, and a test must not depend on name resolution."""
    cert, key = directory / f"cert-{ip}.pem", directory / f"key-{ip}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={ip}",
         "-addext", f"subjectAltName=IP:{ip}"],
        check=True, capture_output=True, timeout=60)
    return cert, key


class HostileServer:
    """A voice-ws server whose behaviour the test drives.

    ``mode`` (read at each new connection, so a test may change it to end a fault):
    "normal" (ready + stt.ready), "auth" (auth error + close 1008), "close_after_start"
    (close with ``close_code`` and ``close_reason`` after the start message),
    "reset_after_start" (TCP reset after the start message), "silent" (never answers start).
    """

    def __init__(self, mode: str = "normal", close_code: int = 1011,
                 ssl_context: Optional[ssl.SSLContext] = None, port: int = 0) -> None:
        self.mode = mode
        self.close_code = close_code
        self.close_reason = "closed by the hostile server"
        self.ssl_context = ssl_context
        self.port = port
        self.connection_times: list[float] = []     # time.monotonic() of each TCP accept
        self.starts: list[dict[str, Any]] = []
        self.frames = 0
        self.frames_by_connection: list[int] = []   # binary frames on each connection
        # What each connection sent after start, in arrival order: ("binary", bytes) or
        # ("text", parsed JSON).
        self.arrivals: list[list[tuple[str, Any]]] = []
        # Sent between ready and stt.ready (an agent that greets first, a handshake error).
        self.before_stt_ready: list[Union[dict[str, Any], str]] = []
        # Sent after stt.ready, before anything else (a late ready, say).
        self.after_stt_ready: list[Union[dict[str, Any], str]] = []
        self.tls_failures = 0
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._clients: set[Any] = set()
        self._ready = threading.Event()
        self._stop: Optional[asyncio.Event] = None
        self._thread = threading.Thread(target=self._main, name="hostile-server", daemon=True)

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/voice-ws"

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self.connection_times)

    @property
    def clients(self) -> int:
        return len(self._clients)

    def __enter__(self) -> "HostileServer":
        self._thread.start()
        if not self._ready.wait(5) or not self.port:
            raise RuntimeError("hostile server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    # --- what a test can make the server do ----------------------------------------

    def send(self, message: Union[dict[str, Any], list[Any], str]) -> int:
        """A text frame (a dict or list is sent as JSON) to every streaming client."""
        payload = message if isinstance(message, str) else json.dumps(message)
        return self._each(lambda ws: ws.send(payload))

    def send_many(self, messages: list[Union[dict[str, Any], str]]) -> int:
        """Many text frames, back to back, in one trip to the server's loop."""
        payloads = [m if isinstance(m, str) else json.dumps(m) for m in messages]

        async def burst(ws: Any) -> None:
            for payload in payloads:
                await ws.send(payload)
        return self._each(burst)

    def send_text_bytes(self, payload: bytes) -> int:
        """A TEXT frame carrying ``payload`` as is: it need not be valid UTF-8."""
        return self._each(lambda ws: ws.send(payload, text=True))

    def send_binary(self, payload: bytes) -> int:
        return self._each(lambda ws: ws.send(payload))

    def close_clients(self, code: int = 1000, reason: str = "") -> int:
        return self._each(lambda ws: ws.close(code, reason))

    def reset_clients(self) -> int:
        """An abrupt TCP reset (RST, no close frame)."""
        async def reset(ws: Any) -> None:
            _rst(ws)
        return self._each(reset)

    def _each(self, make: Any) -> int:
        assert self._loop is not None
        clients = list(self._clients)
        for ws in clients:
            asyncio.run_coroutine_threadsafe(make(ws), self._loop).result(10)
        return len(clients)

    # --- the server ----------------------------------------------------------------

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(self._loop_error)
        self._stop = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", self.port, ssl=self.ssl_context,
                         max_size=None, ping_interval=None, compression=None,
                         close_timeout=1.0) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), ssl.SSLError):
            self.tls_failures += 1             # the client refused our certificate
            return
        loop.default_exception_handler(context)

    async def _handle(self, ws: Any) -> None:
        with self._lock:
            self.connection_times.append(time.monotonic())
        try:
            start = json.loads(await ws.recv())
            with self._lock:
                self.starts.append(start)
            mode = self.mode
            if mode == "auth":
                await ws.send(json.dumps({"type": "error",
                                          "message": "Invalid or expired token"}))
                await ws.close(1008, "Invalid or expired token")
                return
            if mode == "close_after_start":
                await ws.close(self.close_code, self.close_reason)
                return
            if mode == "reset_after_start":
                _rst(ws)
                return
            with self._lock:
                index = len(self.frames_by_connection)
                self.frames_by_connection.append(0)
                self.arrivals.append([])
            # Known as a client before "stt.ready" goes out: the appliance says "connected" on
            # stt.ready, and a test that then closes the clients must find this one.
            self._clients.add(ws)
            if mode != "silent":
                await ws.send(json.dumps({"type": "ready", "session_id": start.get("session_id")}))
                for extra in list(self.before_stt_ready):
                    await ws.send(extra if isinstance(extra, str) else json.dumps(extra))
                await ws.send(json.dumps({"type": "stt.ready"}))
                for extra in list(self.after_stt_ready):
                    await ws.send(extra if isinstance(extra, str) else json.dumps(extra))
            async for message in ws:
                with self._lock:
                    if isinstance(message, bytes):
                        self.frames += 1
                        self.frames_by_connection[index] += 1
                        self.arrivals[index].append(("binary", message))
                    else:
                        try:
                            self.arrivals[index].append(("text", json.loads(message)))
                        except ValueError:
                            self.arrivals[index].append(("text", message))
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(ws)


def _rst(ws: Any) -> None:
    sock = ws.transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    ws.transport.abort()


class TightProxy(Proxy):
    """servers.Proxy whose accepted sockets have a small receive buffer: when stalled, the
    link stops taking bytes after a few KB, like a real link whose far end vanished."""

    def __init__(self, target_port: int, rcvbuf: int = 4096) -> None:
        super().__init__(target_port)
        self._listener.close()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Set before listen(): accepted sockets inherit it and advertise a small window.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.1)
        self._listener = listener
        self.port = listener.getsockname()[1]


def sentence(seq: int, sid: Any, text: str, mp3: bytes = MP3, chunks: int = 4
             ) -> list[dict[str, Any]]:
    b64 = base64.b64encode(mp3).decode()
    size = -(-len(b64) // chunks)
    parts = [b64[i:i + size] for i in range(0, len(b64), size)]
    msgs = [{"stepType": "sentence", "seq": seq, "sentenceId": sid, "chunkIndex": i,
             "isLastChunk": False, "audioBase64": p, "audioMime": "audio/mp3",
             **({"contentStep": text} if i == 0 else {})} for i, p in enumerate(parts)]
    msgs.append({"stepType": "sentence", "seq": seq, "sentenceId": sid,
                 "chunkIndex": len(parts), "isLastChunk": True, "audioBase64": None})
    return msgs


class AppHarness:
    """The whole appliance in-process (a short chime as the mic, then silence; SDL's driver
    from the environment; no GPIO) with its expiry loop, and its JSON event log recorded."""


    def __init__(self, url: str, key: str = "sk-harness-0123456789abcdef", panel: Any = None,
                 **overrides: Any) -> None:
        values: dict[str, Any] = dict(url=url, agent_id="agent-h", lang="en", gpio="off",
                                      duplex="full", log_format="json", backoff_initial=0.05,
                                      backoff_max=0.2, ping_interval=1.0, ping_timeout=0.5,
                                      connect_timeout=2.0, auth_retry=1.0,
                                      progressive_playback=False)
        values.update(overrides)
        self.cfg = config.load(None, env={}, overrides=values)
        self.events = EventLog("json", stream=io.StringIO())
        self.key = key
        self.events.redact.add(key)
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.events.subscribe(self._record)
        setup_logging(self.events, "info", stream=io.StringIO())
        self.app = Appliance(self.cfg, events=self.events,
                             source=WavSource(ASSETS / "chime.wav"), private_key=key,
                             panel=panel)
        self._stop = threading.Event()
        self._runner = threading.Thread(target=self.app.run, args=(self._stop,), daemon=True)

    def _record(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.records.append({**record, "_mono": time.monotonic()})

    def of(self, name: str, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records if r["event"] == name
                    and all(r.get(k) == v for k, v in match.items())]

    def wait(self, name: str, count: int = 1, timeout: float = 10.0, **match: Any):
        return wait_for(lambda: len(self.of(name, **match)) >= count and self.of(name, **match),
                        timeout, f"{count} {name} {match}")

    def __enter__(self) -> "AppHarness":
        self.app.start()
        self._runner.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._runner.join(2)
        self.app.shutdown()
        # pygame's mixer is process-wide: the next test's player must not meet this one
        # quitting it late
        wait_for(lambda: not self.app.player.alive(), 5, "the player thread to end")
        assert self.key not in self.events.stream.getvalue()
