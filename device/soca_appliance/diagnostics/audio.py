"""Checks: the microphone (found by name, then a few seconds recorded through the appliance's
own :class:`~soca_appliance.framing.Converter` path: level, peak, clipping) and the speaker
(pygame's mixer plays the bundled chime)."""
from __future__ import annotations

import contextlib
import io
import math
import os
import re
import time
from importlib import resources

from .context import Context
from .result import (CLIP_SHARE, SILENT_DBFS, Result, describe, failed, passed, skipped,
                     warned, with_timeout)

def check_mic_device(ctx: Context) -> Result:
    name = "mic.device"
    if ctx.cfg.input:
        return skipped(name, f"input = {ctx.cfg.input}: the appliance reads a WAV file, "
                       "not a microphone")
    try:
        device, rate, channels = ctx.mic()
    except Exception as exc:  # noqa: BLE001
        return failed(name, str(exc), "plug the USB mic in; 'soca-appliance devices' lists "
                      "the inputs; set mic = part of its name; the user needs group audio; "
                      "stop the service if it holds the device")
    converted = (rate, channels) != (16000, 1)
    detail = (f"{device.name!r} (#{device.index}): native {device.default_rate} Hz, "
              f"up to {device.max_input_channels} ch; opens at {rate} Hz {channels} ch"
              + ("; converted to 16 kHz mono" if converted else ""))
    return passed(name, detail, device=device.name, index=device.index,
                  native_rate=device.default_rate,
                  max_channels=device.max_input_channels, rate=rate, channels=channels)


def record(ctx: Context, seconds: float) -> bytes:
    """``seconds`` of 16 kHz mono PCM, read and converted the way the appliance does."""
    from ..framing import Converter
    from ..quiet import quiet
    device, rate, channels = ctx.mic()
    block = max(1, rate // 50)                                    # 20 ms reads
    blocks = max(1, int(round(seconds * rate / block)))
    converter = Converter(rate, channels, ctx.cfg.mic_gain)
    with quiet():
        stream = ctx.pa.open(format=8, channels=channels, rate=rate, input=True,
                             input_device_index=device.index, frames_per_buffer=block)
    out = bytearray()
    try:
        for index in range(blocks):
            data = stream.read(block, exception_on_overflow=False)
            out += converter.convert(data, last=index == blocks - 1)
    finally:
        with contextlib.suppress(Exception):
            stream.close()
    return bytes(out)


def levels(pcm: bytes) -> dict[str, float]:
    """RMS and peak in dBFS (-inf for digital silence) and the share of clipped samples."""
    import numpy as np
    from ..framing import rms_dbfs
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    if samples.size == 0:
        return {"rms_dbfs": float("-inf"), "peak_dbfs": float("-inf"), "clipped": 0.0}
    peak = int(np.max(np.abs(samples)))
    clipped = float(np.count_nonzero((samples >= 32767) | (samples <= -32768))) / samples.size
    return {"rms_dbfs": float(rms_dbfs(pcm)),
            "peak_dbfs": 20.0 * math.log10(peak / 32768.0) if peak else float("-inf"),
            "clipped": clipped}


def check_mic_level(ctx: Context) -> Result:
    name = "mic.level"
    if ctx.cfg.input:
        return skipped(name, f"input = {ctx.cfg.input}: no microphone in use")
    try:
        ctx.mic()
    except Exception as exc:  # noqa: BLE001
        return skipped(name, f"no microphone ({exc})")
    seconds = ctx.record_seconds
    if ctx.interactive:
        ctx.say(f"soca-diag: recording {seconds:g} s from the microphone: speak normally...")
    try:
        pcm = with_timeout(lambda: record(ctx, seconds), seconds + 5.0,
                            "the microphone delivered no audio")
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, TimeoutError):
            ctx.pa_stuck = True           # a read still blocks in PortAudio: leave it be
        return failed(name, f"recording failed: {describe(exc)}",
                      "is another program (the service?) using the mic? "
                      "sudo systemctl stop soca-appliance, then try again")
    lv = levels(pcm)
    rms, peak, clip = lv["rms_dbfs"], lv["peak_dbfs"], lv["clipped"]
    detail = (f"{len(pcm) / 32000:.1f} s: RMS {_db(rms)}, peak {_db(peak)}, "
              f"clipping {clip * 100:.2f} % (gain {ctx.cfg.mic_gain:g})")
    figures = dict(seconds=round(len(pcm) / 32000, 3), rms_dbfs=rms, peak_dbfs=peak,
                   clipped_share=clip)
    if clip > CLIP_SHARE:
        return warned(name, detail + ": clipping", "lower mic_gain or the capture volume "
                      "(alsamixer, F4), or move the mic away from the speaker", **figures)
    if not rms > SILENT_DBFS:
        return warned(name, detail + ": silent", "is the mic muted or its capture volume at "
                      "0 (alsamixer, F4)? is it the right input (mic = ...)?", **figures)
    return passed(name, detail, **figures)


