"""In-process acoustic echo cancellation: the agent's voice taken out of the microphone.

Owns the choice of canceller (WebRTC AEC3 through ``pywebrtc-audio``, behind
:class:`Canceller` so it can change), the far-end reference and its clock, the ducking
decision, the ``duplex`` policy and the echo-path measurement ``soca-diag`` uses.

The reference is what the player hands to the mixer, resampled to 16 kHz mono and written
into a :class:`ReferenceRing` indexed by the microphone's sample clock (:class:`MicClock`)
at the moment it is queued. Playback starts a little later (mixer buffer, sound server,
air), so the reference always LEADS the echo: AEC3 copes with the echo lagging by
20–490 ms, not with a late reference. A stop or barge cuts the reference where the mixer
stopped taking it.

Pure parts (clock, ring, ducker, policy, measurement) need neither the binding nor a
device; :class:`EchoPath` ties them together for the orchestrator. Threads: the player
writes and cuts the reference, the capture thread reads it and runs the canceller (the
binding is not thread-safe: only that thread touches it); a small lock guards the ring.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import soxr

from .framing import Frame

log = logging.getLogger("soca.echo")

RATE = 16000                      # the canceller, the reference and the uplink
DUCK_GAIN = 10 ** (-12 / 20)      # -12 dB
SNAP_SAMPLES = RATE // 20         # a piece queued within 50 ms of the last one's end follows it
AEC_LATENCY = 128                 # samples the canceller's output lags its input (measured)


# --- the binding ---------------------------------------------------------------------

class Canceller:
    """WebRTC AEC3 (``pywebrtc_audio.EchoCanceller``) on 16 kHz mono int16 frames."""

    name = "pywebrtc-audio (WebRTC AEC3)"

    def __init__(self, rate: int = RATE) -> None:
        import pywebrtc_audio   # ImportError when there is no wheel (32-bit Pi OS)
        self._aec = pywebrtc_audio.EchoCanceller(sample_rate=rate, num_channels=1)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        return self._aec.process(near, far)

    def reset(self) -> None:
        self._aec.reset()


def load_canceller() -> tuple[Optional[Callable[[], Canceller]], str]:
    """(factory, "") when the canceller imports, else (None, why not)."""
    try:
        Canceller()
    except (ImportError, OSError, RuntimeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return Canceller, ""


def resolve_duplex(duplex: str, factory_probe: Callable[[], tuple[Optional[Callable[[], Canceller]], str]]
                   = load_canceller) -> tuple[str, str]:
    """The policy in force for a configured ``duplex`` and the one log line that says so.

    ``auto``: ``aec`` when the canceller imports, otherwise ``half``. ``aec`` asked for
    explicitly and not available also falls back to ``half`` (never to an echoing
    ``full``), and says so.
    """
    if duplex in ("half", "full"):
        return duplex, f"duplex {duplex}: no echo canceller"
    factory, why = factory_probe()
    if factory is not None:
        return "aec", (f"duplex {duplex}: echo cancellation on ({Canceller.name}); "
                       "voice barge-in enabled")
    return "half", (f"duplex {duplex}: echo canceller unavailable ({why}); half duplex, "
                    "the mic sends silence while the agent speaks (barge-in by the button)")


# --- the mic's sample clock ------------------------------------------------------------

class MicClock:
    """Maps time.monotonic() to the microphone's sample index.

    Each frame says "the sample before index ``end`` had arrived by ``t``". Arrival is late
    by a variable amount, never early, so the smallest ``t - end/rate`` over a window is the
    best offset; the window (10 s) lets the estimate follow a drifting clock.
    """

    def __init__(self, rate: int = RATE, window_s: float = 10.0, block_s: float = 1.0) -> None:
        self.rate = rate
        self._block_s = block_s
        self._blocks: deque[float] = deque(maxlen=max(1, int(window_s / block_s)))
        self._block_start: Optional[float] = None
        self._block_min = float("inf")
        self.end = 0                  # samples delivered so far

    def observe(self, end: int, t: float) -> None:
        self.end = end
        offset = t - end / self.rate
        if self._block_start is None or t - self._block_start >= self._block_s:
            if self._block_start is not None:
                self._blocks.append(self._block_min)
            self._block_start, self._block_min = t, offset
        else:
            self._block_min = min(self._block_min, offset)

    @property
    def ready(self) -> bool:
        return self._block_start is not None

    def offset(self) -> float:
        return min([self._block_min, *self._blocks])

    def index_at(self, t: float) -> int:
        """The mic sample being captured at ``t`` (best estimate; never before ``end``
        would be wrong: callers want future positions for what plays next)."""
        if not self.ready:
            return self.end
        return int(round((t - self.offset()) * self.rate))


# --- the far-end reference -------------------------------------------------------------

def to_reference(pcm: bytes, rate: int, channels: int) -> np.ndarray:
    """Mixer PCM (s16le, any rate/channels) as 16 kHz mono float32 (full scale 32768)."""
    samples = np.frombuffer(pcm[:len(pcm) - len(pcm) % (2 * channels)], dtype="<i2")
    audio = samples.astype(np.float32)
    if channels > 1:
        audio = audio.reshape(-1, channels).mean(axis=1)
    if rate != RATE and audio.size:
        audio = soxr.resample(audio, rate, RATE).astype(np.float32)
    return audio


class ReferenceRing:
    """What the speaker will play, by mic sample index: a bounded list of segments that
    overlap freely (speech and the chime mix); reads return silence where nothing plays."""

    def __init__(self, max_segments: int = 64) -> None:
        self._segments: deque[tuple[int, np.ndarray]] = deque(maxlen=max_segments)
        self.written = 0              # samples written, for reports and tests
        self.late = 0                 # samples written behind the read position (lost)
        self._read = 0

    def tail(self) -> int:
        """Index just after the last sample of the last segment (0 when empty)."""
        return max((start + len(seg) for start, seg in self._segments), default=0)

    def write(self, start: int, samples: np.ndarray, follow: bool = False) -> int:
        """Put ``samples`` at ``start``; ``follow``: right after the previous segment when
        it ends within 50 ms of ``start`` (a piece SDL plays back to back). Returns where
        it went."""
        tail = self.tail()
        if follow and tail > self._read and abs(start - tail) <= SNAP_SAMPLES:
            start = tail
        if start < self._read:                   # the mic is past it already
            skip = min(len(samples), self._read - start)
            self.late += skip
            samples, start = samples[skip:], start + skip
        if len(samples):
            self._segments.append((start, np.asarray(samples, dtype=np.float32).copy()))
            self.written += len(samples)
        return start

    def cut(self, at: int) -> None:
        """Nothing plays from ``at`` on (a stop, a barge)."""
        kept: deque[tuple[int, np.ndarray]] = deque(maxlen=self._segments.maxlen)
        for start, seg in self._segments:
            if start < at:
                kept.append((start, seg[:at - start]))
        self._segments = kept

    def shift(self, first: int, delta: int, until: Optional[int] = None) -> None:
        """Move the segments starting in [``first``, ``until``) by ``delta`` samples, as
        far as they are not read yet (the aligner's correction of one piece and those
        queued back to back after it)."""
        moved: deque[tuple[int, np.ndarray]] = deque(maxlen=self._segments.maxlen)
        for start, seg in self._segments:
            if start >= first and (until is None or start < until):
                if start < self._read:                      # partly read: move the rest
                    seg, start = seg[self._read - start:], self._read
                start += delta
                if start < self._read:
                    seg, start = seg[self._read - start:], self._read
                if not len(seg):
                    continue
            moved.append((start, seg))
        self._segments = moved

    def scale_from(self, at: int, gain: float) -> None:
        """The speaker's volume changed at ``at`` (ducking): so does the reference."""
        for start, seg in self._segments:
            if start + len(seg) > at:
                seg[max(0, at - start):] *= gain

    def read(self, start: int, n: int) -> np.ndarray:
        """Samples [start, start+n) as int16; drops segments that are over."""
        out = np.zeros(n, dtype=np.float32)
        end = start + n
        for s, seg in self._segments:
            a, b = max(start, s), min(end, s + len(seg))
            if a < b:
                out[a - start:b - start] += seg[a - s:b - s]
        self._read = max(self._read, end)
        while self._segments and self._segments[0][0] + len(self._segments[0][1]) <= self._read:
            self._segments.popleft()
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def estimate_lag(near: np.ndarray, far: np.ndarray, lo: int, hi: int) -> tuple[int, float]:
    """The lag L in [lo, hi] at which ``near[i]`` best matches ``far[i - L]`` (both arrays
    cover the same sample indices), and the normalised correlation there (0..1).

    The peak is found on the phase transform of the cross-spectrum (GCC-PHAT, in the
    speech band): plain correlation of speech through a band-limited speaker peaks too
    broadly to place a piece within the 2 ms AEC3 tolerates between pieces.
    """
    x = np.asarray(near, dtype=np.float64)
    y = np.asarray(far, dtype=np.float64)
    size = 1 << int(np.ceil(np.log2(len(x) + len(y))))
    cross = np.fft.rfft(x, size) * np.conj(np.fft.rfft(y, size))
    plain = np.fft.irfft(cross, size)
    freqs = np.fft.rfftfreq(size, 1.0 / RATE)
    band = (freqs > 150.0) & (freqs < 7000.0)
    mag = np.abs(cross)
    phat = np.where(band, cross / np.maximum(mag, 1e-9 * (mag.max() or 1.0)), 0.0)
    sharp = np.fft.irfft(phat, size)
    lo, hi = max(0, lo), max(lo, min(hi, len(x) - 1))
    if hi < lo or not len(sharp[lo:hi + 1]):
        return lo, 0.0
    lag = lo + int(np.argmax(sharp[lo:hi + 1]))
    e_far = float(np.sum(y[:len(y) - lag] ** 2))
    e_near = float(np.sum(x[lag:] ** 2))
    score = abs(float(plain[lag])) / np.sqrt(e_far * e_near) if e_far > 0 and e_near > 0 else 0.0
    return lag, score


