"""The simulator's websocket server: :class:`Simulator`.

Owns the listener (plain ``ws://``, loopback by default), the ``start`` handshake and its
errors, the connection limit, the thread or event loop it runs in, and the hooks tests use
(:meth:`Simulator.stats`, :meth:`Simulator.inject`, :meth:`Simulator.drop_connections`).
What happens after ``start`` is :mod:`.session`'s.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Coroutine, Optional, Union

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .assets import LANGS, load_assets
from .chunking import CHUNKINGS
from .gate import GateConfig
from .session import SAMPLE_RATE, _Session, _Stats

log = logging.getLogger("soca.simulator")

START_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 16
MAX_MESSAGE_BYTES = 64 * 1024           # 2 s of audio in one frame; the page's own are 256 ms
HOOK_TIMEOUT_S = 2.0
ERR_START = "must start with type=start"
ERR_AUTH = "Invalid or expired token"


class Simulator:
    """The local voice-ws server. See the package docstring.

    ``chunking`` is how a sentence's base64 is cut into chunks (:mod:`.chunking`): ``"text"``
    (the default: the encoded text cut at random lengths, from ``seed``) or ``"slices"``
    (each MP3 slice encoded on its own). ``gate`` sets the barge-in gate (:mod:`.gate`).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, expected_key: Optional[str] = None,
                 key_field: str = "private_key", assets_dir: Optional[Union[str, Path]] = None,
                 chunk_delay: float = 0.02, sentence_delay: float = 0.1,
                 chunking: str = "text", seed: int = 0,
                 gate: Optional[GateConfig] = None) -> None:
        if not key_field:
            raise ValueError("key_field must not be empty")
        if chunking not in CHUNKINGS:
            raise ValueError(f"chunking must be one of {', '.join(CHUNKINGS)}, not {chunking!r}")
        self.chunking = chunking
        self.seed = int(seed)
        self.gate = gate or GateConfig()
        self.host = host
        self.port = port
        self.key_field = key_field
        self.chunk_delay = max(0.0, float(chunk_delay))
        self.sentence_delay = max(0.0, float(sentence_delay))
        self._expected_key = expected_key
        self._assets = load_assets(assets_dir)
        self._stats = _Stats()
        self._conns: set[ServerConnection] = set()
        self._closing: set[asyncio.Task[None]] = set()      # at most one per connection
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop_event: Optional[asyncio.Event] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._thread_error: Optional[BaseException] = None
        self._bound_port: Optional[int] = None

    def __repr__(self) -> str:  # never shows the key
        return (f"Simulator(url={self.url!r}, key_field={self.key_field!r}, "
                f"chunking={self.chunking!r})")

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        port = self._bound_port if self._bound_port is not None else self.port
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{port}"

    def start(self) -> int:
        """Run the server on its own thread; return the bound port once it is listening."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        self._ready.clear()
        self._thread_error = None
        self._thread = threading.Thread(target=self._thread_main, name="soca-simulator",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10.0):
            raise RuntimeError("simulator did not start within 10 s")
        if self._thread_error is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
            raise RuntimeError(f"simulator failed to start: {self._thread_error}") from self._thread_error
        assert self._bound_port is not None
        return self._bound_port

    def stop(self) -> None:
        """Close every connection and the listener; join the thread (within about 2 s)."""
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop already finished
                pass
        thread.join(timeout=2.0)
        if thread.is_alive():
            log.warning("simulator thread did not stop within 2 s")
        self._thread = None

    def __enter__(self) -> "Simulator":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._run(self._ready.set))
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._thread_error = exc
            self._ready.set()

    async def serve_forever(self) -> None:
        """Serve in the running event loop until cancelled (the CLI's mode)."""
        await self._run(None)

    async def _run(self, on_ready: Optional[Callable[[], None]]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server: Server = await serve(self._handler, self.host, self.port,
                                     max_size=MAX_MESSAGE_BYTES, max_queue=64,
                                     compression=None, close_timeout=1.0, ping_interval=20,
                                     ping_timeout=20, open_timeout=10,
                                     logger=log.getChild("websockets"))
        try:
            self._bound_port = int(next(iter(server.sockets)).getsockname()[1])
            log.info("voice-ws simulator listening on %s", self.url)
            if on_ready is not None:
                on_ready()
            await self._stop_event.wait()
        finally:
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), 1.5)
            except (TimeoutError, asyncio.TimeoutError):
                log.warning("connections did not close in time")
            log.info("voice-ws simulator stopped")

    # --- hooks for tests -----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (safe from any thread)."""
        return self._stats.snapshot()

    def speech_barges(self) -> list[dict[str, float]]:
        """The last 256 barges decided on speech: ``onset`` (when the utterance's first
        voiced sub-frame arrived) and ``barge`` (when the barge went out), both
        time.monotonic(); ``audio_s`` of audio from the onset to the decision, of which
        ``voiced_s`` voiced."""
        return self._stats.speech_barges()

    def inject(self, message: Union[dict[str, Any], str, bytes]) -> int:
        """Send a message to every current connection; return how many got it."""
        if isinstance(message, dict):
            payload: Union[str, bytes] = json.dumps(message)
        elif isinstance(message, (str, bytes)):
            payload = message
        else:
            raise TypeError("inject() takes a dict, a str or bytes")
        return self._call(self._inject(payload))

    def drop_connections(self, code: Optional[int] = None) -> int:
        """Abort every connection (or close it with ``code``); return how many."""
        return self._call(self._drop(code))

    def _call(self, coro: Coroutine[Any, Any, int]) -> int:
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            coro.close()
            raise RuntimeError("simulator is not running")
        try:
            running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError("call this hook from another thread than the simulator's")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        return int(future.result(timeout=HOOK_TIMEOUT_S))

    async def _inject(self, payload: Union[str, bytes]) -> int:
        sent = 0
        for ws in list(self._conns):
            try:
                await ws.send(payload)
                sent += 1
            except ConnectionClosed:
                pass
        return sent

    async def _drop(self, code: Optional[int]) -> int:
        conns = list(self._conns)
        for ws in conns:
            if code is None:
                ws.transport.abort()
            else:
                # the close frame goes out at once; the handshake finishes in the background
                # (the caller may be the very client that has to answer it)
                task = asyncio.create_task(ws.close(code, "dropped by test hook"))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        return len(conns)

    # --- connections ---------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        peer = _peer(ws)
        if len(self._conns) >= MAX_CONNECTIONS:
            log.warning("refusing connection from %s: %d connections open", peer, MAX_CONNECTIONS)
            await ws.close(1013, "too many connections")
            return
        self._stats.add("connections")
        self._conns.add(ws)
        session: Optional[_Session] = None
        try:
            session = await self._handshake(ws, peer)
            if session is None:
                return
            async for message in ws:
                if isinstance(message, bytes):
                    await session.audio(message)
                else:
                    await session.text(message)
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == 1009:   # websockets refused it
                log.warning("connection from %s closed with 1009: a message over %d bytes",
                            peer, MAX_MESSAGE_BYTES)
        finally:
            self._conns.discard(ws)
            if session is not None:
                await session.cancel_answer()
            log.debug("connection from %s closed (code %s)", peer, ws.close_code)

    async def _handshake(self, ws: ServerConnection, peer: str) -> Optional[_Session]:
        try:
            first = await asyncio.wait_for(ws.recv(), START_TIMEOUT_S)
        except (TimeoutError, asyncio.TimeoutError):
            return await self._refuse(ws, peer, ERR_START, "no start message within "
                                      f"{START_TIMEOUT_S:.0f} s")
        obj: Any = None
        if isinstance(first, str):
            try:
                obj = json.loads(first)
            except (ValueError, RecursionError):
                obj = None
        if not isinstance(obj, dict) or obj.get("type") != "start":
            return await self._refuse(ws, peer, ERR_START, "first message is not a start")
        agent_id = obj.get("agent_id")
        lang = obj.get("lang", "id")
        sr = obj.get("sr", SAMPLE_RATE)
        session_id = obj.get("session_id")
        if not isinstance(agent_id, str) or not agent_id:
            return await self._refuse(ws, peer, ERR_START, "start has no agent_id")
        if lang not in LANGS:
            return await self._refuse(ws, peer, ERR_START, "start has an unsupported lang")
        if isinstance(sr, bool) or sr != SAMPLE_RATE:
            return await self._refuse(ws, peer, ERR_START, "start has sr other than 16000")
        if session_id is not None and not isinstance(session_id, str):
            return await self._refuse(ws, peer, ERR_START, "start has a non-string session_id")
        key = obj.get(self.key_field)
        if not isinstance(key, str) or not key or (
                self._expected_key is not None
                and not hmac.compare_digest(key.encode(), self._expected_key.encode())):
            self._stats.add("auth_failures")
            return await self._refuse(ws, peer, ERR_AUTH,
                                      f"missing or wrong key in field '{self.key_field}'")
        public = {k: v for k, v in obj.items() if k != self.key_field}
        self._stats.set_last_start(public)
        self._stats.add("starts_ok")
        session_id = session_id or str(uuid.uuid4())
        session = _Session(self, ws, session_id, lang)
        await session.send({"type": "ready", "session_id": session_id})
        await session.send({"type": "stt.ready"})
        log.info("connection from %s: session %s started (agent %s, lang %s)",
                 peer, session_id, agent_id[:64], lang)
        return session

    async def _refuse(self, ws: ServerConnection, peer: str, message: str, why: str) -> None:
        log.warning("connection from %s refused with %r: %s", peer, message, why)
        try:
            await ws.send(json.dumps({"type": "error", "message": message}))
            await ws.close(1008, message)
        except ConnectionClosed:
            pass
        return None


def _peer(ws: ServerConnection) -> str:
    addr = ws.remote_address
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)



