"""The event log: one line per thing that happened, for people or for machines.

``--log-format json`` prints one JSON object per line on stdout (a public contract,
documented in the README); ``text`` prints short aligned lines with the conversation as
``you:`` / ``agent:``. Diagnostic log records (the ``logging`` module) go to stderr in
text mode and become ``{"event":"log"}`` lines in JSON mode. Every line passes through
the redactor, so the private key cannot reach a log even by accident.

In the appliance (``background=True``) log records reach stderr from one ``log-writer``
thread through a bounded queue: a journal that stops reading blocks that thread only, never
the link, player or capture thread that logged; records that do not fit are counted and one
line says how many were lost. (Events already leave the orchestrator through its effects
thread.)
"""
from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from typing import Any, Callable, Iterable, Optional, TextIO

REDACTED = "***"


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = [s for s in secrets if s]

    def add(self, secret: str) -> None:
        if secret and secret not in self._secrets:
            self._secrets.append(secret)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


class EventLog:
    """Thread-safe writer of events; ``listeners`` see every event (tests, the bench)."""

    def __init__(self, fmt: str = "text", stream: Optional[TextIO] = None,
                 redactor: Optional[Redactor] = None) -> None:
        self.fmt = fmt
        self.stream = stream if stream is not None else sys.stdout
        self.redact = redactor or Redactor()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """``listener(record)`` is called in the emitter's thread (which may hold the
        orchestrator's lock): it must not block; the web feed queues and returns."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    def emit(self, event: str, **fields: Any) -> None:
        record = {"ts": round(time.time(), 3), "event": event, **fields}
        for listener in list(self._listeners):
            listener(record)
        if self.fmt == "text" and event == "transcript" and not fields.get("final"):
            return      # people read the final transcript; partials are for machines
        line = self.redact(json.dumps(record, ensure_ascii=False, default=str)
                           if self.fmt == "json" else _human(record))
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass    # a closed stdout (journal gone) must not stop the appliance


def _human(record: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(record["ts"]))
    event = record["event"]
    if event == "transcript":
        return f"{stamp}  you:    {record.get('text', '')}"
    if event == "sentence.play":
        return f"{stamp}  agent:  {record.get('text') or '(audio)'}"
    if event == "state":
        return f"{stamp}  [{record['state']}]"
    detail = " ".join(f"{k}={v}" for k, v in record.items() if k not in ("ts", "event"))
    return f"{stamp}  {event:<15} {detail}".rstrip()


class _EventHandler(logging.Handler):
    def __init__(self, events: EventLog) -> None:
        super().__init__()
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        self.events.emit("log", level=record.levelname.lower(), logger=record.name,
                         message=message)


class _RedactingFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s  %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class _Writer(logging.handlers.QueueListener):
    """The one thread that writes log records; stops within a bounded wait."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._monitor, name="log-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        try:    # put_nowait (the stdlib's) would raise on a full queue
            self.queue.put(self._sentinel, timeout=timeout)
        except queue.Full:
            return      # the output is stuck: the daemon thread goes with the process
        thread.join(timeout)


class BackgroundHandler(logging.handlers.QueueHandler):
    """Queues records for a :class:`_Writer`; counts what a full queue refuses."""

    def __init__(self, target: logging.Handler, max_records: int = 1024) -> None:
        super().__init__(queue.Queue(max_records))
        self.dropped = 0
        self._unreported = 0
        self._count_lock = threading.Lock()
        self.writer = _Writer(self.queue, target)
        self.writer.start()

    def enqueue(self, record: logging.LogRecord) -> None:
        with self._count_lock:
            lost, self._unreported = self._unreported, 0
        if lost:
            try:
                self.queue.put_nowait(logging.makeLogRecord({
                    "name": "soca.events", "levelno": logging.WARNING, "levelname": "WARNING",
                    "msg": f"{lost} log lines lost while the log output was blocked"}))
            except queue.Full:
                with self._count_lock:
                    self._unreported += lost        # still to be said, once there is room
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            # (a report queued just before still stands: only this record is new news)
            with self._count_lock:
                self.dropped += 1
                self._unreported += 1

    def close(self) -> None:
        self.writer.stop()
        super().close()

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait (bounded) until the writer has written what is queued now."""
        deadline = time.monotonic() + timeout
        with self.queue.all_tasks_done:
            while self.queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.queue.all_tasks_done.wait(left)
        return True


_background: Optional[BackgroundHandler] = None
_exit_hook = False


def _stop_background() -> None:
    global _background
    if _background is not None:
        _background.close()
        _background = None


def flush_logging(timeout: float = 2.0) -> None:
    """Let the log writer catch up (a bounded wait) before the appliance returns."""
    if _background is not None:
        _background.flush(timeout)


def setup_logging(events: EventLog, level: str = "info", stream: Optional[TextIO] = None,
                  background: bool = False) -> None:
    """Route the ``soca`` loggers: to stderr for people, into the event log for JSON;
    through the ``log-writer`` thread when ``background`` (the running appliance)."""
    global _background, _exit_hook
    _stop_background()
    root = logging.getLogger("soca")
    root.handlers.clear()
    # Our handler is the only one that sees appliance records: a handler some host program
    # put on the root logger would print them unredacted.
    root.propagate = False
    root.setLevel(level.upper())
    handler: logging.Handler
    if events.fmt == "json":
        handler = _EventHandler(events)
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        handler.setFormatter(_RedactingFormatter(events.redact))
    if background:
        if not _exit_hook:     # what is queued reaches stderr before the process ends
            atexit.register(_stop_background)
            _exit_hook = True
        handler = _background = BackgroundHandler(handler)
    root.addHandler(handler)