# --- ducking ----------------------------------------------------------------------------

class Ducker:
    """Local talk-over detection: duck the agent at once, restore if no barge follows.

    Feed one voiced/unvoiced verdict per frame of the cleaned mic. While the agent plays
    and ``need`` of the last ``window`` frames are voiced, the volume drops to ``gain``;
    after ``hold_s`` without a barge (the server's decision) it comes back, and does not
    duck again until the talk-over has stopped and starts anew. Pure: no clock, no I/O.
    """

    def __init__(self, frame_ms: int = 20, window: int = 10, need: int = 5,
                 hold_s: float = 1.5, gain: float = DUCK_GAIN) -> None:
        self._recent: deque[bool] = deque(maxlen=window)
        self.need = need
        self.hold_frames = max(1, int(round(hold_s * 1000 / frame_ms)))
        self.gain = gain
        self.ducked = False
        self._ducked_for = 0
        self._spent = False           # restored after a talk-over that goes on
        self.ducks = 0

    def update(self, voiced: bool, agent_playing: bool) -> Optional[float]:
        """The new volume when it must change, else None."""
        self._recent.append(voiced and agent_playing)
        talk_over = sum(self._recent) >= self.need
        if not agent_playing:
            self._recent.clear()
            self._spent = False
            if self.ducked:
                self.ducked = False
                return 1.0
            return None
        if not self.ducked:
            if not talk_over:
                self._spent = False
            elif not self._spent:
                self.ducked, self._ducked_for = True, 0
                self.ducks += 1
                return self.gain
            return None
        self._ducked_for += 1
        if self._ducked_for >= self.hold_frames:
            self.ducked, self._spent = False, talk_over
            return 1.0
        return None


