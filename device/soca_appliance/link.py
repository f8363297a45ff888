"""The connection to the voice agent: one websocket session at a time, forever.

Owns two threads. ``link`` opens a socket, tells the orchestrator a new session began
(``on_session_start``, before anything is sent), sends ``start``, handles what arrives
until ``stt.ready``, then receives and parses server messages until the connection ends,
and reconnects with exponential backoff and jitter (slowly after an authentication error:
the server's auth error message, or a close with code 1008). Audio goes onto the
socket from the capture thread itself when nothing is queued before it and the socket
takes it at once (``poll``, no wait): one thread wakes per frame. Otherwise, and for
controls, the current session's bounded outbox (audio and ``stop`` in order, ``barge``
ahead of them) is drained by ``link-tx``, which also sends keepalive pings and otherwise
sleeps (no polling). Capture never waits on the network: when the socket is busy or full
the frame is queued. The socket's timeout (ping interval + ping timeout) declares the link
dead when nothing came back in time, or when a send cannot complete for as long.

Each connection is a :class:`~soca_appliance.session.Session`: a failure on one socket can
only end that session, and frames queued for one session are never sent on the next.

Mic frames offered before ``stt.ready`` are dropped and counted, never queued: stale speech
must not reach the agent late. The private key is only ever inside the start message.
Each counter in :class:`LinkStats` is written by one thread only (named beside it), or
under the session's wire lock.
"""
from __future__ import annotations

import contextlib
import logging
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
from .protocol import ProtocolError, Ready, ServerError, ServerMessage, SttReady
from .session import Session

log = logging.getLogger("soca.link")

ABNORMAL_CLOSE = 1006
NORMAL_CLOSE = 1000
POLICY_CLOSE = 1008             # the server's word for "your key is refused"


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
    # A new socket is open (before start): whatever the old session left is over.
    on_session_start: Callable[[int], None] = lambda generation: None
    on_connected: Callable[[str], None] = lambda session_id: None
    on_disconnected: Callable[[Optional[int], str, float, bool], None] = \
        lambda code, reason, retry_in, auth: None
    on_message: Callable[[ServerMessage], None] = lambda message: None
    on_bad_message: Callable[[str], None] = lambda error: None


