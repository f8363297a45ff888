"""The microphone's level over the last minute, for ``soca_mic_rms_dbfs``.

The appliance does not measure its input level, so :class:`LevelTap` wraps the audio
source (the ``Source`` protocol: ``start(on_frame)`` / ``stop``) and lets every captured
frame pass through :class:`MicMeter` on its way to the orchestrator. Nothing else about
the source changes: attribute reads and writes (``on_error``, ``ended``, ``alive``...)
go to the wrapped object. The level is measured before mute and half-duplex silencing: it
is the health of the microphone, not of the uplink.

The meter keeps one bucket per second (sum of squares, samples, peak) for
:data:`WINDOW_S` seconds. A frame is only appended to a queue (a deque: one C call, no
lock, safe against the reader that empties it); the queue is measured in one numpy pass
once it holds :data:`BATCH` frames or when the level is read, into the bucket of the
second its first frame came in. numpy's per-call cost on every 20 ms frame was a third of
the appliance's streaming CPU, and the per-frame lock and clock read a further 45
bytecodes of the 760 a streamed frame costs (bench --instructions).
"""
from __future__ import annotations

import collections
import itertools
import math
import threading
import time
from typing import Any, Callable, Optional

WINDOW_S = 60
FULL_SCALE = 32768.0


BATCH = 50                  # frames measured together: a second of 20 ms frames


class MicMeter:
    def __init__(self, window: int = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._measured = 0                      # frames flushed into buckets
        self._lock = threading.Lock()           # the buckets; _flush runs under it
        # [second, sum of squares, samples, peak]
        self._buckets: collections.deque[list[float]] = collections.deque(maxlen=window + 1)
        self._pending: collections.deque[bytes] = collections.deque()   # not measured yet
        self._since = 0.0                       # when the pending batch's first frame came

    @property
    def frames(self) -> int:
        """Frames measured or waiting to be (a lone byte is nothing to measure)."""
        return self._measured + len(self._pending)

    def add(self, pcm: bytes) -> None:
        # The capture thread's whole share, on every frame: kept, not measured. A frame
        # that lands just as levels() empties the queue only dates its batch a little
        # early (this second instead of the next): a 60 s window does not notice.
        if len(pcm) & 1:                        # half a sample: cut, or nothing to measure
            if len(pcm) == 1:
                return
            pcm = bytes(memoryview(pcm)[:-1])
        pending = self._pending
        if not pending:
            self._since = self.clock()
        pending.append(pcm)
        if len(pending) >= BATCH:
            with self._lock:
                self._flush()

    def _flush(self) -> None:
        """The queued frames into the bucket of their batch's second (lock held)."""
        pending = self._pending
        # Exactly the frames queued now, each taken off by popleft called from C (a frame
        # appended meanwhile stays for the next batch).
        chunks = list(itertools.starmap(pending.popleft, itertools.repeat((), len(pending))))
        if not chunks:
            return
        sumsq, peak, count = _measure(b"".join(chunks))
        self._measured += len(chunks)
        second = int(self._since)           # (monotonic, never negative: the floor)
        if self._buckets and self._buckets[-1][0] == second:
            bucket = self._buckets[-1]
            bucket[1] += sumsq
            bucket[2] += count
            bucket[3] = max(bucket[3], peak)
        else:
            self._buckets.append([second, sumsq, float(count), peak])

    def levels(self) -> tuple[float, float]:
        """(RMS, peak) in dBFS over the window; -inf for digital silence or no audio."""
        horizon = math.floor(self.clock()) - self.window
        with self._lock:
            self._flush()
            live = [b for b in self._buckets if b[0] > horizon]
        sumsq = sum(b[1] for b in live)
        count = sum(b[2] for b in live)
        peak = max((b[3] for b in live), default=0.0)
        rms = math.sqrt(sumsq / count) if count else 0.0
        return _dbfs(rms), _dbfs(peak)


def _measure(pcm: bytes) -> tuple[float, float, int]:
    """Sum of squares, peak and samples of PCM16LE."""
    # float64 and einsum, one pass, no temporary of squares: not np.dot, for on a second
    # of audio BLAS would start its thread pool, whose threads spin after every call; and
    # a third fewer instructions than int64 square-and-sum (bench --instructions).
    import numpy as np      # once a second; not at start, before stt.ready (issue 13)
    samples = np.frombuffer(pcm, dtype="<i2")
    wide = samples.astype(np.float64)
    return (float(np.einsum("i,i->", wide, wide)),
            float(max(int(samples.max()), -int(samples.min()))), int(samples.size))


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