# --- the orchestrator's view --------------------------------------------------------------

@dataclass
class _Placed:
    start: int            # where the piece went in the ring
    raw: int              # where the clock alone would have put it
    onset: int            # its first audible sample (echo of silence tells nothing)


class Aligner:
    """Keeps the lag the canceller sees the same for every piece the mixer starts afresh.

    A piece played on an idle channel starts at the mixer's next buffer, so where its
    echo lands varies by up to one buffer (measured on SDL's pulse driver: 20 ms spread
    between sentences; AEC3 re-learns each jump and meanwhile residual echo passes as
    speech). The mixer's buffers form a grid: every fresh start's echo falls on it. Each
    such piece's echo is found by cross-correlation once it is in; from those the grid's
    phase and the shortest lag are learnt, new pieces are placed on the grid at the lag
    of the first one, and a piece found off it is moved there for the rest of its length.
    Pure: the caller hands in aligned mic and reference history.
    """

    def __init__(self, window_s: float = 0.4, search_s: float = 0.03,
                 first_search_s: float = 0.6, min_score: float = 0.3,
                 margin: int = 16, tolerance: int = 48) -> None:
        self.window = int(window_s * RATE)
        self.search = int(search_s * RATE)
        self.first_search = int(first_search_s * RATE)
        self.min_score = min_score
        self.margin = margin
        self.tolerance = tolerance
        self.grid: Optional[float] = None        # the mixer's buffer, in mic samples
        self.target: Optional[int] = None        # the lag the canceller is kept at
        self.phase: Optional[float] = None       # echo onsets modulo the grid
        self.shortest: Optional[int] = None      # echo minus clock-placed reference, least
        self.pending: deque[_Placed] = deque(maxlen=8)
        self.corrections: list[int] = []
        self._agree = 0                          # measurements in a row on the grid
        self.measured = 0                        # fresh starts found on the grid
        self.learn = 6

    def set_grid(self, seconds: float) -> None:
        grid = seconds * RATE
        if self.grid is not None and abs(grid - self.grid) > 0.5:
            self.phase = self.shortest = None    # another mixer: learn again
            self._agree = 0
        self.grid = grid

    def place(self, raw: int) -> int:
        """Where a piece the clock puts at ``raw`` goes."""
        if None in (self.grid, self.phase, self.shortest, self.target):
            return raw
        assert self.grid and self.phase is not None and self.shortest is not None
        earliest = raw + self.shortest - self.margin
        k = np.ceil((earliest - self.phase) / self.grid)
        echo_at = int(round(self.phase + k * self.grid))
        assert self.target is not None
        return echo_at - self.target

    def due(self, piece: _Placed, pos: int) -> bool:
        reach = self.first_search if self.target is None else self.target + self._span()
        return pos >= piece.onset + reach + self.window

    def _span(self) -> int:
        return max(self.search, int(self.grid or 0) + self.margin)   # a buffer off, either way

    @property
    def settled(self) -> bool:
        """Seen enough fresh starts to place the next one on the grid (the shortest lag
        is learnt from the luckiest start so far; a start sooner than that lands a buffer
        off until seen)."""
        return self.target is not None and (self.grid is None or self.measured >= self.learn)

    def measure(self, piece: _Placed, hist_start: int, near: np.ndarray, far: np.ndarray
                ) -> Optional[int]:
        """The shift for ``piece`` (None: no confident measurement)."""
        if self.target is None:
            lo, hi = 0, self.first_search
        else:
            lo, hi = max(0, self.target - self._span()), self.target + self._span()
        x, y = near.astype(np.float64), far.astype(np.float64).copy()
        y[:max(0, piece.start - hist_start)] = 0.0           # only this piece's reference
        x[:max(0, piece.start + lo - hist_start)] = 0.0      # and only its echo
        if float(np.sum(y ** 2)) < len(y) * 100.0:           # too little sound to tell
            return None
        lag, score = estimate_lag(x, y, lo, hi)
        if score < self.min_score:
            return None
        echo_at = piece.start + lag
        if self.target is None:
            # One buffer less than the first lag: a fresh start can come up to a buffer
            # sooner than that one did, and its reference must still go after the clock's
            # guess (which is about now: never behind the mic).
            self.target = max(0, lag - int(np.ceil(self.grid or 0)) - self.margin)
        if not self._learn(echo_at, echo_at - piece.raw):
            return None                  # off the grid it has learnt: a wrong peak
        shift = lag - self.target
        if abs(shift) <= self.tolerance:
            return 0                     # AEC3 takes 2-3 ms in its stride; a move does not
        self.corrections.append(shift)
        return shift

    def _learn(self, echo_at: int, from_clock: int) -> bool:
        """Take in one measured echo onset; False when it contradicts the grid."""
        if self.grid:
            here = echo_at % self.grid
            if self.phase is None:
                self.phase, self._agree = here, 1
            else:   # wrap the difference into half a grid either way
                d = (here - self.phase + self.grid / 2) % self.grid - self.grid / 2
                if abs(d) > max(2 * self.margin, self.grid / 8) and self._agree >= 3:
                    return False
                self._agree = self._agree + 1 if abs(d) <= 2 * self.margin else 1
                self.phase = (self.phase + 0.3 * d) % self.grid     # follows slow drift
        self.shortest = from_clock if self.shortest is None else min(self.shortest, from_clock)
        self.measured += 1
        return True


