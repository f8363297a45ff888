"""What the orchestrator tells the world, done outside its lock: events, LEDs, log lines.

The orchestrator decides under its lock and queues the effects of a decision here, in
order; one ``effects`` thread performs them. So a blocked stdout (the event log) or a slow
LED driver can never stall the link, player or source threads that hold or wait for that
lock. The queue is bounded: when the world is stuck for long, new effects are dropped and
counted, and one warning says how many once it moves again. The LEDs only ever need the
latest state, so a panel update replaces one still waiting rather than queueing behind it.

API callers that want their effects done before they return (the button, the control
socket, shutdown) call :meth:`Effects.flush` with a bounded wait. :class:`WarningLimiter`
keeps a flood of warnings from becoming a flood of log lines.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable, Optional

log = logging.getLogger("soca.effects")

Effect = Callable[[], None]


class Effects:
    def __init__(self, max_queue: int = 2048) -> None:
        self.max_queue = max_queue
        self.dropped = 0
        self._queue: deque[Effect] = deque()
        self._cond = threading.Condition()
        self._submitted = 0           # effects accepted so far (for flush)
        self._done = 0                # effects performed so far
        self._unreported = 0          # dropped since the last warning
        self._panel: Optional[tuple[Callable[..., None], tuple[Any, ...]]] = None
        self._panel_queued = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="effects", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, effect: Effect) -> bool:
        with self._cond:
            if self._closed:
                return False
            if len(self._queue) >= self.max_queue:
                self.dropped += 1
                self._unreported += 1
                return False
            self._queue.append(effect)
            self._submitted += 1
            self._cond.notify_all()
        return True

    def panel(self, show: Callable[..., None], *args: Any) -> None:
        """Show a state on the LEDs: the latest call wins over one not yet performed."""
        with self._cond:
            self._panel = (show, args)
            if self._panel_queued:
                return
            self._panel_queued = True
        if not self.submit(self._show_panel):
            with self._cond:
                self._panel_queued = False

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` until every effect submitted before this call is done.
        From the effects thread itself (an effect that calls back) it does not wait."""
        if threading.current_thread() is self._thread or not self._thread.is_alive():
            return False
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._done >= target or self._closed, timeout)

    def close(self, timeout: float = 1.0) -> None:
        """Perform what is queued (for up to ``timeout``), then stop the thread."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _show_panel(self) -> None:
        with self._cond:
            self._panel_queued = False
            pending, self._panel = self._panel, None
        if pending is not None:
            show, args = pending
            show(*args)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                effect = self._queue.popleft()
                unreported, self._unreported = self._unreported, 0
            if unreported:
                log.warning("%d events or LED updates were dropped: the event log or the "
                            "LEDs were blocked", unreported)
            try:
                effect()
            except Exception:               # noqa: BLE001 - an effect must not end the thread
                log.exception("an event or LED update failed")
            with self._cond:
                self._done += 1
                self._cond.notify_all()


class WarningLimiter:
    """At most ``burst`` warnings per ``window`` seconds: a hostile server flooding bad
    sentences must not flood the journal too. Says how many it held back."""

    def __init__(self, burst: int = 20, window: float = 10.0) -> None:
        self.burst, self.window = burst, window
        self._start = float("-inf")
        self._count = 0
        self.suppressed = 0

    def allow(self, now: float) -> tuple[bool, int]:
        """(log this one?, warnings held back in the window that just ended)."""
        held = 0
        if now - self._start >= self.window:
            held, self.suppressed = self.suppressed, 0
            self._start, self._count = now, 0
        self._count += 1
        if self._count > self.burst:
            self.suppressed += 1
            return False, held
        return True, held