# Shared libraries pygame's wheel needs from the system, and the Debian package of each.
SYSTEM_LIBRARIES = {
    "libgthread-2.0.so.0": "libglib2.0-0", "libglib-2.0.so.0": "libglib2.0-0",
    "libgobject-2.0.so.0": "libglib2.0-0", "libasound.so.2": "libasound2",
    "libpulse.so.0": "libpulse0", "libpulse-simple.so.0": "libpulse0",
    "libsndfile.so.1": "libsndfile1", "libportaudio.so.2": "libportaudio2",
}


def missing_library(reason: str) -> tuple[str, str]:
    """The shared library a loader error names and the apt package that has it ("" if none).

    ``"ImportError: libgthread-2.0.so.0: cannot open shared object file: ..."`` gives
    ``("libgthread-2.0.so.0", "libglib2.0-0")``.
    """
    found = re.search(r"(lib[\w.+-]+?\.so(?:\.\d+)*)", reason)
    if not found:
        return "", ""
    library = os.path.basename(found.group(1))
    return library, SYSTEM_LIBRARIES.get(library, "")


def _no_mixer(name: str, driver: str, reason: str) -> Result:
    library, package = missing_library(reason)
    if package:
        hint = f"sudo apt-get install {package} (it provides {library}), then try again"
    elif library:
        hint = f"install the package that provides {library} (apt-file search {library})"
    else:
        hint = "reinstall pygame in the venv (install.sh does); see the reason above"
    detail = f"pygame's mixer is not available ({driver}): {reason}"
    if library:
        detail = f"pygame's mixer is not available: {library} cannot be loaded ({reason})"
    return failed(name, detail, hint, driver=driver, missing_library=library,
                  apt_package=package)


def check_speaker(ctx: Context) -> Result:
    name = "speaker"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    driver = ctx.env.get("SDL_AUDIODRIVER") or "SDL default"
    try:
        import pygame                       # SDL_AUDIODRIVER is respected, never set here
    except ImportError as exc:
        return _no_mixer(name, driver, f"{type(exc).__name__}: {exc}")
    if not pygame.mixer:
        # pygame's MissingModule: SDL_mixer or a library it needs did not load. Its reason is
        # an attribute; touching anything else on it raises NotImplementedError and warns.
        return _no_mixer(name, driver, str(getattr(pygame.mixer, "reason", "") or "unknown"))
    from ..quiet import quiet
    try:
        with quiet():               # ALSA's pages about missing cards stay off stderr
            pygame.mixer.init(frequency=22050, size=-16, channels=1,
                              buffer=ctx.cfg.mixer_buffer)
    except pygame.error as exc:
        return failed(name, f"audio output failed to open ({driver}): {exc}",
                      "is a speaker/DAC connected ('aplay -l')? the user needs group audio; "
                      "stop the service if it holds the device")
    except NotImplementedError as exc:
        return _no_mixer(name, driver, str(exc))
    try:
        freq, _fmt, channels = pygame.mixer.get_init()
        chime = resources.files("soca_appliance").joinpath("assets", "chime.wav").read_bytes()
        sound = pygame.mixer.Sound(file=io.BytesIO(chime))
        length = sound.get_length()
        if ctx.interactive:
            ctx.say("soca-diag: playing the chime on the speaker...")
        start = time.monotonic()
        channel = sound.play()
        if channel is None:
            return failed(name, "the mixer had no free channel to play the chime")
        while channel.get_busy() and time.monotonic() - start < length + 2.0:
            time.sleep(0.01)
        played = time.monotonic() - start
        figures = dict(driver=driver, frequency=freq, channels=channels,
                       buffer=ctx.cfg.mixer_buffer,
                       buffer_ms=round(1000.0 * ctx.cfg.mixer_buffer / freq, 1),
                       chime_ms=round(length * 1000.0), played_ms=round(played * 1000.0))
        detail = (f"{driver}: {freq} Hz, {channels} ch, buffer {ctx.cfg.mixer_buffer} "
                  f"({figures['buffer_ms']} ms); chime {figures['chime_ms']} ms played in "
                  f"{figures['played_ms']} ms")
        if channel.get_busy():
            return warned(name, detail + ": still playing, the output does not advance",
                          "check the ALSA device and driver (SDL_AUDIODRIVER)", **figures)
        return passed(name, detail, **figures)
    finally:
        with contextlib.suppress(Exception):
            pygame.mixer.quit()


def _db(value: float) -> str:
    return f"{value:.1f} dBFS" if math.isfinite(value) else "-inf dBFS (digital silence)"
