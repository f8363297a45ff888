"""The echo canceller's pure parts: the mic's sample clock, the far-end reference placed on
it, the mic's noise floor, the ducking decision and the lag estimate. No devices, no
threads, no binding.

The reference is the mixer's own output (every buffer SDL_mixer mixes, silence included,
taken by a post-mix tap), resampled to 16 kHz and laid end to end on the mic's sample
clock from where the first buffer was mixed. Laid end to end, it keeps one lag to its echo
for as long as the mixer runs: pieces placed one by one by the clock instead land up to a
mixer buffer off each time a sentence starts afresh (SDL starts a sound at its next buffer),
and AEC3 re-learns every such jump while residual echo passes as speech (measured). The
buffers' own mixing times only steer the stream when they disagree with it for a while: a
little for a drifting clock, all at once when the mixer restarted.
"""
from __future__ import annotations

from collections import deque
from typing import Optional

import numpy as np
import soxr

RATE = 16000                      # the canceller, the reference and the uplink
DUCK_GAIN = 10 ** (-12 / 20)      # -12 dB


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
        """The mic sample being captured at ``t`` (best estimate)."""
        if not self.ready:
            return self.end
        return int(round((t - self.offset()) * self.rate))


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
    overlap freely; reads return silence where nothing plays."""

    def __init__(self, max_segments: int = 256) -> None:
        self._segments: deque[tuple[int, np.ndarray]] = deque(maxlen=max_segments)
        self.written = 0              # samples written, for reports and tests
        self.late = 0                 # samples written behind the read position (lost)
        self._read = 0

    def tail(self) -> int:
        """Index just after the last sample of the last segment (0 when empty)."""
        return max((start + len(seg) for start, seg in self._segments), default=0)

    def write(self, start: int, samples: np.ndarray) -> int:
        """Put ``samples`` at ``start`` (never behind the reader). Returns where."""
        if start < self._read:                   # the mic is past it already
            skip = min(len(samples), self._read - start)
            self.late += skip
            samples, start = samples[skip:], start + skip
        if len(samples):
            self._segments.append((start, np.asarray(samples, dtype=np.float32).copy()))
            self.written += len(samples)
        return start

    def move(self, d: int, replay: np.ndarray) -> None:
        """From the reader on, the reference plays ``d`` samples later (``d`` > 0: first
        ``replay``, the last ``d`` samples read, again) or ``-d`` earlier (``d`` < 0: the
        next ``-d`` unread samples are skipped)."""
        moved: list[tuple[int, np.ndarray]] = []
        if d > 0 and len(replay):
            moved.append((self._read, np.asarray(replay[-d:], dtype=np.float32)))
        for s, seg in self._segments:
            if s < self._read:                      # keep only what is still to be read
                seg, s = seg[self._read - s:], self._read
            s += d
            if s < self._read:                      # moved earlier, behind the reader
                seg, s = seg[self._read - s:], self._read
            if len(seg):
                moved.append((s, seg))
        self._segments = deque(moved, maxlen=self._segments.maxlen)

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


class ReferenceStream:
    """The mixer's output, buffer by buffer, laid end to end on the mic's sample clock."""

    def __init__(self, ring: ReferenceRing, rate: int, channels: int,
                 reanchor_s: float = 0.03, window_s: float = 1.5) -> None:
        self.ring = ring
        self.rate, self.channels = rate, channels
        # One stream for the mixer's life: its output is aligned with its input (soxr
        # takes its own delay out), so output sample j belongs at anchor + j.
        self._resampler = (soxr.ResampleStream(rate, RATE, 1, dtype="float32")
                           if rate != RATE else None)
        self._anchor: Optional[float] = None    # mic index of the mixer's first sample
        self._in = 0                            # mixer samples taken
        self._out = 0                           # reference samples written
        # Clock's place minus ours, over windows of ``window_s`` of the mixer's output (not
        # a count of buffers: 64 buffers of 2048 samples were 6 s, and the first placement
        # then settled in steps well into the agent's first answer).
        self._ahead: deque[float] = deque(maxlen=4096)
        self._window = int(window_s * rate)
        self._window_in = 0
        self.reanchor = reanchor_s * RATE
        self.creep = 6.0               # 0.025 % of drift followed smoothly
        self._windows = 0
        self.anchors = 0
        self.settled = 0.0             # what the first windows moved the first guess by

    def shift(self, samples: int) -> None:
        if self._anchor is not None:
            self._anchor += samples

    def push(self, pcm: bytes, mixed_at_index: int) -> None:
        """One mixed buffer; ``mixed_at_index``: the mic index when it was mixed."""
        samples = np.frombuffer(pcm[:len(pcm) - len(pcm) % (2 * self.channels)], dtype="<i2")
        audio = samples.astype(np.float32)
        if self.channels > 1:
            audio = audio.reshape(-1, self.channels).mean(axis=1)
        if self._anchor is None:
            self._anchor = float(mixed_at_index)
            self.anchors += 1
        # Every window: follow the clock by the least difference (a buffer mixed late by
        # the GIL or the scheduler says so), a few samples at a time (a drifting output
        # clock; AEC3 takes that in its stride, not jumps).
        self._ahead.append(mixed_at_index - (self._anchor + self._in * RATE / self.rate))
        self._window_in += len(audio)
        if self._window_in >= self._window:
            self._window_in = 0
            least = min(self._ahead)
            self._windows += 1
            if least > self.reanchor or (least > 0 and self._windows <= 3):
                # (The first windows settle the first guess, made perhaps before the mic's
                # clock had seen a frame: the canceller is still learning then anyway.)
                # Mixed that much later than it should have been, for a whole window: the
                # mixer stalled and the speaker paused with it (an underrun).
                self._anchor += least
                if self._windows <= 3:
                    self.settled += least
                self.anchors += least > self.reanchor
            else:       # a drifting clock, a few samples a window: never a jump. (Buffers
                # mixed early are the output filling a bigger buffer: not a change in
                # when they play.)
                self._anchor += max(-self.creep, min(self.creep, least))
            self._ahead.clear()
        self._in += len(audio)
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio)
        if len(audio):
            self.ring.write(int(round(self._anchor)) + self._out, audio)
            self._out += len(audio)


def frame_level(x: np.ndarray) -> float:
    """RMS of a float frame (full scale 32768)."""
    return float(np.sqrt(np.dot(x, x) / max(1, len(x))))


class NoiseFloor:
    """The mic's noise floor and comfort noise at it. Fed frames with nothing in the
    reference; the floor is the least, over the last ``blocks`` blocks of ``block`` frames,
    of a block's 20th-percentile frame level. Digital silence before the first sound (a
    stream starting) is not the room's floor and is left out; after it, it is: a source
    whose pauses are digital zeros (a WAV file, the demo's mic) has a floor of zero, and
    the warm-up then sends zeros too, not noise at a speech frame's level."""

    def __init__(self, block: int = 50, blocks: int = 10, seed: int = 0) -> None:
        self._started = False
        self._block = block
        self._levels: list[float] = []
        self._floors: deque[float] = deque(maxlen=blocks)
        self._rng = np.random.default_rng(seed)

    def observe(self, frame: np.ndarray) -> None:
        level = frame_level(frame.astype(np.float32))
        if level < 1.0 and not self._started:
            return
        self._started = True
        self._levels.append(level)
        if len(self._levels) >= self._block:
            self._floors.append(float(np.percentile(self._levels, 20)))
            self._levels.clear()

    @property
    def rms(self) -> float:
        """The floor's RMS (full scale 32768); 0 before a block has been seen."""
        if self._floors:
            return min(self._floors)
        return float(np.percentile(self._levels, 20)) if self._levels else 0.0

    def comfort(self, n: int) -> np.ndarray:
        """``n`` samples of white noise at the floor (float32)."""
        return (self._rng.standard_normal(n) * self.rms).astype(np.float32)


class BurstGate:
    """Short bursts of residual echo out of the uplink while the agent plays.

    AEC3 leaves, now and then, a burst of a few frames 6-13 dB over the room's floor (at
    word onsets of the agent's speech: the speaker's clipping is what its linear filter
    cannot follow); webrtcvad calls the burst, and by its own hangover the frames after
    it, voiced, and two bursts within half a second make an "utterance" that the far end
    transcribes and answers (through the room rig: 14 in 15 runs of the button-barge
    scene). Speech goes on longer, or starts louder, so the first ``hold`` frames of a run
    that stands out of the floor go up as comfort noise, and a run that goes on (or one
    frame louder than any burst) opens the gate until the voice has stopped. Pure: one
    verdict per frame.
    """

    def __init__(self, hold: int = 3, release: int = 25, voiced_db: float = 3.0,
                 loud_db: float = 12.0, strong_db: float = 18.0) -> None:
        self.hold = hold
        self.release = release
        self._voiced = 10 ** (voiced_db / 20)
        self._loud = 10 ** (loud_db / 20)
        self._strong = 10 ** (strong_db / 20)
        self._run = 0
        self._open = 0          # frames the gate stays open: a voice that proved itself
        self.gated = 0

    def update(self, level: float, floor: float, voiced: bool, may_gate: bool) -> bool:
        """One frame, whatever goes up (the run of a voice that began before the agent
        did is counted, so it is never cut); True: replace it by comfort noise.

        A frame stands out when a VAD calls it voiced and it is ``voiced_db`` over the
        floor (residue 6 dB over it can be voiced), or it is ``loud_db`` over; a steady
        sound that is the floor (a fan, a hum) never does. A run longer than ``hold``, or
        one frame ``strong_db`` over the floor (louder than any burst measured: 13 dB),
        opens the gate until ``release`` frames after the voice's last frame that stood
        out: the dips between syllables (deeper while AEC3 suppresses in double talk)
        must not make each syllable a new run to cut."""
        stands_out = level > floor * (self._voiced if voiced else self._loud)
        self._run = self._run + 1 if stands_out else 0
        if self._run > self.hold or level > floor * self._strong or (self._open and stands_out):
            self._open = self.release
        elif self._open:
            self._open -= 1
        if may_gate and not self._open and self._run:
            self.gated += 1
            return True
        return False


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


def gcc_phat(near: np.ndarray, far: np.ndarray, rate: int = RATE
             ) -> tuple[int, np.ndarray, np.ndarray]:
    """(FFT size, cross-spectrum of ``near`` against ``far``, its phase transform back in
    time): ``sharp[k]`` peaks where ``near[i]`` matches ``far[i - k]`` (indices modulo the
    size), in the speech band only."""
    size = 1 << int(np.ceil(np.log2(len(near) + len(far))))
    cross = np.fft.rfft(near, size) * np.conj(np.fft.rfft(far, size))
    freqs = np.fft.rfftfreq(size, 1.0 / rate)
    band = (freqs > 150.0) & (freqs < min(7000.0, 0.45 * rate))
    mag = np.abs(cross)
    phat = np.where(band, cross / np.maximum(mag, 1e-9 * (mag.max() or 1.0)), 0.0)
    return size, cross, np.fft.irfft(phat, size)


def estimate_lag(near: np.ndarray, far: np.ndarray, lo: int, hi: int,
                 rate: int = RATE, candidates: int = 1) -> tuple[int, float]:
    """The lag L in [lo, hi] at which ``near[i]`` best matches ``far[i - L]`` (both arrays
    cover the same sample indices), and the normalised correlation there (0..1).

    The peak is found on the phase transform of the cross-spectrum (GCC-PHAT, in the
    speech band): plain correlation of speech through a band-limited speaker peaks too
    broadly to tell a delay to the millisecond. With ``candidates`` > 1 the strongest
    peaks (at least 1 ms apart, within half the top one's height) are weighed by plain
    correlation and the best is taken: for a tonal sound such as the chime, PHAT's equal
    weighting of every frequency can put a faint high-band reflection a hair above the
    path that carries the energy (seen: 0.089 against 0.085, plain correlation 0.16
    against 0.72), and the lag tracker's speech never needs it.
    """
    x = np.asarray(near, dtype=np.float64)
    y = np.asarray(far, dtype=np.float64)
    size, cross, sharp = gcc_phat(x, y, rate)
    plain = np.fft.irfft(cross, size)
    lo, hi = max(0, lo), max(lo, min(hi, len(x) - 1))
    window = sharp[lo:hi + 1]
    if not len(window):
        return lo, 0.0

    def score(lag: int) -> float:
        e_far = float(np.sum(y[:len(y) - lag] ** 2))
        e_near = float(np.sum(x[lag:] ** 2))
        return (abs(float(plain[lag])) / np.sqrt(e_far * e_near)
                if e_far > 0 and e_near > 0 else 0.0)

    best = lo + int(np.argmax(window))
    if candidates <= 1:
        return best, score(best)
    picked: list[int] = []
    apart = max(1, rate // 1000)
    for i in np.argsort(window)[::-1]:
        lag = lo + int(i)
        if window[i] < 0.5 * sharp[best] or len(picked) >= candidates:
            break
        if all(abs(lag - other) >= apart for other in picked):
            picked.append(lag)
    scored = [(score(lag), lag) for lag in picked]
    top, lag = max(scored)
    return lag, top
