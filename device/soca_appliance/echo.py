"""In-process acoustic echo cancellation: the agent's voice taken out of the microphone.

Owns the choice of canceller (WebRTC AEC3 through ``pywebrtc-audio``, behind
:class:`Canceller` so it can change), the tap on the mixer's output that is the far-end
reference, the ``duplex`` policy, :class:`EchoPath` (what the orchestrator calls on every
captured frame) and the echo-path measurement ``soca-diag`` uses. The pure parts (clock,
reference placement, noise floor, ducking, lag estimate) live in :mod:`.echo_reference`,
the following of a jumping echo path in :mod:`.echo_track`.

The reference is what SDL_mixer actually mixes (speech, the chime, silence, at the volume
it plays), taken buffer by buffer by a post-mix callback, so it always LEADS its echo by
the output's latency (AEC3 copes with the echo lagging by 20-490 ms, not with a late
reference) and a stop or barge cuts it by itself. Threads: SDL's audio thread hands the
buffers over (a bounded deque, nothing else), the capture thread does the rest; the
binding is not thread-safe and only that thread touches it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .echo_reference import (DUCK_GAIN, RATE, BurstGate, Ducker, MicClock,  # noqa: F401
                             NoiseFloor, ReferenceRing, ReferenceStream, estimate_lag,
                             frame_level, to_reference)
from .echo_record import EchoRecorder
from .echo_track import LagTracker
from .framing import Frame

log = logging.getLogger("soca.echo")

AEC_LATENCY = 128                 # samples the canceller's output lags its input (measured)
MAX_AHEAD = RATE * 15 // 100      # the reference never goes more than 150 ms ahead
MAX_MOVE = RATE * 3 // 10         # echo path jumps followed (beyond: AEC3's own re-learning)


# --- the bindings -----------------------------------------------------------------------

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


Probe = Callable[[], tuple[Optional[Callable[[], Canceller]], str]]


def load_canceller() -> tuple[Optional[Callable[[], Canceller]], str]:
    """(factory, "") when the canceller imports, else (None, why not)."""
    try:
        Canceller()
    except (ImportError, OSError, RuntimeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return Canceller, ""


_POSTMIX = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8), ctypes.c_int)


class MixerTap:
    """SDL_mixer's post-mix hook (``Mix_SetPostMix``, which pygame does not wrap): every
    buffer the mixer hands to the device, with the time it was mixed. Found in the
    SDL_mixer library pygame has loaded (its wheel bundles one; Debian's uses the system's)."""

    def __init__(self, max_buffers: int = 256) -> None:
        self.buffers: deque[tuple[float, bytes]] = deque(maxlen=max_buffers)
        self._callback = _POSTMIX(self._mixed)      # kept alive as long as the tap is
        self._lib: Optional[Any] = None

    def _mixed(self, _udata: Optional[int], stream: Any, length: int) -> None:
        # SDL's audio thread, audio lock held: copy and go.
        self.buffers.append((time.monotonic(), ctypes.string_at(stream, length)))

    def install(self) -> bool:
        lib = _sdl_mixer()
        if lib is None:
            log.warning("SDL_mixer not found: no echo reference, the canceller runs blind")
            return False
        lib.Mix_SetPostMix.argtypes = [_POSTMIX, ctypes.c_void_p]
        lib.Mix_SetPostMix.restype = None
        lib.Mix_SetPostMix(self._callback, None)
        self._lib = lib
        return True

    def remove(self) -> None:
        if self._lib is not None:
            self._lib.Mix_SetPostMix(ctypes.cast(None, _POSTMIX), None)
            self._lib = None


def _sdl_mixer() -> Optional[Any]:
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            paths = [line.split()[-1] for line in maps if "libSDL2_mixer" in line]
    except OSError:
        paths = []
    found = ctypes.util.find_library("SDL2_mixer-2.0") or ctypes.util.find_library("SDL2_mixer")
    for path in paths[:1] + ([found] if found else []):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


# --- the policy -------------------------------------------------------------------------

def resolve_duplex(duplex: str, probe: Probe = load_canceller) -> tuple[str, str]:
    """The policy in force for a configured ``duplex`` and the one log line that says so.

    ``auto``: ``aec`` when the canceller imports, otherwise ``half``. ``aec`` asked for
    explicitly and not available also falls back to ``half`` (never to an echoing
    ``full``), and says so.
    """
    if duplex in ("half", "full"):
        return duplex, f"duplex {duplex}: no echo canceller"
    factory, why = probe()
    if factory is not None:
        return "aec", (f"duplex {duplex}: echo cancellation on ({Canceller.name}); "
                       "voice barge-in enabled")
    return "half", (f"duplex {duplex}: echo canceller unavailable ({why}); half duplex, "
                    "the mic sends silence while the agent speaks (barge-in by the button)")


def attach(duplex: str, frame_ms: int = 20, probe: Probe = load_canceller
           ) -> tuple[str, Optional["EchoPath"]]:
    """For the orchestrator: the policy in force and, for ``aec``, the echo path. Logs the
    one line that says which policy runs and why."""
    mode, line = resolve_duplex(duplex, probe)
    (log.warning if duplex == "aec" and mode != "aec" else log.info)("%s", line)
    if mode != "aec":
        return mode, None
    factory, _ = probe()
    assert factory is not None
    return mode, EchoPath(factory(), frame_ms)


# --- the path ---------------------------------------------------------------------------

@dataclass
class EchoStats:
    frames: int = 0
    frames_with_reference: int = 0
    frames_bypassed: int = 0      # no echo about: the raw mic, untouched
    frames_warmup: int = 0        # the canceller still learning the room: silence sent
    buffers: int = 0              # mixer buffers taken as reference
    anchors: int = 0              # times the reference was (re)placed on the clock
    ducks: int = 0
    moves: int = 0                # the echo path jumped and the reference moved with it
    frames_held: int = 0          # comfort noise while the canceller settled after a move
    frames_gated: int = 0         # comfort noise for a burst of residual echo (BurstGate)


class EchoPath:
    """Mixer buffers in (SDL's thread), cleaned frames out (capture thread).

    The canceller runs on every frame; what goes up is its output while echo may be about
    (from the first sound in the reference until ``tail_s`` after the last), the raw mic
    otherwise, delayed by the canceller's own latency and crossfaded so switching does not
    click (the canceller's mandatory DC high-pass would otherwise colour a voice that has
    no echo to lose). Until ``warmup_s`` of sound has been heard the canceller has not
    learnt the room: those frames go up as the room's own noise floor (comfort noise), as
    half duplex's silence would, but not digital zeros: a far end's VAD adapts to its input's
    floor, and after seconds of zeros it takes the room's noise that follows for speech
    (measured through the room: 59 of the next 60 frames voiced after the warm-up's zeros,
    3 after comfort noise at the floor; the simulator barged on it 0.6 s later).

    When the echo path jumps (the output's latency changes), the lag tracker sees it and
    the reference moves by as much; the uplink then carries comfort noise for ``hold_s``
    while the agent plays (never while it is silent), and the ducking ignores those frames.
    """

    def __init__(self, canceller: Any, frame_ms: int = 20,
                 is_speech: Optional[Callable[[bytes], bool]] = None,
                 warmup_s: float = 3.0, tail_s: float = 1.0, ahead_s: float = 0.08,
                 hold_s: float = 0.5) -> None:
        self._aec = canceller
        self._clock = MicClock()
        self._ring = ReferenceRing()
        self._stream: Optional[ReferenceStream] = None
        self._tap: Optional[MixerTap] = None
        self._lock = threading.Lock()
        self._ducker = Ducker(frame_ms)
        self._is_speech = is_speech or _webrtc_vad()
        self.stats = EchoStats()
        self._pos = 0                 # mic samples seen
        self._warmup = int(warmup_s * RATE)
        self._heard = 0               # samples of sound in the reference so far
        self._tail = int(tail_s * RATE)
        self._since_ref = self._tail  # samples since the last sound in the reference
        self._delay = np.zeros(AEC_LATENCY, dtype=np.int16)
        self._mode = "raw"
        self._floor = NoiseFloor()
        self._bursts = BurstGate()
        self._track = LagTracker(frame=int(RATE * frame_ms / 1000))
        self._hold = 0
        self._hold_frames = int(round(hold_s * 1000 / frame_ms))
        self._suspect_frames = 2 * self._track.check_every
        self._ahead = int(ahead_s * RATE)
        self._moved = 0               # samples the lag tracker moved the reference, in all
        self._record = EchoRecorder.from_env(int(RATE * frame_ms / 1000))

    @property
    def converged(self) -> bool:
        return self._heard >= self._warmup

    # the player thread, once the mixer is open (again)
    def mixer_opened(self, rate: int, channels: int) -> None:
        with self._lock:
            self._stream = ReferenceStream(self._ring, rate, channels)
        if self._tap is None:
            self._tap = MixerTap()
        self._tap.buffers.clear()
        self._tap.install()

    def close(self) -> None:
        if self._tap is not None:
            self._tap.remove()
        if self._record is not None:
            self._record.close()

    # any thread (tests and the bench feed buffers directly)
    def mixed(self, pcm: bytes, t: float) -> None:
        """A buffer the mixer mixed at ``t``. It is placed ``ahead`` of the mic's sample at
        ``t``: the canceller only meets it when the next mic frame comes (up to a frame
        later), and a reference behind the reader is lost; the echo itself comes an output
        latency later still, so the reference keeps its lead. The lead (80 ms) covers the
        buffers' lateness measured through the room (up to 31 ms: soxr hands its output
        over in lumps, the GIL delays the tap); each buffer that still lands behind the
        reader moves the reference 10 ms later for good, and AEC3 takes seconds to re-learn
        such a jump (measured: 33 -> 13 dB), so it must not happen mid-speech."""
        with self._lock:
            if self._stream is None:
                return
            late, settled_before = self._ring.late, self._stream.settled
            # Where the clock puts it, plus every move made with the echo: the stream
            # follows the clock, and would otherwise walk a move back 6 samples a window.
            self._stream.push(pcm, self._clock.index_at(t) + self._ahead + self._moved)
            if self._ring.late > late and self._ahead < MAX_AHEAD:
                self._ahead += RATE // 100                  # 10 ms more, for good
                self._stream.shift(RATE // 100)
            self.stats.buffers += 1
            self.stats.anchors = self._stream.anchors
            settled = self._stream.settled - settled_before
        if settled:
            # The stream's first placement settled (it was made before the mic's clock was
            # sure): the reference moved and the echo did not, so the lag the tracker knows
            # changed by as much. Taken for a jump of the echo path it was moved straight
            # back, and the stream then crept after its place for a minute (the synthetic
            # bench: false speech 0.4 -> 4.8 % of frames). (A stall moves both: not this.)
            self._track.moved(int(round(settled)))

    # the capture thread
    def process(self, frame: Frame, agent_playing: bool) -> tuple[Frame, Optional[float]]:
        """The frame to send up, and the agent's new volume when ducking changes it."""
        near = np.frombuffer(frame.pcm, dtype="<i2").astype(np.int16)
        n = len(near)
        start = self._pos
        self._pos += n
        with self._lock:
            self._clock.observe(self._pos, frame.t_capture)
        if self._tap is not None:
            while self._tap.buffers:
                t, pcm = self._tap.buffers.popleft()
                self.mixed(pcm, t)
        with self._lock:
            far = self._ring.read(start, n)
        self.stats.frames += 1
        clean = self._aec.process(near, far)
        raw = np.concatenate([self._delay, near])
        self._delay = raw[n:]
        sound = np.flatnonzero(np.abs(far) > 8)
        if sound.size:
            self.stats.frames_with_reference += 1
            self._heard += sound.size
            self._since_ref = n - 1 - int(sound[-1])
        else:
            self._since_ref += n
        moved = self._track.update(near, far, clean, bool(sound.size))
        if moved and abs(moved) <= MAX_MOVE:
            self._follow(moved)
        elif self._track.suspect:
            self._hold = max(self._hold, self._suspect_frames)   # while it asks again
        if self._since_ref >= self._tail:
            mode, self.stats.frames_bypassed = "raw", self.stats.frames_bypassed + 1
        elif self._hold > 0 and agent_playing:
            mode, self.stats.frames_held = "mute", self.stats.frames_held + 1
        elif not self.converged:
            mode, self.stats.frames_warmup = "mute", self.stats.frames_warmup + 1
        else:
            mode = "clean"
        if not sound.size:
            self._floor.observe(near)
        paths = {"raw": raw[:n].astype(np.float32), "clean": clean.astype(np.float32)}
        if mode == "mute" or self._mode == "mute":
            paths["mute"] = self._floor.comfort(n)
        out = paths[mode]
        if mode != self._mode:
            # A 20 ms crossfade: the canceller's high-pass shifts a voice's low end in
            # phase, and a hard switch there would click.
            fade = np.linspace(0.0, 1.0, n, dtype=np.float32)
            out = out * fade + paths[self._mode] * (1.0 - fade)
            self._mode = mode
        pcm = _pcm(out)
        held, self._hold = self._hold > 0, max(0, self._hold - 1)
        voiced = not held and self._is_speech(pcm)
        # Every frame counts for the run (a voice that goes on as the agent starts is not
        # cut); only the canceller's output is gated. One VAD sees every frame, so that it
        # meets no sound it has not heard begin.
        gated = self._bursts.update(frame_level(out), self._floor.rms, voiced, mode == "clean")
        if gated:
            pcm = _pcm(self._floor.comfort(n))
            self.stats.frames_gated = self._bursts.gated
        volume = self._ducker.update(voiced, agent_playing)
        self.stats.ducks = self._ducker.ducks
        if self._record is not None:
            self._record.write(frame.t_capture, frame.index, mode, voiced, volume, gated,
                               near, far, clean, pcm)
        return Frame(pcm, frame.t_capture, frame.index), volume

    def _follow(self, moved: int) -> None:
        """The echo now comes ``moved`` samples later (or sooner): move the reference by as
        much, so the canceller keeps the lag it learnt, and hold the uplink's residual
        echo (comfort noise while the agent plays) for ``hold_s`` while it settles."""
        with self._lock:
            self._ring.move(moved, self._track.far_tail(moved))
            if self._stream is not None:
                self._stream.shift(moved)
            self._moved += moved
        self._track.moved(moved)
        self._hold = self._hold_frames
        self.stats.moves += 1
        log.info("echo path %+.0f ms: reference moved with it", 1000.0 * moved / RATE)


def _pcm(x: np.ndarray) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


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
    """Delay and echo return loss of a played ``reference`` found in ``recorded`` (both
    mono int16 or float at ``rate``, the recording started no later than playback).

    Not OK (a WARN for soca-diag) when no echo is found, the mic clips, the echo is more
    than 10 dB louder than what was played, or the delay is beyond what AEC3 follows.
    """
    ref = np.asarray(reference, dtype=np.float64)
    rec = np.asarray(recorded, dtype=np.float64)
    peak = float(np.max(np.abs(rec))) if rec.size else 0.0
    peak_db = 20 * np.log10(peak / 32768.0) if peak > 0 else float("-inf")
    span = min(len(rec), len(ref) + int(max_delay_s * rate))
    padded = np.concatenate([ref, np.zeros(max(0, span - len(ref)))])[:span]
    lag, coherence = estimate_lag(rec[:span], padded, 0, int(max_delay_s * rate),
                                  rate, candidates=5)
    aligned = rec[lag:lag + len(ref)]
    ref_part = ref[:len(aligned)]
    ref_db = 10 * np.log10(np.mean(ref_part ** 2) + 1e-12) if ref_part.size else -120.0
    echo_db = 10 * np.log10(np.mean(aligned ** 2) + 1e-12) if aligned.size else -120.0
    erl = float(ref_db - echo_db)
    delay_ms = 1000.0 * lag / rate
    # Clipping first: a clipped echo is no longer the chime's shape, so it can also read as
    # "no echo found" (the loud room of tests/test_echo_diag.py did, 1 run in 3).
    if peak_db > -1.0:
        ok, msg = False, (f"the mic clips while the chime plays (peak {peak_db:.1f} dBFS): "
                          "turn the speaker down or move it away")
    elif coherence < 0.1:
        ok, msg = False, "no echo of the chime found (speaker or mic not working?)"
    elif erl < -10.0:
        ok, msg = False, (f"echo {-erl:.1f} dB louder than played: speaker too loud or too "
                          "close for voice barge-in")
    elif delay_ms > 450:
        ok, msg = False, f"echo delay {delay_ms:.0f} ms is beyond what the canceller follows"
    else:
        ok, msg = True, f"echo path {delay_ms:.0f} ms, return loss {erl:.1f} dB"
    return EchoPathReport(round(delay_ms, 1), round(erl, 1), round(float(peak_db), 1), ok, msg)