@dataclass
class LinkStats:
    attempts: int = 0                   # link thread
    connects: int = 0                   # link thread
    frames_sent: int = 0                # under the session's wire lock
    frames_dropped_not_ready: int = 0   # the caller of send_audio (the source thread)
    frames_dropped_full: int = 0        # the caller of send_audio
    controls_sent: int = 0              # link-tx
    bad_messages: int = 0               # link thread
    latencies: deque = field(default_factory=lambda: deque(maxlen=4096))   # wire lock


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
        self.generation = 0
        self._session: Optional[Session] = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._wake = threading.Event()      # for link-tx: a session streams, or closing
        self._rx = threading.Thread(target=self._run, name="link", daemon=True)
        self._tx = threading.Thread(target=self._send_loop, name="link-tx", daemon=True)

    # --- API for other threads -----------------------------------------------------

    def start(self) -> None:
        self._rx.start()
        self._tx.start()

    @property
    def session(self) -> Optional[Session]:
        with self._lock:
            return self._session

    @property
    def streaming(self) -> bool:
        session = self.session
        return session is not None and session.streaming.is_set()

    def send_audio(self, frame: Frame) -> bool:
        """From the capture thread: onto the socket right here when nothing is queued
        before it and the socket takes it now, else into the outbox. Never waits."""
        session = self._session              # one reference read: no lock needed
        if session is None or not session.streaming.is_set():
            self.stats.frames_dropped_not_ready += 1
            return False
        if session.wire.acquire(blocking=False):     # link-tx is not sending
            try:
                if session.outbox.empty and session.writable():
                    self._send_frame(session, frame)
                    return True
            except (websocket.WebSocketException, OSError, ValueError) as exc:
                self._send_failed(session, exc)
                return True
            finally:
                session.wire.release()
        if not session.outbox.put_audio(frame):
            self.stats.frames_dropped_full += 1
        return True

    def send_control(self, text: str, urgent: bool = False) -> bool:
        """A control message for the current session: after the audio already queued
        (``stop``), or ahead of it when ``urgent`` (``barge``)."""
        session = self.session
        if session is None or not session.streaming.is_set():
            log.debug("not connected: control message %s not sent", text)
            return False
        if not session.outbox.put_control(text, urgent):
            log.debug("outbox full of controls: %s not sent", text)
            return False
        return True

    def close(self, timeout: float = 1.0) -> None:
        """Close with code 1000 and stop both threads within ``timeout``."""
        self._closing.set()
        self._wake.set()
        session = self.session
        if session is not None:
            session.streaming.clear()
            # The close frame goes from a helper thread: link-tx may hold the socket's
            # lock, blocked in a send on a dead link, and shutdown must not wait for it.
            closer = threading.Thread(target=_send_close, args=(session.ws,),
                                      name="link-close", daemon=True)
            closer.start()
            closer.join(timeout / 4)
        self._rx.join(timeout / 4)
        if session is not None:
            session.end()                  # the server did not answer the close: cut
        self._rx.join(timeout / 4)
        self._tx.join(timeout / 4)

    def alive(self) -> bool:
        return self._rx.is_alive() and self._tx.is_alive()

    # --- connection thread ---------------------------------------------------------

    def _run(self) -> None:
        while not self._closing.is_set():
            self.stats.attempts += 1
            self.cb.on_connecting(self.stats.attempts)
            self.generation += 1
            ws = websocket.WebSocket(enable_multithread=True, skip_utf8_validation=True,
                                     sslopt=self._sslopt())
            session = Session(self.generation, ws, self.settings.queue_frames)
            with self._lock:
                self._session = session
            try:
                code, reason, up_for = self._serve(session)
            finally:
                session.end()
                with self._lock:
                    if self._session is session:
                        self._session = None
                with contextlib.suppress(websocket.WebSocketException, OSError, ValueError):
                    ws.shutdown()
            if self._closing.is_set():
                return
            if up_for >= self.settings.stable_after:
                self.backoff.reset()
            auth = session.auth_failed
            delay = (self.backoff.slow(self.settings.auth_retry) if auth
                     else self.backoff.next_delay())
            self.cb.on_disconnected(code, reason, round(delay, 2), auth)
            self._closing.wait(delay)

    def _serve(self, session: Session) -> tuple[Optional[int], str, float]:
        """One connection, from connect to close. Returns (close code, reason, seconds up)."""
        ws = session.ws
        up_since: Optional[float] = None
        try:
            ws.connect(self.settings.url, timeout=self.settings.connect_timeout)
            if self._closing.is_set():
                return NORMAL_CLOSE, "shutdown", 0.0
            self.cb.on_session_start(session.generation)
            self._handshake(session)
            # Pongs arrive every ping_interval: longer silence on receive, or a send that
            # cannot complete for as long, means the link is dead.
            ws.settimeout(self.settings.ping_interval + self.settings.ping_timeout)
            up_since = time.monotonic()
            self.stats.connects += 1
            session.next_ping = up_since + self.settings.ping_interval
            session.streaming.set()
            self._wake.set()
            self.cb.on_connected(self.session_id)
            return (*self._receive(session), time.monotonic() - up_since)
        except _Handshake as exc:
            session.auth_failed = exc.auth
            return exc.code, str(exc), 0.0
        except websocket.WebSocketBadStatusException as exc:
            return None, f"server refused the upgrade: HTTP {exc.status_code}", 0.0
        except ssl.SSLError as exc:
            return None, f"TLS failed: {exc.reason or exc}", 0.0
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            up = 0.0 if up_since is None else time.monotonic() - up_since
            return None, session.failure or _describe(exc), up

    def _handshake(self, session: Session) -> None:
        s, ws = self.settings, session.ws
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
                                 auth=code == POLICY_CLOSE, code=code)
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            message = self._parse(frame.data)
            if isinstance(message, ServerError) and message.is_auth:
                raise _Handshake(f"server error: {message.message}", auth=True)
            if isinstance(message, Ready):
                self.session_id = message.session_id or self.session_id
            elif isinstance(message, SttReady):
                return
            elif message is not None:
                # A greeting, a transcript, an error that is not about the key: handled
                # like any message of the session (the session started at socket open).
                self.cb.on_message(message)

    def _receive(self, session: Session) -> tuple[Optional[int], str]:
        ws = session.ws
        binary_warned = False
        while True:
            try:
                opcode, frame = ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                if session.failure:
                    return None, session.failure
                silent = self.settings.ping_interval + self.settings.ping_timeout
                log.warning("no reply from the server for %.0f s: the link is dead", silent)
                return None, "link dead (no reply to pings)"
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code, reason = _close_status(frame.data)
                session.auth_failed = code == POLICY_CLOSE
                return code, reason
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
            if isinstance(message, Ready):
                # A late ready (after stt.ready) names the session: keep its id.
                if message.session_id and message.session_id != self.session_id:
                    log.info("the server named the session %s", message.session_id)
                    self.session_id = message.session_id
                continue
            self.cb.on_message(message)
            if isinstance(message, ServerError) and message.is_auth:
                session.auth_failed = True
                return None, f"server error: {message.message}"

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
        """What the capture thread could not send (the socket was busy or full), the
        controls, and a ping when one is due. Sleeps in between: no polling."""
        while not self._closing.is_set():
            self._wake.clear()
            session = self.session
            if session is None or not session.streaming.is_set():
                self._wake.wait()           # set when a session streams, and on close
                continue
            due = session.next_ping - time.monotonic()
            if not session.outbox.wait(max(0.0, due)) and due > 0:
                continue
            try:
                with session.wire:
                    self._send(session, session.outbox.pop())
            except (websocket.WebSocketException, OSError, ValueError) as exc:
                self._send_failed(session, exc)

    def _send_failed(self, session: Session, exc: BaseException) -> None:
        # Only this session ends, whatever session is current by now.
        reason = f"send failed ({_describe(exc)})"
        if session.fail(reason):
            log.info("%s on session %d; reconnecting", reason, session.generation)
        else:
            log.debug("%s on session %d, already over", reason, session.generation)

    def _send_frame(self, session: Session, frame: Frame) -> None:
        """One audio frame onto the socket (wire held)."""
        session.ws.send_binary(frame.pcm)
        self.stats.frames_sent += 1
        self.stats.latencies.append(time.monotonic() - frame.t_capture)

    def _send(self, session: Session, item: Optional[Union[str, Frame]]) -> None:
        """link-tx: an item of the outbox, then a ping if one is due (wire held)."""
        ws = session.ws
        if isinstance(item, Frame):
            self._send_frame(session, item)
        elif isinstance(item, str):
            ws.send(item)
            self.stats.controls_sent += 1
        now = time.monotonic()
        if now >= session.next_ping and session.streaming.is_set():
            ws.ping()
            session.next_ping = now + self.settings.ping_interval


def _send_close(ws: websocket.WebSocket) -> None:
    with contextlib.suppress(websocket.WebSocketException, OSError, ValueError):
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