@dataclass
class EchoStats:
    frames: int = 0
    frames_with_reference: int = 0
    frames_bypassed: int = 0      # no echo about: the raw mic, untouched
    frames_warmup: int = 0        # the canceller still learning the room: silence sent
    pieces: int = 0
    cuts: int = 0
    ducks: int = 0
    realigned: int = 0            # pieces moved to the canceller's lag


class EchoPath:
    """Reference in (player thread), cleaned frames out (capture thread).

    The canceller runs on every frame; what goes up is its output while echo may be about
    (from the first reference sample until ``tail_s`` after the last), the raw mic
    otherwise, delayed by the canceller's own latency so switching is seamless (the
    canceller's mandatory DC high-pass would otherwise colour a voice that has no echo
    to lose). Until ``warmup_s`` of reference has been heard the canceller has not learnt
    the room: those frames go up as silence, as in half duplex.
    """

    def __init__(self, canceller: Any, frame_ms: int = 20,
                 is_speech: Optional[Callable[[bytes], bool]] = None,
                 warmup_s: float = 3.0, tail_s: float = 1.0, history_s: float = 1.5,
                 learn_starts: int = 6, align: bool = True) -> None:
        self._aec = canceller
        self._clock = MicClock()
        self._ring = ReferenceRing()
        self._lock = threading.Lock()
        self._ducker = Ducker(frame_ms)
        self._tracker = Aligner()
        self._tracker.learn = learn_starts
        self._align = align           # False: place by the clock alone (for comparison)
        self._is_speech = is_speech or _webrtc_vad()
        self.stats = EchoStats()
        self._pos = 0                 # mic samples seen
        self._gain = 1.0
        self._warmup = int(warmup_s * RATE)
        self._heard = 0               # samples of reference so far
        self._tail = int(tail_s * RATE)
        self._since_ref = self._tail  # samples since the last reference sample
        self._delay = np.zeros(AEC_LATENCY, dtype=np.int16)
        self._mode = "raw"
        frames = max(1, int(history_s * 1000 / frame_ms))
        self._history: deque[tuple[int, np.ndarray, np.ndarray]] = deque(maxlen=frames)

    @property
    def converged(self) -> bool:
        """The canceller has learnt the room and the aligner the mixer's timing."""
        return self._heard >= self._warmup and (self._tracker.settled or not self._align)

    @property
    def lag_ms(self) -> Optional[float]:
        lag = self._tracker.target       # the lag the canceller is kept at
        return None if lag is None else 1000.0 * lag / RATE

    # player thread
    def reference(self, pcm: bytes, t: float, rate: int, channels: int,
                  buffer_s: float = 0.0) -> None:
        """PCM handed to the mixer at ``t`` (when it starts playing); ``buffer_s``: the
        mixer's buffer in seconds (the grid fresh starts fall on)."""
        samples = to_reference(pcm, rate, channels) * self._gain
        loud = np.flatnonzero(np.abs(samples) > 300.0)
        with self._lock:
            if buffer_s:
                self._tracker.set_grid(buffer_s)
            raw = self._clock.index_at(t)
            tail = self._ring.tail()
            if tail > self._pos and abs(raw - tail) <= SNAP_SAMPLES:
                self._ring.write(tail, samples)       # back to back with the last piece
            elif len(samples):
                start = self._ring.write(self._tracker.place(raw) if self._align else raw,
                                         samples)
                if loud.size and self._align:          # its echo will tell where it went
                    self._tracker.pending.append(_Placed(start, raw, start + int(loud[0])))
            self.stats.pieces += 1

    def cut(self, t: float) -> None:
        with self._lock:
            self._ring.cut(self._clock.index_at(t))
            self.stats.cuts += 1

    # capture thread
    def process(self, frame: Frame, agent_playing: bool) -> tuple[Frame, Optional[float]]:
        """The frame to send up, and the agent's new volume when ducking changes it."""
        near = np.frombuffer(frame.pcm, dtype="<i2").astype(np.int16)
        n = len(near)
        start = self._pos
        self._pos += n
        with self._lock:
            self._clock.observe(self._pos, frame.t_capture)
            far = self._ring.read(start, n)
        self._history.append((start, near, far))
        self._realign()
        self.stats.frames += 1
        clean = self._aec.process(near, far)
        raw = np.concatenate([self._delay, near])
        self._delay = raw[n:]
        nonzero = np.flatnonzero(far)
        if nonzero.size:
            self.stats.frames_with_reference += 1
            self._heard += nonzero.size
            self._since_ref = n - 1 - int(nonzero[-1])
        else:
            self._since_ref += n
        if self._since_ref >= self._tail:
            mode, self.stats.frames_bypassed = "raw", self.stats.frames_bypassed + 1
        elif not self.converged:
            mode, self.stats.frames_warmup = "mute", self.stats.frames_warmup + 1
        else:
            mode = "clean"
        paths = {"raw": raw[:n].astype(np.float32), "clean": clean.astype(np.float32),
                 "mute": np.zeros(n, dtype=np.float32)}
        out = paths[mode]
        if mode != self._mode:
            # A 20 ms crossfade: the canceller's high-pass shifts a voice's low end in
            # phase, and a hard switch there would click.
            fade = np.linspace(0.0, 1.0, n, dtype=np.float32)
            out = out * fade + paths[self._mode] * (1.0 - fade)
            self._mode = mode
        out = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
        pcm = out.astype("<i2").tobytes()
        volume = self._ducker.update(self._is_speech(pcm), agent_playing)
        if volume is not None:
            # The speaker's level changes now: the reference ahead follows, so the
            # canceller does not see a 12 dB jump in the echo path.
            with self._lock:
                self._ring.scale_from(self._clock.index_at(frame.t_capture),
                                      volume / self._gain)
            self._gain = volume
            self.stats.ducks = self._ducker.ducks
        return Frame(pcm, frame.t_capture, frame.index), volume

    def _realign(self) -> None:
        tracker = self._tracker
        with self._lock:
            if not tracker.pending or not tracker.due(tracker.pending[0], self._pos):
                return
            piece = tracker.pending.popleft()
        hist_start = self._history[0][0]
        if piece.start < hist_start:
            return                                   # out of history: leave it be
        near = np.concatenate([h[1] for h in self._history])
        far = np.concatenate([h[2] for h in self._history])
        shift = tracker.measure(piece, hist_start, near, far)
        if shift:
            with self._lock:
                until = tracker.pending[0].start if tracker.pending else None
                self._ring.shift(piece.start, shift, until)
            self.stats.realigned += 1


