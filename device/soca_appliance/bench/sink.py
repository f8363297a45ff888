"""The far end of ``--floor``: a websocket server on 127.0.0.1 that answers ``start`` with
``ready`` and ``stt.ready`` and then only listens, noting when each binary frame arrives
(the simulator would answer the speech, and playing answers is not streaming)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from .common import BenchError


@dataclass
class Connection:
    t_open: float
    t_ready: Optional[float] = None
    arrivals: list[float] = field(default_factory=list)


class Sink:
    """A websocket server that says ``stt.ready`` and then only listens, noting when
    each binary frame arrives."""

    def __init__(self) -> None:
        self.conns: list[Connection] = []
        self._cond = threading.Condition()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._thread = threading.Thread(target=self._main, name="bench-sink", daemon=True)
        self._up = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def __enter__(self) -> "Sink":
        self._thread.start()
        if not self._up.wait(10) or not self.port:
            raise BenchError("the sink did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, compression=None,
                         ping_interval=None, max_size=1 << 20) as server:
            self.port = int(next(iter(server.sockets)).getsockname()[1])
            self._up.set()
            await self._stop.wait()

    async def _handler(self, ws: Any) -> None:
        conn = Connection(time.monotonic())
        with self._cond:
            self.conns.append(conn)
        with contextlib.suppress(Exception):   # a client that vanishes ends its connection
            async for message in ws:
                if isinstance(message, bytes):
                    conn.arrivals.append(time.monotonic())
                    if len(conn.arrivals) == 1:
                        with self._cond:
                            self._cond.notify_all()
                    continue
                with contextlib.suppress(ValueError, AttributeError):
                    if json.loads(message).get("type") == "start":
                        await ws.send(json.dumps({"type": "ready", "session_id": "sink"}))
                        await ws.send(json.dumps({"type": "stt.ready"}))
                        conn.t_ready = time.monotonic()

    def first_frame(self, since: float, timeout: float, proc: subprocess.Popen
                    ) -> Connection:
        """The first connection opened after ``since`` once a frame arrived on it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for conn in self.conns:
                    if conn.t_open >= since and conn.arrivals:
                        return conn
                if proc.poll() is not None:
                    raise BenchError(f"the streamer exited with {proc.returncode} before "
                                     "its first frame")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"no frame at the sink within {timeout:g} s")
                self._cond.wait(min(left, 0.2))
