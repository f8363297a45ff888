"""The echo path's lag, followed: when the speaker's sound suddenly reaches the mic later or
sooner (an output whose latency jumps: SDL's buffer 512 -> 2048 is +70 ms), say by how much,
so that the reference can be moved by as much and the canceller keeps the lag it learnt.

Pure (numpy, no devices, no threads): :class:`LagTracker` is fed every frame's mic and
reference (what the canceller was given) and its cleaned output. Measured through the room
first: AEC3 alone re-finds a 70 ms jump only after a second or more, its residual voiced
all along (a false barge 1.3 s after the jump, 2 of 2 runs).

Cheap by design: the cross-correlation (GCC-PHAT, ~0.7 ms) runs
every ``refresh_s`` to keep the lag known, and every ``check_every`` frames only while the
canceller's output is suspiciously loud against the mic with the reference sounding (a
jump, or someone talking over the agent: a voice is not correlated with the reference and
leaves the lag where it is).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .echo_reference import RATE, gcc_phat


def _lag(near: np.ndarray, far: np.ndarray, max_lag: int) -> tuple[int, float]:
    """The lag L in [0, max_lag] at which ``near[i]`` matches ``far[i + max_lag - L]`` (the
    reference's span starts ``max_lag`` before the mic's window), and how well (0..1): the
    phase transform of the cross-spectrum (:func:`.echo_reference.gcc_phat`, as
    :func:`.echo_reference.estimate_lag`), without padding the mic's window to the
    reference's length (half the transform)."""
    size, cross, sharp = gcc_phat(near, far)
    # c[k] = sum near[i] far[i - k]; near[i] is far's sample i + max_lag: L = max_lag + k
    ks = np.concatenate([np.arange(size - max_lag, size), [0]])
    best = int(np.argmax(sharp[ks]))
    lag = best
    k = int(ks[best])
    plain = np.fft.irfft(cross, size)[k]
    shift = max_lag - lag
    seg = far[shift:shift + len(near)]
    e = float(np.dot(near, near)) * float(np.dot(seg, seg))
    return lag, abs(float(plain)) / np.sqrt(e) if e > 0 else 0.0


@dataclass
class TrackStats:
    estimates: int = 0
    changes: int = 0
    last_change: int = 0          # samples the echo moved at the last change (+: later)


class LagTracker:
    """The echo's lag behind the reference, in samples, and its sudden changes."""

    def __init__(self, frame: int = 320, window_s: float = 0.25, max_lag_s: float = 0.5,
                 check_every: int = 3, refresh_s: float = 3.0, tolerance_s: float = 0.004,
                 min_score: float = 0.25, suspicious_db: float = 20.0, drop_db: float = 10.0,
                 min_far_rms: float = 100.0, smooth: int = 2) -> None:
        self.frame = frame
        self.window = int(window_s * RATE)
        self.max_lag = int(max_lag_s * RATE)
        # The last frames given, newest last (joined only when an estimate runs).
        self._frames_kept = -(-(self.window + self.max_lag) // frame) + 1
        self._near: deque[np.ndarray] = deque(maxlen=self._frames_kept)
        self._far: deque[np.ndarray] = deque(maxlen=self._frames_kept)
        self._energy: deque[tuple[float, float]] = deque(maxlen=smooth)
        self.check_every = check_every
        self.refresh = max(1, int(refresh_s * RATE / frame))
        self.tolerance = int(tolerance_s * RATE)
        self.min_score = min_score
        self.suspicious_db = suspicious_db
        self.drop_db = drop_db
        self._erle = 0.0             # the canceller's usual reduction here (dB, slow)
        self._min_far_e = min_far_rms ** 2 * frame
        self._loud_wait = check_every
        self.lag: Optional[int] = None
        self._candidate: Optional[int] = None
        self._since_check = 0
        self.stats = TrackStats()

    @property
    def suspect(self) -> bool:
        """A lag other than the known one has been seen once (a jump, perhaps)."""
        return self._candidate is not None and self.lag is not None

    def far_tail(self, n: int) -> np.ndarray:
        """The last ``n`` reference samples the canceller was given (to replay them)."""
        if n <= 0 or not self._far:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(list(self._far)).astype(np.float32)[-n:]

    def moved(self, d: int) -> None:
        """The reference was moved ``d`` later with the echo: the lag is back to what it
        was; the history straddles the move, so wait for a fresh one."""
        if self.lag is not None:
            self.lag -= d
        self._candidate = None
        self._near.clear()
        self._far.clear()

    def update(self, near: np.ndarray, far: np.ndarray, clean: np.ndarray,
               sounding: bool = True) -> int:
        """One frame (``sounding``: the reference has sound in it). Returns by how many
        samples the echo has just moved (0: it has not)."""
        self._near.append(near)
        self._far.append(far)
        self._since_check += 1
        if not sounding or len(self._far) < self._frames_kept:
            self._energy.clear()
            return 0
        f = far.astype(np.float32)
        if float(np.dot(f, f)) < self._min_far_e:
            self._energy.clear()
            return 0
        x = near.astype(np.float32)
        c = clean.astype(np.float32)
        self._energy.append((float(np.dot(x, x)) + 1.0, float(np.dot(c, c)) + 1.0))
        e_near = sum(e for e, _ in self._energy)
        e_clean = sum(e for _, e in self._energy)
        # The canceller's output, over the last frames, too loud against the mic, and well
        # below what it usually achieves here (one that never gets far below the mic in
        # this room is not suddenly losing it).
        erle = 10 * math.log10(e_near / e_clean)
        loud = (len(self._energy) == self._energy.maxlen
                and erle < min(self.suspicious_db, self._erle - self.drop_db))
        if not loud:
            self._erle += 0.02 * (erle - self._erle)
        wait = self.refresh
        if self._candidate is not None:
            wait = self.check_every
        elif loud:              # a residue with the lag unchanged (a voice, a clipped
            wait = self._loud_wait        # speaker): ask less often
        if self._since_check < wait:
            return 0
        self._since_check = 0
        moved = self._estimate()
        self._loud_wait = (2 * self.check_every if loud and self._candidate is None
                           else self.check_every)
        return moved

    def _estimate(self) -> int:
        near = np.concatenate(list(self._near))[-self.window:].astype(np.float32)
        far = np.concatenate(list(self._far))[-(self.window + self.max_lag):].astype(np.float32)
        lag, score = _lag(near, far, self.max_lag)
        self.stats.estimates += 1
        if score < self.min_score:
            self._candidate = None
            return 0
        if self.lag is not None and abs(lag - self.lag) <= self.tolerance:
            self.lag, self._candidate = lag, None
            return 0
        if self._candidate is None or abs(lag - self._candidate) > self.tolerance:
            self._candidate = lag                 # once is chance: ask again next time
            return 0
        if self.lag is None:                      # the first lag, seen twice
            self.lag, self._candidate = lag, None
            return 0
        moved, self.lag, self._candidate = lag - self.lag, lag, None
        self.stats.changes += 1
        self.stats.last_change = moved
        return moved