def attach(duplex: str, frame_ms: int = 20,
           probe: Callable[[], tuple[Optional[Callable[[], Canceller]], str]] = load_canceller
           ) -> tuple[str, Optional[EchoPath]]:
    """For the orchestrator: the policy in force and, for ``aec``, the echo path. Logs the
    one line that says which policy runs and why."""
    mode, line = resolve_duplex(duplex, probe)
    (log.warning if duplex == "aec" and mode != "aec" else log.info)("%s", line)
    if mode != "aec":
        return mode, None
    factory, _ = probe()
    assert factory is not None
    return mode, EchoPath(factory(), frame_ms)


def _webrtc_vad(mode: int = 2) -> Callable[[bytes], bool]:
    import webrtcvad
    vad = webrtcvad.Vad(mode)
    sub = RATE // 100 * 2

    def is_speech(pcm: bytes) -> bool:
        pieces = [pcm[i:i + sub] for i in range(0, len(pcm) - sub + 1, sub)]
        return sum(vad.is_speech(p, RATE) for p in pieces) * 2 >= len(pieces) > 0
    return is_speech


# --- measuring the room's echo path (soca-diag on a Pi) -----------------------------------

@dataclass(frozen=True)
class EchoPathReport:
    delay_ms: float           # echo behind the reference
    erl_db: float             # echo return loss: reference level minus echo level
    mic_peak_dbfs: float
    ok: bool
    message: str


