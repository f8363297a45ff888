"""Check: the room's echo path (``echo.path``): the chime played on the speaker while the mic
records, then :func:`~soca_appliance.echo.measure_echo_path` finds the delay and the echo
return loss and says when the echo is too strong for voice barge-in.

It makes a sound, so it runs on a Raspberry Pi (the kiosk it is for) or when asked
(``soca-diag --echo-test``); elsewhere it is a SKIP. A missing mic or speaker is a SKIP
with the reason (the ``mic.*`` and ``speaker`` checks FAIL on those already).
"""
from __future__ import annotations

import contextlib
import io
import os
import threading
import time
import wave
from importlib import resources
from typing import Any

from .context import Context
from .result import Result, describe, passed, skipped, warned, with_timeout
from .system import MODEL_PATH, _read_model

LEAD_S = 0.3            # recorded before the chime starts: the mic's stream has settled
TAIL_S = 1.0            # recorded after it ends: the echo's delay and reverberation
RATE = 16000


def wanted(ctx: Context) -> tuple[bool, str]:
    """Whether to play the chime now, and why not."""
    if getattr(ctx.args, "echo_test", False):
        return True, ""
    if _read_model(MODEL_PATH).startswith("Raspberry Pi"):
        return True, ""
    return False, "not a Raspberry Pi: soca-diag --echo-test measures the echo path here too"


def chime_16k() -> tuple[bytes, Any]:
    """The bundled chime's WAV bytes and its samples at 16 kHz mono (float)."""
    import numpy as np
    import soxr
    data = resources.files("soca_appliance").joinpath("assets", "chime.wav").read_bytes()
    with wave.open(io.BytesIO(data), "rb") as w:
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32)
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1)
    return data, soxr.resample(pcm, rate, RATE).astype(np.float64)


class _Recorder:
    """The configured mic read on a thread through the appliance's own Converter, 16 kHz."""

    def __init__(self, ctx: Context) -> None:
        from ..framing import Converter
        from ..quiet import quiet
        device, rate, channels = ctx.mic()
        self.block = max(1, rate // 50)
        self.converter = Converter(rate, channels, ctx.cfg.mic_gain)
        with quiet():
            self.stream = ctx.pa.open(format=8, channels=channels, rate=rate, input=True,
                                      input_device_index=device.index,
                                      frames_per_buffer=self.block)
        self.out = bytearray()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="soca-diag-echo", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                data = self.stream.read(self.block, exception_on_overflow=False)
                pcm = self.converter.convert(data)
                with self.lock:
                    self.out += pcm
        except Exception as exc:  # noqa: BLE001 - reported by the check
            self.error = exc

    def samples(self) -> int:
        with self.lock:
            return len(self.out) // 2

    def wait_samples(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.samples() < count:
            if self.error is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> bytes:
        self.stop.set()
        self.thread.join(2.0)
        if not self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.stream.close()
        with self.lock:
            return bytes(self.out)


def play_and_record(ctx: Context) -> tuple[Any, Any]:
    """The chime (16 kHz) and what the mic heard from the moment it started playing."""
    import numpy as np
    import pygame
    from ..quiet import quiet
    wav, reference = chime_16k()
    recorder = _Recorder(ctx)
    try:
        if not recorder.wait_samples(int(LEAD_S * RATE), LEAD_S + 3.0):
            raise TimeoutError(f"the microphone delivered no audio "
                               f"({describe(recorder.error) if recorder.error else 'no data'})")
        with quiet():
            pygame.mixer.init(frequency=22050, size=-16, channels=1, buffer=ctx.cfg.mixer_buffer)
        try:
            sound = pygame.mixer.Sound(file=io.BytesIO(wav))
            start = recorder.samples()
            channel = sound.play()
            if channel is None:
                raise RuntimeError("the mixer had no free channel to play the chime")
            need = start + len(reference) + int(TAIL_S * RATE)
            if not recorder.wait_samples(need, len(reference) / RATE + TAIL_S + 3.0):
                raise TimeoutError("the microphone stopped delivering audio")
        finally:
            with contextlib.suppress(Exception):
                pygame.mixer.quit()
    finally:
        pcm = recorder.close()
    heard = np.frombuffer(pcm, dtype="<i2").astype(np.float64)[start:]
    return reference, heard


def check_echo_path(ctx: Context) -> Result:
    name = "echo.path"
    run, why = wanted(ctx)
    if not run:
        return skipped(name, why)
    if ctx.cfg.input:
        return skipped(name, f"input = {ctx.cfg.input}: no microphone in use")
    try:
        ctx.mic()
    except Exception as exc:  # noqa: BLE001
        return skipped(name, f"no microphone ({exc})", "plug the USB mic in (see mic.device)")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
        if not pygame.mixer:
            raise ImportError(str(getattr(pygame.mixer, "reason", "") or "no mixer"))
    except (ImportError, NotImplementedError) as exc:
        return skipped(name, f"no speaker: pygame's mixer is not available ({exc})",
                       "see the speaker check")
    if ctx.interactive:
        ctx.say("soca-diag: playing the chime while recording, to measure the echo path...")
    try:
        reference, heard = with_timeout(lambda: play_and_record(ctx), 15.0,
                                        "the echo test did not finish")
    except pygame.error as exc:
        return skipped(name, f"no speaker: audio output failed to open ({exc})",
                       "see the speaker check")
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, TimeoutError):
            ctx.pa_stuck = True
        return warned(name, f"echo test failed: {describe(exc)}",
                      "is another program (the service?) using the mic or speaker? "
                      "sudo systemctl stop soca-appliance, then try again")
    from ..echo import measure_echo_path
    report = measure_echo_path(reference, heard)
    figures = dict(delay_ms=report.delay_ms, erl_db=report.erl_db,
                   mic_peak_dbfs=report.mic_peak_dbfs)
    if not report.ok:
        return warned(name, report.message, "turn the speaker's volume down (alsamixer) or "
                      "move the mic away from it; until then voice barge-in may fail "
                      "(duplex = half and the button still work)", **figures)
    return passed(name, report.message, **figures)
