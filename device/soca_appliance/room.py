"""A simulated room for the echo tests and the bench: a speaker, air and a microphone.

Owns the room's signal chain: its acoustics (pure numpy: a speaker's band-limit and soft
clipping, a delay, a reverberant impulse response, near-end voice and noise, streamed
block by block) and the room process that runs them between two PulseAudio null sinks
(``python -m soca_appliance.room``): it reads the speaker's monitor, applies the room,
adds the voice it is told to say (commands on stdin) and plays the sum into the mic sink.
It reports on stdout, in its own sample clock, when each utterance started and when the
speaker went quiet, so a barge's latency is measured on one clock; each such line also
carries time.monotonic() of that block (read from the speaker's monitor, the mic's block
written at once), so that a latency can be split with the other processes' clocks. The
daemon, its sinks and the handle on the room process are :mod:`.room_rig`. Never used by
the appliance.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

RATE = 16000
BLOCK = 320                       # 20 ms


# --- acoustics ------------------------------------------------------------------------------

def bandpass_fir(low: float, high: float, taps: int = 255, rate: int = RATE) -> np.ndarray:
    """A windowed-sinc band-pass: a small speaker has no bass and little top."""
    n = np.arange(taps) - (taps - 1) / 2

    def lowpass(fc: float) -> np.ndarray:
        return 2 * fc / rate * np.sinc(2 * fc / rate * n)
    h = (lowpass(high) - lowpass(low)) * np.hamming(taps)
    return h.astype(np.float64)


def reverb_ir(rt60: float = 0.3, delay_ms: float = 40.0, drr_db: float = 0.0,
              rate: int = RATE, seed: int = 7) -> np.ndarray:
    """A direct path after ``delay_ms`` and an exponentially decaying diffuse tail whose
    energy is ``drr_db`` below the direct path's (direct-to-reverberant ratio: a mic a few
    centimetres from the speaker hears mostly the direct sound)."""
    rng = np.random.default_rng(seed)
    d = int(rate * delay_ms / 1000)
    length = int(rate * rt60)
    t = np.arange(length) / rate
    tail = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)
    tail[:int(0.003 * rate)] = 0.0                 # first reflections a few ms later
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail ** 2))
    h = np.zeros(d + length)
    h[d] = 1.0
    h[d:] += tail
    return h / np.sqrt(np.sum(h ** 2))


def soft_clip(x: np.ndarray, knee: float = 0.5) -> np.ndarray:
    """A speaker driven hard: linear below ``knee`` of full scale, tanh above."""
    y = x / 32768.0
    over = np.abs(y) > knee
    y[over] = np.sign(y[over]) * (knee + (1 - knee) * np.tanh((np.abs(y[over]) - knee)
                                                               / (1 - knee)))
    return y * 32768.0


class StreamConvolver:
    """Block-wise overlap-add FFT convolution, so a stream is filtered without seams."""

    def __init__(self, h: np.ndarray, block: int = BLOCK) -> None:
        self.h = np.asarray(h, dtype=np.float64)
        self.block = block
        self.size = 1 << int(np.ceil(np.log2(block + len(h) - 1)))
        self.H = np.fft.rfft(self.h, self.size)
        self.tail = np.zeros(self.size)

    def process(self, x: np.ndarray) -> np.ndarray:
        if len(x) > self.block:
            return np.concatenate([self._process(x[i:i + self.block])
                                   for i in range(0, len(x), self.block)])
        return self._process(x)

    def _process(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        y = np.fft.irfft(np.fft.rfft(x, self.size) * self.H, self.size)
        y[:self.size] += self.tail
        out = y[:n].copy()
        self.tail = np.concatenate([y[n:], np.zeros(n)])
        return out


@dataclass
class RoomSettings:
    echo_gain: float = 1.0         # linear gain from speaker PCM to mic
    delay_ms: float = 40.0
    rt60: float = 0.3
    drr_db: float = 0.0            # direct-to-reverberant energy ratio
    noise_dbfs: float = -65.0
    band: tuple[float, float] = (200.0, 6000.0)
    clip_knee: float = 0.5
    drift: float = 0.0             # mic clock faster by this fraction (0.0001 = 0.01 %)


class Room:
    """Speaker PCM in, mic PCM out, block by block (float, full scale 32768)."""

    def __init__(self, settings: RoomSettings, seed: int = 3) -> None:
        self.s = settings
        self._band = StreamConvolver(bandpass_fir(*settings.band))
        self._air = StreamConvolver(reverb_ir(settings.rt60, settings.delay_ms, settings.drr_db))
        self._rng = np.random.default_rng(seed)
        self._noise = 32768.0 * 10 ** (settings.noise_dbfs / 20)
        self._phase = 0.0
        self._carry = np.zeros(0)

    @property
    def latency_ms(self) -> float:
        """Speaker to mic: the air's delay plus the band-limit filter's group delay."""
        return self.s.delay_ms + 1000.0 * (len(self._band.h) - 1) / 2 / RATE

    def echo(self, speaker: np.ndarray) -> np.ndarray:
        x = self._band.process(np.asarray(speaker, dtype=np.float64))
        x = soft_clip(x, self.s.clip_knee)
        return self._air.process(x) * self.s.echo_gain

    def mic(self, speaker: np.ndarray, near: Optional[np.ndarray] = None) -> np.ndarray:
        y = self.echo(speaker) + self._rng.standard_normal(len(speaker)) * self._noise
        if near is not None:
            y[:len(near)] += near
        return self._resample_drift(y)

    def _resample_drift(self, y: np.ndarray) -> np.ndarray:
        """A mic clock ``drift`` faster: linear interpolation at a slightly longer step."""
        if not self.s.drift:
            return y
        buf = np.concatenate([self._carry, y])
        step = 1.0 + self.s.drift
        pos = self._phase + np.arange(len(y)) * step
        pos = pos[pos < len(buf) - 1]
        out = np.interp(pos, np.arange(len(buf)), buf)
        nxt = pos[-1] + step if len(pos) else self._phase
        keep = int(nxt)
        self._carry, self._phase = buf[keep:], nxt - keep
        out = np.concatenate([out, np.full(len(y) - len(out), out[-1] if len(out) else 0.0)]) \
            if len(out) < len(y) else out
        return out


def level_for(voice: np.ndarray, echo_over_voice_db: float, speaker: np.ndarray,
              settings: RoomSettings) -> float:
    """The echo gain that makes the echo of ``speaker`` that many dB louder than ``voice``."""
    probe = Room(RoomSettings(**{**settings.__dict__, "echo_gain": 1.0, "noise_dbfs": -200}))
    e = probe.echo(speaker)
    active = lambda x: np.sqrt(np.mean(x[np.abs(x) > 0.05 * np.max(np.abs(x))] ** 2))  # noqa: E731
    return float(active(voice) / active(e) * 10 ** (echo_over_voice_db / 20))


# --- the room process -------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m soca_appliance.room")
    p.add_argument("--echo-gain", type=float, default=1.0)
    p.add_argument("--delay-ms", type=float, default=40.0)
    p.add_argument("--rt60", type=float, default=0.3)
    p.add_argument("--noise-dbfs", type=float, default=-65.0)
    p.add_argument("--drift", type=float, default=0.0)
    p.add_argument("--latency-ms", type=int, default=60)
    a = p.parse_args(argv)
    room = Room(RoomSettings(echo_gain=a.echo_gain, delay_ms=a.delay_ms, rt60=a.rt60,
                             noise_dbfs=a.noise_dbfs, drift=a.drift))
    fmt = ["--raw", "--format=s16le", f"--rate={RATE}", "--channels=1",
           f"--latency-msec={a.latency_ms}"]
    rec = subprocess.Popen(["parec", "-d", "speaker.monitor", *fmt], stdout=subprocess.PIPE)
    play = subprocess.Popen(["pacat", "--playback", "-d", "mic", *fmt], stdin=subprocess.PIPE)
    assert rec.stdout is not None and play.stdin is not None
    pending: list[tuple[int, np.ndarray]] = []
    delays: list[tuple[int, int]] = []
    lag_line = np.zeros(0)             # the speaker's extra delay (see "delay")
    lock = threading.Lock()
    stop = threading.Event()

    def commands() -> None:
        for line in sys.stdin:
            parts = line.split(maxsplit=3)
            if len(parts) == 4 and parts[0] == "say":
                voice = np.fromfile(parts[3].strip(), dtype="<i2").astype(np.float64)
                with lock:
                    pending.append((int(parts[1]), voice * float(parts[2])))
            elif len(parts) == 3 and parts[0] == "delay":
                with lock:
                    delays.append((int(parts[1]), int(round(float(parts[2]) * RATE / 1000))))
        stop.set()

    threading.Thread(target=commands, daemon=True).start()
    playing: list[np.ndarray] = []
    sample = 0
    loud = False
    quiet_run = 0
    read_at: deque[float] = deque(maxlen=3)     # time.monotonic() of the last blocks read
    try:
        while not stop.is_set():
            data = rec.stdout.read(BLOCK * 2)
            if not data or len(data) < BLOCK * 2:
                break
            read_at.append(time.monotonic())
            speaker = np.frombuffer(data, dtype="<i2").astype(np.float64)
            if sample == 0:
                print("running", flush=True)
            with lock:
                for n, voice in pending:
                    playing.append(voice)
                    print(f"said {n} {sample / RATE:.4f} {read_at[-1]:.4f}", flush=True)
                pending.clear()
                for n, extra in delays:
                    lag_line = np.concatenate([lag_line, np.zeros(extra)])
                    print(f"said {n} {sample / RATE:.4f} {read_at[-1]:.4f}", flush=True)
                delays.clear()
            if len(lag_line):
                lag_line = np.concatenate([lag_line, speaker])
                heard, lag_line = lag_line[:BLOCK], lag_line[BLOCK:]
            else:
                heard = speaker
            near = np.zeros(BLOCK)
            rest = []
            for voice in playing:
                near[:min(BLOCK, len(voice))] += voice[:BLOCK]
                if len(voice) > BLOCK:
                    rest.append(voice[BLOCK:])
            playing = rest
            out = room.mic(heard, near)
            play.stdin.write(np.clip(np.rint(out), -32768, 32767).astype("<i2").tobytes())
            # The speaker counts as quiet after 60 ms under -60 dBFS (one clock with "said").
            level = float(np.sqrt(np.mean(speaker ** 2)))
            if level > 32.0:
                if not loud:
                    print(f"loud {sample / RATE:.4f}", flush=True)
                loud, quiet_run = True, 0
            elif loud:
                quiet_run += 1
                if quiet_run == 3:
                    loud = False
                    print(f"quiet {(sample - 2 * BLOCK) / RATE:.4f} {read_at[0]:.4f}",
                          flush=True)
            sample += BLOCK
            if sample % RATE == 0:
                print(f"t {sample / RATE:.4f}", flush=True)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        rec.terminate()
        try:
            play.stdin.close()
        except OSError:
            pass
        play.terminate()
        rec.wait(3)
        play.wait(3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
