"""One link session: a websocket connection's lifetime, from socket open to its end.

A :class:`Session` owns its socket, a generation number, its own bounded
:class:`Outbox` and its own streaming flag. Everything that can end a connection ends
one session only: a send that fails on an old socket marks that old session failed and
shuts down that old socket, never whatever socket happens to be current. Frames queued for
one session live in its outbox and die with it, so nothing crosses a session boundary.

The outbox keeps what the server must hear in order: audio frames and ``stop`` go out
first in, first out (a ``stop`` follows the last audio of its utterance); only urgent
controls (``barge``) jump the queue. When the network stalls, the oldest audio makes way.
"""
from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections import deque
from typing import Optional, Union

import websocket

from .framing import Frame

Item = Union[str, Frame]
MAX_CONTROLS = 64           # controls are a few per utterance; more is a flood


class Outbox:
    """Bounded: audio and in-order controls in one FIFO, urgent controls ahead of it."""

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        self.ordered: deque[Item] = deque()     # audio frames and in-order controls
        self.urgent: deque[str] = deque(maxlen=MAX_CONTROLS)
        self._frames = 0                        # audio frames in ``ordered``
        self._controls = 0                      # controls in ``ordered``
        self._closed = False
        self.cond = threading.Condition()

    @property
    def audio(self) -> list[Frame]:
        """The queued audio frames, oldest first (a copy)."""
        with self.cond:
            return [item for item in self.ordered if isinstance(item, Frame)]

    def put_audio(self, frame: Frame) -> bool:
        """Queue a frame; False when the oldest queued frame had to make way for it."""
        with self.cond:
            if self._closed:
                return False
            dropped = self._frames >= self.max_frames
            if dropped:
                self._drop_oldest_frame()
            self.ordered.append(frame)
            self._frames += 1
            self.cond.notify()
        return not dropped

    def put_control(self, text: str, urgent: bool = False) -> bool:
        """Queue a control message: in order after the queued audio, or ahead of it."""
        with self.cond:
            if self._closed:
                return False
            if urgent:
                self.urgent.append(text)
            elif self._controls >= MAX_CONTROLS:
                return False
            else:
                self.ordered.append(text)
                self._controls += 1
            self.cond.notify()
        return True

    @property
    def empty(self) -> bool:
        """Nothing queued (no lock: a glance, for the sender that holds the wire)."""
        return not self.ordered and not self.urgent

    def wait(self, timeout: Optional[float]) -> bool:
        """Until something is queued or the outbox is closed (True), or ``timeout`` passed."""
        with self.cond:
            if not self._closed and not self.urgent and not self.ordered:
                self.cond.wait(timeout)
            return self._closed or bool(self.urgent or self.ordered)

    def get(self, timeout: float) -> Optional[Item]:
        with self.cond:
            if not self._closed and not self.urgent and not self.ordered:
                self.cond.wait(timeout)
            return self._pop()

    def pop(self) -> Optional[Item]:
        """The next item (urgent first), or None; never waits."""
        with self.cond:
            return self._pop()

    def _pop(self) -> Optional[Item]:
        if True:                                # (cond held)
            if self._closed:
                return None
            if self.urgent:
                return self.urgent.popleft()
            if self.ordered:
                item = self.ordered.popleft()
                if isinstance(item, Frame):
                    self._frames -= 1
                else:
                    self._controls -= 1
                return item
            return None

    def __len__(self) -> int:
        with self.cond:
            return len(self.ordered) + len(self.urgent)

    def close(self) -> None:
        """Drop everything and refuse more: the session is over."""
        with self.cond:
            self._closed = True
            self.ordered.clear()
            self.urgent.clear()
            self._frames = self._controls = 0
            self.cond.notify_all()

    def _drop_oldest_frame(self) -> None:
        for i, item in enumerate(self.ordered):
            if isinstance(item, Frame):
                del self.ordered[i]
                self._frames -= 1
                return


class Session:
    """A connection's socket, generation, outbox and streaming flag."""

    def __init__(self, generation: int, ws: websocket.WebSocket, max_frames: int) -> None:
        self.generation = generation
        self.ws = ws
        self.outbox = Outbox(max_frames)
        self.streaming = threading.Event()
        self.ended = threading.Event()
        self.auth_failed = False
        self.failure: Optional[str] = None      # why a send ended this session
        self.next_ping = 0.0                    # link-tx's ping schedule for this socket
        # Held by whichever thread puts a frame on this socket: the capture thread when
        # nothing is queued and the socket takes it at once, otherwise link-tx. Items
        # leave the outbox only under it, so nothing overtakes what was queued before.
        self.wire = threading.Lock()
        self._poll: Optional[select.poll] = None
        self._takes_now: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def writable(self) -> bool:
        """The socket would take a frame now (``poll`` without waiting; wire held)."""
        if self._poll is None:
            sock = getattr(self.ws, "sock", None)
            if sock is None:
                return False
            self._poll = select.poll()
            self._poll.register(sock, select.POLLOUT)
            # What poll says of a socket that takes data and has no error or hang-up: one
            # list compare (in C) instead of unpacking it on every frame.
            self._takes_now = [(sock.fileno(), select.POLLOUT)]
        return self._poll.poll(0) == self._takes_now

    def fail(self, reason: str) -> bool:
        """A send on this session's socket failed: end this session (and only this one).
        True the first time, when it was still running."""
        with self._lock:
            first = self.failure is None and not self.ended.is_set()
            if first:
                self.failure = reason
        self.streaming.clear()
        self.abort()
        return first

    def end(self) -> None:
        """The receiving side is done with it: stop streaming, drop the outbox, free any
        send still blocked on the socket."""
        self.streaming.clear()
        self.ended.set()
        self.outbox.close()
        self.abort()

    def abort(self) -> None:
        # Shut the socket down directly (ws.abort() does nothing once a close frame was
        # sent): wakes a receive and a send blocked on THIS socket.
        sock = getattr(self.ws, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                sock.shutdown(socket.SHUT_RDWR)
