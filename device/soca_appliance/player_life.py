"""The player thread's loop and its output's life: the first opening (what waited for
it), parking a quiet mixer (:mod:`.speaker_idle`), losing the device, surviving a fault.

A mixin of :class:`~soca_appliance.player.Player`, which owns the queue, the lock (its
condition) and the playing. Other threads use the few methods at the top (retry delay,
parking, wake-up); the rest run in the player thread.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

from .backoff import Backoff
from .output import AudioOutput, OutputInfo
from .speaker_idle import IdleRelease

log = logging.getLogger("soca.player")


class PlayerLife:
    # Provided by the player.
    cb: Any
    output: AudioOutput
    info: Optional[OutputInfo]
    dropped: int
    faults: int
    _cond: threading.Condition
    _closed: bool
    _queue: deque[Any]
    _current: Optional[Any]
    _keep: deque[Any]
    _quiet_since: float
    _lost_drops: int
    _fault_backoff: Backoff
    _first_open: bool
    _idle: IdleRelease
    _resuming: bool
    _cue_after_open: Optional[tuple[bytes, bool]]
    _step: Callable[[], None]
    stop_all: Callable[[str], list[Any]]
    play_cue: Callable[..., bool]

    # --- API for other threads -----------------------------------------------------

    @property
    def retry_s(self) -> float:
        return self.output.retry_s

    @retry_s.setter
    def retry_s(self, value: float) -> None:       # first retry delay (tests shorten it)
        self.output.set_retry(value)
        with self._cond:
            self._cond.notify_all()

    def release_after(self, seconds: float) -> None:
        """Close the mixer after ``seconds`` of quiet (0: keep it open); see speaker_idle."""
        with self._cond:
            self._idle.after_s = seconds
            self._cond.notify_all()

    def wake(self) -> None:
        """Someone is talking: open a parked mixer now, so the answer finds it open."""
        with self._cond:
            if self._idle.want():
                self._cond.notify_all()

    @property
    def parked(self) -> bool:
        with self._cond:
            return self._idle.parked

    @property
    def opening(self) -> bool:
        """The output's first opening is still to come (sentences wait for it)."""
        with self._cond:
            return self._first_open

    # --- the player thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closed:
                try:
                    if self.info is None:
                        if self._idle.parked and not self._unpark():
                            continue
                        if not self.output.try_open():
                            self._open_failed()
                        continue
                    if self.output.lost():
                        self._output_lost()
                        continue
                    self._step()
                    self._fault_backoff.reset()
                except Exception as exc:  # noqa: BLE001 - the player thread never dies
                    self._fault(exc)
        finally:
            self.output.close()

    def _open_failed(self) -> None:
        """No output this time (reported by :mod:`.output`, once per outage): what waited
        for the first opening, or for a parked mixer, goes the way of every sentence while
        there is none."""
        with self._cond:
            waiting = ([i.sentence for i in self._queue]
                       if self._first_open or self._resuming else [])
            self._first_open = False
            self._resuming, self._cue_after_open = False, None   # a failed reopen is news
        if waiting:
            self.dropped += len(waiting)
            log.warning("no audio output: %d sentence(s) not played", len(waiting))
            self.stop_all("no output")
        with self._cond:
            if not self._closed:
                self._cond.wait(self.output.due_in())

    def _output_open(self, info: OutputInfo) -> None:
        with self._cond:
            self.info = info
            self._first_open = False
            self._idle.opened(time.monotonic())
            resumed, self._resuming = self._resuming, False
            cue, self._cue_after_open = self._cue_after_open, None
            dropped, self._lost_drops = self._lost_drops, 0
        if dropped:
            log.info("audio output back: %d sentence(s) were not played meanwhile", dropped)
        if not resumed:                 # (a parked mixer reopened is not a new output)
            self.cb.on_output(info)
        if cue is not None:
            self.play_cue(*cue)

    def _park(self) -> bool:
        """Quiet for long enough: close the mixer, SDL's audio thread with it."""
        with self._cond:
            busy = self._current is not None or bool(self._queue)
            if not self._idle.due(time.monotonic(), self._quiet_since, busy):
                return False
            self.info = None
            self._idle.park()
            self._keep.clear()
        self.output.close()
        log.debug("speaker quiet for %.0f s: mixer closed until needed", self._idle.after_s)
        return True

    def _unpark(self) -> bool:
        """Wait, with no timeout, until something wants the speaker; False when closing."""
        with self._cond:
            while self._idle.parked and not self._idle.wanted and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._cue_after_open = self._idle.resume()
            self._resuming = True
        return True

    def _output_lost(self) -> None:
        with self._cond:
            self.info = None
        self.stop_all("output lost")

    def _fault(self, exc: Exception) -> None:
        """Something in the player thread raised: say so, reset the output, go on."""
        self.faults += 1
        log.debug("player fault", exc_info=True)
        delay = self._fault_backoff.next_delay()
        if self._fault_backoff.attempts == 1:       # once per series of faults
            self.cb.on_error(f"player fault: {type(exc).__name__}: {exc}; the audio output "
                             f"is reopened")
        with self._cond:
            self.info = None
        self.stop_all("error")
        self.output.close()
        with self._cond:
            if not self._closed:
                self._cond.wait(delay)
