"""Test servers on 127.0.0.1: a recording voice-ws server with scripted behaviour, and a
TCP proxy that can cut, stall or slow the link. Both run their own thread and stop."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


@dataclass
class Received:
    frames: list[tuple[float, bytes]] = field(default_factory=list)
    texts: list[dict[str, Any]] = field(default_factory=list)


class RecordingServer:
    """Handshakes like the real server, then records every frame the client sends.

    ``mode``: "normal"; "auth" (error + close 1008 after start); "silent" (never answers
    start); "no_stt_ready" (ready only); "close_after_start" (closes with ``close_code``).
    """

    def __init__(self, mode: str = "normal", close_code: int = 1011) -> None:
        self.mode = mode
        self.close_code = close_code
        self.received = Received()
        self.connections = 0
        self.starts: list[dict[str, Any]] = []
        self.close_codes: list[Optional[int]] = []
        self.port = 0
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._clients: set[Any] = set()
        self._ready = threading.Event()
        self._stop: Optional[asyncio.Event] = None
        self._thread = threading.Thread(target=self._main, name="recording-server", daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/voice-ws"

    def __enter__(self) -> "RecordingServer":
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("recording server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def frames(self) -> list[tuple[float, bytes]]:
        with self._lock:
            return list(self.received.frames)

    def texts(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received.texts)

    def send(self, message: Union[dict[str, Any], str, bytes]) -> None:
        payload = json.dumps(message) if isinstance(message, dict) else message
        assert self._loop is not None
        for ws in list(self._clients):
            asyncio.run_coroutine_threadsafe(ws.send(payload), self._loop).result(5)

    def close_clients(self, code: int = 1000) -> None:
        assert self._loop is not None
        for ws in list(self._clients):
            asyncio.run_coroutine_threadsafe(ws.close(code), self._loop).result(5)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", 0, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    async def _handle(self, ws: Any) -> None:
        with self._lock:
            self.connections += 1
        try:
            start = json.loads(await ws.recv())
            with self._lock:
                self.starts.append(start)
            if self.mode == "auth":
                await ws.send(json.dumps({"type": "error", "message": "Invalid or expired token"}))
                await ws.close(1008)
                return
            if self.mode == "close_after_start":
                await ws.close(self.close_code)
                return
            if self.mode != "silent":
                await ws.send(json.dumps({"type": "ready", "session_id": start.get("session_id")}))
            if self.mode == "normal":
                await ws.send(json.dumps({"type": "stt.ready"}))
            self._clients.add(ws)
            async for message in ws:
                with self._lock:
                    if isinstance(message, bytes):
                        self.received.frames.append((time.monotonic(), message))
                    else:
                        self.received.texts.append(json.loads(message))
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(ws)
            await ws.wait_closed()
            with self._lock:
                self.close_codes.append(ws.close_code)


class Proxy:
    """A TCP proxy on 127.0.0.1 between the appliance and a server.

    ``stall()`` stops forwarding without closing (a half-open link); ``resume()`` goes
    on; ``stall_existing()`` stalls only the connections open now (the old path died, a
    new connection works: a Wi-Fi roam); ``cut()`` resets every connection; ``delay``
    slows every forwarded chunk.
    """

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.delay = delay
        self.stalled = threading.Event()
        self.connections = 0
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._conn_stalls: list[threading.Event] = []

    def url(self, path: str = "/voice-ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> "Proxy":
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.cut()
        self._listener.close()
        for thread in self._threads:
            thread.join(2)

    def stall(self) -> None:
        self.stalled.set()

    def resume(self) -> None:
        self.stalled.clear()

    def stall_existing(self) -> None:
        with self._lock:
            stalls = list(self._conn_stalls)
        for stall in stalls:
            stall.set()

    def cut(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.close()
            except OSError:
                pass

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            self.connections += 1
            stall = threading.Event()
            with self._lock:
                self._socks += [client, upstream]
                self._conn_stalls.append(stall)
            self._spawn(self._pipe, client, upstream, stall)
            self._spawn(self._pipe, upstream, client, stall)

    def _pipe(self, src: socket.socket, dst: socket.socket,
              stall: Optional[threading.Event] = None) -> None:
        src.settimeout(0.1)
        while not self._stop.is_set():
            if self.stalled.is_set() or (stall is not None and stall.is_set()):
                time.sleep(0.01)      # a half-open link: bytes stay in the kernel buffers
                continue
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            if self.delay:
                time.sleep(self.delay)
            try:
                dst.sendall(data)
            except OSError:
                break
        for sock in (src, dst):
            try:
                sock.close()
            except OSError:
                pass
