"""The connection to the voice agent: one websocket-client session at a time, forever.

Owns two threads. ``link`` connects, sends ``start``, waits for ``ready`` and
``stt.ready``, then receives and parses server messages until the connection ends, and
reconnects with exponential backoff and jitter (slowly after an authentication error).
``link-tx`` is the only thread that writes to the socket: it drains a bounded outbox
(control messages first, then audio frames, the oldest audio dropped when full) and sends
keepalive pings. The socket's timeout (ping interval + ping timeout) declares the link dead
when nothing came back in time, or when a send cannot complete for as long.

Mic frames offered before ``stt.ready`` are dropped and counted, never queued: stale speech
must not reach the agent late. The private key is only ever inside the start message.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import websocket

from . import protocol
from .backoff import Backoff
from .framing import Frame
from .protocol import ProtocolError, ServerError, ServerMessage, SttReady, Ready

log = logging.getLogger("soca.link")

ABNORMAL_CLOSE = 1006
NORMAL_CLOSE = 1000


@dataclass(frozen=True)
class LinkSettings:
    url: str
    agent_id: str
    lang: str
    private_key: str = field(repr=False)
    key_field: str = "private_key"
    session_id: str = ""                 # empty: a fresh UUID4 per connection
    ca_file: str = ""
    connect_timeout: float = 10.0
    ping_interval: float = 10.0
    ping_timeout: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    auth_retry: float = 60.0
    stable_after: float = 10.0          # a connection up this long resets the backoff
    queue_frames: int = 25              # 0.5 s of 20 ms frames


@dataclass
class LinkCallbacks:
    on_connecting: Callable[[int], None] = lambda attempt: None
    on_connected: Callable[[str], None] = lambda session_id: None
    on_disconnected: Callable[[Optional[int], str, float, bool], None] = \
        lambda code, reason, retry_in, auth: None
    on_message: Callable[[ServerMessage], None] = lambda message: None
    on_bad_message: Callable[[str], None] = lambda error: None


@dataclass
class LinkStats:
    attempts: int = 0
    connects: int = 0
    frames_sent: int = 0
    frames_dropped_not_ready: int = 0
    frames_dropped_full: int = 0
    controls_sent: int = 0
    bad_messages: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=4096))


class _Outbox:
    """Bounded: control messages never wait behind audio, and old audio makes way for new."""

    def __init__(self, max_frames: int) -> None:
        self.audio: deque[Frame] = deque()
        self.control: deque[str] = deque(maxlen=16)
        self.max_frames = max_frames
        self.cond = threading.Condition()

    def put_audio(self, frame: Frame) -> bool:
        with self.cond:
            dropped = len(self.audio) >= self.max_frames
            if dropped:
                self.audio.popleft()
            self.audio.append(frame)
            self.cond.notify()
        return not dropped

    def put_control(self, text: str) -> None:
        with self.cond:
            self.control.append(text)
            self.cond.notify()

    def get(self, timeout: float) -> Optional[Union[str, Frame]]:
        with self.cond:
            if not self.control and not self.audio:
                self.cond.wait(timeout)
            if self.control:
                return self.control.popleft()
            if self.audio:
                return self.audio.popleft()
            return None

    def clear(self) -> None:
        with self.cond:
            self.audio.clear()
            self.control.clear()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()


class _Handshake(Exception):
    def __init__(self, message: str, auth: bool = False, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.auth = auth
        self.code = code


class Link:
    def __init__(self, settings: LinkSettings, callbacks: Optional[LinkCallbacks] = None,
                 backoff: Optional[Backoff] = None) -> None:
        self.settings = settings
        self.cb = callbacks or LinkCallbacks()
        self.backoff = backoff or Backoff(initial=settings.backoff_initial,
                                          cap=settings.backoff_max)
        self.stats = LinkStats()
        self.session_id = ""
        self._outbox = _Outbox(settings.queue_frames)
        self._ws: Optional[websocket.WebSocket] = None
        self._ws_lock = threading.Lock()
        self._streaming = threading.Event()
        self._closing = threading.Event()
        self._auth_failed = False
        self._rx = threading.Thread(target=self._run, name="link", daemon=True)
        self._tx = threading.Thread(target=self._send_loop, name="link-tx", daemon=True)

    # --- API for other threads -----------------------------------------------------

    def start(self) -> None:
        self._rx.start()
        self._tx.start()

    @property
    def streaming(self) -> bool:
        return self._streaming.is_set()

    def send_audio(self, frame: Frame) -> bool:
        if not self._streaming.is_set():
            self.stats.frames_dropped_not_ready += 1
            return False
        if not self._outbox.put_audio(frame):
            self.stats.frames_dropped_full += 1
        return True

    def send_control(self, text: str) -> bool:
        if not self._streaming.is_set():
            log.debug("not connected: control message %s not sent", text)
            return False
        self._outbox.put_control(text)
        return True

    def close(self, timeout: float = 1.0) -> None:
        """Close with code 1000 and stop both threads within ``timeout``."""
        self._closing.set()
        self._streaming.clear()
        ws = self._current()
        if ws is not None:
            # The close frame goes from a helper thread: link-tx may hold the socket's
            # lock, blocked in a send on a dead link, and shutdown must not wait for it.
            closer = threading.Thread(target=_send_close, args=(ws,), name="link-close",
                                      daemon=True)
            closer.start()
            closer.join(timeout / 4)
        self._outbox.wake()
        self._rx.join(timeout / 4)
        self._abort()                          # the server did not answer the close: cut
        self._rx.join(timeout / 4)
        self._tx.join(timeout / 4)

    def alive(self) -> bool:
        return self._rx.is_alive() and self._tx.is_alive()

    # --- connection thread ---------------------------------------------------------

    def _run(self) -> None:
        while not self._closing.is_set():
            self.stats.attempts += 1
            self.cb.on_connecting(self.stats.attempts)
            code, reason, up_for = self._session()
            self._streaming.clear()
            self._outbox.clear()
            with self._ws_lock:
                ws, self._ws = self._ws, None
            if ws is not None:
                ws.shutdown()
            if self._closing.is_set():
                return
            if up_for >= self.settings.stable_after:
                self.backoff.reset()
            auth = self._auth_failed
            delay = (self.backoff.slow(self.settings.auth_retry) if auth
                     else self.backoff.next_delay())
            self.cb.on_disconnected(code, reason, round(delay, 2), auth)
            self._closing.wait(delay)

    def _session(self) -> tuple[Optional[int], str, float]:
        """One connection, from connect to close. Returns (close code, reason, seconds up)."""
        self._auth_failed = False
        ws = websocket.WebSocket(enable_multithread=True, skip_utf8_validation=True,
                                 sslopt=self._sslopt())
        with self._ws_lock:
            self._ws = ws
        up_since: Optional[float] = None
        try:
            ws.connect(self.settings.url, timeout=self.settings.connect_timeout)
            if self._closing.is_set():
                return NORMAL_CLOSE, "shutdown", 0.0
            self._handshake(ws)
            # Pongs arrive every ping_interval: longer silence on receive, or a send that
            # cannot complete for as long, means the link is dead.
            ws.settimeout(self.settings.ping_interval + self.settings.ping_timeout)
            up_since = time.monotonic()
            self.stats.connects += 1
            self._streaming.set()
            self.cb.on_connected(self.session_id)
            return (*self._receive(ws), time.monotonic() - up_since)
        except _Handshake as exc:
            self._auth_failed = exc.auth
            return exc.code, str(exc), 0.0
        except websocket.WebSocketBadStatusException as exc:
            return None, f"server refused the upgrade: HTTP {exc.status_code}", 0.0
        except ssl.SSLError as exc:
            return None, f"TLS failed: {exc.reason or exc}", 0.0
        except (websocket.WebSocketException, OSError) as exc:
            up = 0.0 if up_since is None else time.monotonic() - up_since
            return None, _describe(exc), up

    def _handshake(self, ws: websocket.WebSocket) -> None:
        s = self.settings
        self.session_id = s.session_id or str(uuid.uuid4())
        ws.send(protocol.start_message(private_key=s.private_key, session_id=self.session_id,
                                       agent_id=s.agent_id, lang=s.lang, key_field=s.key_field))
        deadline = time.monotonic() + s.connect_timeout
        while True:
            ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                opcode, frame = ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                raise _Handshake("no stt.ready from the server within "
                                 f"{s.connect_timeout:g} s") from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code, reason = _close_status(frame.data)
                raise _Handshake(f"server closed during start ({code} {reason})".strip(),
                                 code=code)
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            message = self._parse(frame.data)
            if isinstance(message, ServerError):
                raise _Handshake(f"server error: {message.message}", auth=message.is_auth)
            if isinstance(message, Ready):
                self.session_id = message.session_id or self.session_id
            elif isinstance(message, SttReady):
                return
            elif message is not None:
                self.cb.on_message(message)

    def _receive(self, ws: websocket.WebSocket) -> tuple[Optional[int], str]:
        binary_warned = False
        while True:
            try:
                opcode, frame = ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                silent = self.settings.ping_interval + self.settings.ping_timeout
                log.warning("no reply from the server for %.0f s: the link is dead", silent)
                return None, "link dead (no reply to pings)"
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return _close_status(frame.data)
            if opcode == websocket.ABNF.OPCODE_BINARY:
                if not binary_warned:
                    self.cb.on_bad_message(f"unexpected binary frame from the server "
                                           f"({len(frame.data)} bytes) ignored")
                    binary_warned = True
                continue
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue                # pongs: arriving at all resets the socket timeout
            message = self._parse(frame.data)
            if message is None:
                continue
            if isinstance(message, ServerError) and message.is_auth:
                self._auth_failed = True
                self.cb.on_message(message)
                return None, f"server error: {message.message}"
            self.cb.on_message(message)

    def _parse(self, data: Union[bytes, str]) -> Optional[ServerMessage]:
        try:
            return protocol.parse(data)
        except ProtocolError as exc:
            self.stats.bad_messages += 1
            self.cb.on_bad_message(str(exc))
            return None

    def _sslopt(self) -> dict:
        opts: dict = {"cert_reqs": ssl.CERT_REQUIRED}
        if self.settings.ca_file:
            opts["ca_certs"] = self.settings.ca_file
        return opts

    # --- sender thread -------------------------------------------------------------

    def _send_loop(self) -> None:
        next_ping = time.monotonic() + self.settings.ping_interval
        while not self._closing.is_set():
            item = self._outbox.get(timeout=0.1)
            ws = self._current()
            if ws is None or not self._streaming.is_set():
                next_ping = time.monotonic() + self.settings.ping_interval
                continue
            try:
                if isinstance(item, Frame):
                    ws.send_binary(item.pcm)
                    self.stats.frames_sent += 1
                    self.stats.latencies.append(time.monotonic() - item.t_capture)
                elif isinstance(item, str):
                    ws.send(item)
                    self.stats.controls_sent += 1
                now = time.monotonic()
                if now >= next_ping:
                    ws.ping()
                    next_ping = now + self.settings.ping_interval
            except (websocket.WebSocketException, OSError) as exc:
                log.info("send failed (%s); reconnecting", _describe(exc))
                self._abort()

    def _current(self) -> Optional[websocket.WebSocket]:
        with self._ws_lock:
            return self._ws

    def _abort(self) -> None:
        ws = self._current()
        sock = getattr(ws, "sock", None)
        if sock is not None:
            # Shut the socket down directly (ws.abort() does nothing once a close frame
            # was sent): wakes the receiving thread and frees a blocked send.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _send_close(ws: websocket.WebSocket) -> None:
    with contextlib.suppress(websocket.WebSocketException, OSError):
        ws.send_close(NORMAL_CLOSE)


def _close_status(data: bytes) -> tuple[int, str]:
    if len(data) >= 2:
        code = struct.unpack("!H", data[:2])[0]
        return code, data[2:].decode("utf-8", "replace")
    return 1005, ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, websocket.WebSocketConnectionClosedException):
        return "connection lost"
    if isinstance(exc, websocket.WebSocketTimeoutException):
        return "timed out"
    text = str(exc) or exc.__class__.__name__
    return text[:160]
