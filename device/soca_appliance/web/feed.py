"""The live feed: the event log, fanned out to the screen's Server-Sent Event streams.

:class:`Feed` is one :class:`~soca_appliance.events.EventLog` listener. The emitter may
hold the orchestrator's lock when it calls us, so the listener never blocks and never does
I/O: it serialises the event once (through the log's redactor, so a secret cannot reach a
browser either), keeps it in a short history, counts what the metrics need
(:class:`Telemetry`) and offers it to every client's bounded queue with ``put_nowait``. A
client too slow to keep up is not waited for: it is told to go (its queue is marked
overflowed) and reconnects, getting a fresh snapshot.

Only the events the screen shows cross over (:data:`SCREEN_EVENTS`); diagnostic ``log``
lines never do.
"""
from __future__ import annotations

import collections
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

# What the page draws; everything else (log lines, audio.output, ...) stays in the journal.
SCREEN_EVENTS = frozenset({"state", "connected", "disconnected", "transcript",
                           "sentence.play", "sentence.stop", "barge", "answer", "mute",
                           "error", "mic.recovered"})
# Replayed to a page that (re)connects, so it shows the conversation it missed.
HISTORY_EVENTS = frozenset({"transcript", "sentence.play", "barge"})
HISTORY_LEN = 40
CLIENT_QUEUE = 256
MAX_CLIENTS = 8
BARGE_SOURCES = ("server", "button", "ctl", "screen")


@dataclass
class Telemetry:
    """What the metrics need that ``Appliance.status()`` does not say (kept from events)."""
    started: float = field(default_factory=time.time)
    barges: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BARGE_SOURCES, 0))
    auth_failures: int = 0
    errors: int = 0
    last_error_ts: float = 0.0
    disconnects: int = 0

    def count(self, record: dict[str, Any]) -> None:
        event = record.get("event")
        if event == "barge":
            source = str(record.get("source") or "unknown")[:16]
            if source not in self.barges and len(self.barges) >= 16:
                source = "other"            # a bounded label set, whatever the callers say
            self.barges[source] = self.barges.get(source, 0) + 1
        elif event == "error":
            self.errors += 1
            self.last_error_ts = float(record.get("ts") or time.time())
            if str(record.get("message", "")).startswith("authentication refused"):
                self.auth_failures += 1
        elif event == "disconnected":
            self.disconnects += 1


class Client:
    """One SSE stream's queue of already-formatted messages."""

    def __init__(self, maxsize: int = CLIENT_QUEUE) -> None:
        self.queue: queue.Queue[str] = queue.Queue(maxsize)
        self.overflowed = False

    def offer(self, message: str) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(message)
        except queue.Full:
            self.overflowed = True

    def next(self, timeout: float) -> Optional[str]:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None


class Feed:
    """Subscribe with :meth:`attach`; each page gets a :class:`Client` from :meth:`join`."""

    def __init__(self, redact: Callable[[str], str] = lambda s: s,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.redact = redact
        self.max_clients = max_clients
        self.telemetry = Telemetry()
        self.dropped_clients = 0
        self._lock = threading.Lock()
        self._clients: list[Client] = []
        self._history: collections.deque[str] = collections.deque(maxlen=HISTORY_LEN)
        self._events: Any = None

    # --- the event log side ----------------------------------------------------------

    def attach(self, events: Any) -> None:
        self._events = events
        self.redact = events.redact
        events.subscribe(self.on_event)

    def detach(self) -> None:
        events, self._events = self._events, None
        if events is not None and hasattr(events, "unsubscribe"):
            events.unsubscribe(self.on_event)

    def on_event(self, record: dict[str, Any]) -> None:
        """The listener: called in the emitter's thread, perhaps under its lock."""
        try:
            with self._lock:                # emitters run on several threads
                self.telemetry.count(record)
            if record.get("event") not in SCREEN_EVENTS:
                return
            message = sse("event", self.redact(json.dumps(record, ensure_ascii=False,
                                                          default=str)))
        except (TypeError, ValueError, RecursionError):
            return          # an event we cannot serialise is not worth stopping the emitter
        with self._lock:
            if record.get("event") in HISTORY_EVENTS:
                self._history.append(message)
            clients = list(self._clients)
        for client in clients:
            if not client.overflowed:
                client.offer(message)
                if client.overflowed:
                    self.dropped_clients += 1

    # --- the page side --------------------------------------------------------------

    def join(self) -> tuple[Optional[Client], list[str]]:
        """A new client and the history it missed; (None, []) when there are too many."""
        with self._lock:
            if len(self._clients) >= self.max_clients:
                return None, []
            client = Client()
            self._clients.append(client)
            return client, list(self._history)

    def leave(self, client: Client) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)

    def wake_all(self) -> None:
        """An empty message to every stream, so each one looks at its stop flag now."""
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            try:
                client.queue.put_nowait("")
            except queue.Full:
                client.overflowed = True

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)


def sse(name: str, data: str) -> str:
    """One Server-Sent Event; ``data`` is JSON, so it holds no raw newline."""
    return f"event: {name}\ndata: {data}\n\n"


def snapshot(status: dict[str, Any], lang: str, version: str) -> dict[str, Any]:
    """What a page needs to draw itself from nothing (never the key: status has none)."""
    return {"state": status.get("state", "connecting"),
            "connected": bool(status.get("connected")),
            "muted": bool(status.get("muted")),
            "faults": list(status.get("faults") or []),
            "lang": lang, "version": version}