def measure_echo_path(reference: np.ndarray, recorded: np.ndarray, rate: int = RATE,
                      max_delay_s: float = 1.0) -> EchoPathReport:
    """Delay (cross-correlation peak) and echo return loss of a played ``reference`` found
    in ``recorded`` (both mono int16 or float at ``rate``, recording started with playback).

    Not OK (a WARN for soca-diag) when the mic clips, the echo is more than 10 dB louder
    than what was played, the delay is beyond what AEC3 follows (about 490 ms), or no echo
    is found at all.
    """
    ref = np.asarray(reference, dtype=np.float64)
    rec = np.asarray(recorded, dtype=np.float64)
    peak = float(np.max(np.abs(rec))) if rec.size else 0.0
    peak_db = 20 * np.log10(peak / 32768.0) if peak > 0 else float("-inf")
    max_lag = min(int(max_delay_s * rate), max(0, len(rec) - 1))
    size = 1 << int(np.ceil(np.log2(len(ref) + len(rec) + 1)))
    corr = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(ref, size)), size)
    lag = int(np.argmax(np.abs(corr[:max_lag + 1])))
    aligned = rec[lag:lag + len(ref)]
    ref_part = ref[:len(aligned)]
    denom = float(np.sqrt(np.sum(ref_part ** 2) * np.sum(aligned ** 2)))
    coherence = abs(float(corr[lag])) / denom if denom > 0 else 0.0
    ref_db = 10 * np.log10(np.mean(ref_part ** 2) + 1e-12)
    echo_db = 10 * np.log10(np.mean(aligned ** 2) + 1e-12) if aligned.size else -120.0
    erl = float(ref_db - echo_db)
    delay_ms = 1000.0 * lag / rate
    if coherence < 0.1:
        ok, msg = False, "no echo of the chime found (speaker or mic not working?)"
    elif peak_db > -1.0:
        ok, msg = False, f"the mic clips on the speaker's sound (peak {peak_db:.1f} dBFS): turn the speaker down or move it away"
    elif erl < -10.0:
        ok, msg = False, f"echo {-erl:.1f} dB louder than played: speaker too loud or too close for voice barge-in"
    elif delay_ms > 450:
        ok, msg = False, f"echo delay {delay_ms:.0f} ms is beyond what the canceller follows"
    else:
        ok, msg = True, f"echo path {delay_ms:.0f} ms, return loss {erl:.1f} dB"
    return EchoPathReport(round(delay_ms, 1), round(erl, 1), round(float(peak_db), 1), ok, msg)
