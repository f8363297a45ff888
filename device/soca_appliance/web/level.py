"""The microphone's level over the last minute, for ``soca_mic_rms_dbfs``.

The appliance does not measure its input level, so :class:`LevelTap` wraps the audio
source (the ``Source`` protocol: ``start(on_frame)`` / ``stop``) and lets every captured
frame pass through :class:`MicMeter` on its way to the orchestrator. Nothing else about
the source changes: attribute reads and writes (``on_error``, ``ended``, ``alive``...)
go to the wrapped object. The level is measured before mute and half-duplex silencing: it
is the health of the microphone, not of the uplink.

The meter keeps one bucket per second (sum of squares, samples, peak) for
:data:`WINDOW_S` seconds, so the cost per 20 ms frame is one numpy pass over 320 samples.
"""
from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

WINDOW_S = 60
FULL_SCALE = 32768.0


class MicMeter:
    def __init__(self, window: int = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self.frames = 0
        self._lock = threading.Lock()
        # [second, sum of squares, samples, peak]
        self._buckets: collections.deque[list[float]] = collections.deque(maxlen=window + 1)

    def add(self, pcm: bytes) -> None:
        samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2)
        if samples.size == 0:
            return
        wide = samples.astype(np.float64)
        sumsq = float(np.dot(wide, wide))
        peak = float(np.max(np.abs(wide)))
        second = math.floor(self.clock())
        with self._lock:
            self.frames += 1
            if self._buckets and self._buckets[-1][0] == second:
                bucket = self._buckets[-1]
                bucket[1] += sumsq
                bucket[2] += samples.size
                bucket[3] = max(bucket[3], peak)
            else:
                self._buckets.append([second, sumsq, float(samples.size), peak])

    def levels(self) -> tuple[float, float]:
        """(RMS, peak) in dBFS over the window; -inf for digital silence or no audio."""
        horizon = math.floor(self.clock()) - self.window
        with self._lock:
            live = [b for b in self._buckets if b[0] > horizon]
        sumsq = sum(b[1] for b in live)
        count = sum(b[2] for b in live)
        peak = max((b[3] for b in live), default=0.0)
        rms = math.sqrt(sumsq / count) if count else 0.0
        return _dbfs(rms), _dbfs(peak)


def _dbfs(value: float) -> float:
    return 20.0 * math.log10(value / FULL_SCALE) if value > 0 else float("-inf")


class LevelTap:
    """A source that is the wrapped source, plus a meter on the frames it delivers."""

    _OWN = ("_inner", "meter")

    def __init__(self, inner: Any, meter: Optional[MicMeter] = None) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "meter", meter or MicMeter())

    def start(self, on_frame: Callable[[Any], None]) -> None:
        meter = self.meter

        def tapped(frame: Any) -> None:
            try:
                meter.add(frame.pcm)
            except (AttributeError, TypeError, ValueError):
                pass                    # a frame we cannot measure still goes through
            on_frame(frame)

        self._inner.start(tapped)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_inner"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)
