"""The USB microphone through PyAudio: find it by name, open it at what it can do, convert
to 16 kHz mono, cut frames, and survive it being unplugged.

PortAudio's callback thread converts and frames the audio and hands each frame to a
callback that must not block (it never waits on the network). The microphone's own thread
watches: a stream that stops (the device errors) or goes quiet for ``stall_s`` (a USB mic
pulled out whose reads block instead of failing) is closed, reported once per outage, and
reopened with backoff until the device is back.

One ``PyAudio`` instance is kept across reopens: each new one leaks about 12 kB, and
PortAudio only rescans its device list when initialised again, so a new one is made only
when :mod:`devices` says the sound devices changed. The libraries' chatter is kept off
stderr by :mod:`quiet` (no fd swapping).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import devices
from .backoff import Backoff
from .quiet import import_pyaudio, quiet, refresh_alsa_config
from .source import ThreadedSource
from .framing import Converter, Frame, Framer
from .protocol import SAMPLE_RATE

log = logging.getLogger("soca.microphone")

_PA_INT16 = 8              # pyaudio.paInt16
_PA_INPUT_OVERFLOW = 2     # callback status flag
_PA_CONTINUE, _PA_ABORT = 0, 2

# Kept for callers of the old name (soca-diag, the CLI): now the fd-free :func:`quiet.quiet`.
quiet_stderr = quiet


class MicError(RuntimeError):
    pass


class MicStalled(MicError):
    """The stream is open but no audio has come for a while."""


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_rate: int


def open_pyaudio() -> Any:
    pyaudio = import_pyaudio()
    refresh_alsa_config()          # PortAudio lists what ALSA's config says now
    with quiet():
        return pyaudio.PyAudio()


def close_pyaudio(pa: Any) -> None:
    with quiet(), contextlib.suppress(Exception):
        pa.terminate()


def list_devices(pa: Any) -> list[DeviceInfo]:
    devices = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        devices.append(DeviceInfo(index=index, name=str(info.get("name", "?")),
                                  max_input_channels=int(info.get("maxInputChannels", 0)),
                                  max_output_channels=int(info.get("maxOutputChannels", 0)),
                                  default_rate=int(info.get("defaultSampleRate", 0))))
    return devices


def find_input(pa: Any, name: str) -> DeviceInfo:
    """The first input whose name contains ``name`` (case-insensitive); '' = the default."""
    inputs = [d for d in list_devices(pa) if d.max_input_channels > 0]
    if not name:
        try:
            index = int(pa.get_default_input_device_info()["index"])
        except (OSError, IOError):
            raise MicError("no default input device (is a microphone plugged in?)") from None
        return next(d for d in inputs if d.index == index)
    for device in inputs:
        if name.lower() in device.name.lower():
            return device
    names = ", ".join(repr(d.name) for d in inputs) or "none"
    raise MicError(f"no input device matching {name!r}; inputs: {names}")


def choose_format(pa: Any, device: DeviceInfo, rate: int = 0, channels: int = 0
                  ) -> tuple[int, int]:
    """16 kHz mono when the device can; otherwise its native rate and channel count.

    ``rate``/``channels`` (0 = automatic) force a format, for instance the device's native
    48 kHz: ALSA's ``plug`` layer would accept 16 kHz and resample with its own cheap
    filter, where soxr's anti-alias filter does better.
    """
    pyaudio = import_pyaudio()
    stereo = max(1, min(2, device.max_input_channels))
    if rate or channels:
        candidates = [(rate or device.default_rate, channels or 1)]
    else:
        candidates = [(SAMPLE_RATE, 1), (device.default_rate, 1), (SAMPLE_RATE, stereo),
                      (device.default_rate, stereo)]
    for rate_, channels_ in candidates:
        try:
            if pa.is_format_supported(rate_, input_device=device.index,
                                      input_channels=channels_, input_format=pyaudio.paInt16):
                return rate_, channels_
        except ValueError:
            continue
    if rate or channels:
        raise MicError(f"input {device.name!r} cannot record {candidates[0][0]} Hz with "
                       f"{candidates[0][1]} channel(s)")
    return device.default_rate, device.max_input_channels


class _Callback:
    """PortAudio's callback: convert, frame, hand on; remember when audio last came."""

    def __init__(self, mic: "Microphone", on_frame: Callable[[Frame], None],
                 converter: Converter, framer: Framer) -> None:
        self.mic, self.on_frame = mic, on_frame
        self.converter, self.framer = converter, framer
        self.last = time.monotonic()
        self.calls = 0
        self.error: Optional[BaseException] = None
        self.closing = False

    def __call__(self, data: bytes, count: int, time_info: Any, status: int
                 ) -> tuple[None, int]:
        if self.closing or self.mic._stop.is_set():
            return None, _PA_ABORT
        try:
            if status & _PA_INPUT_OVERFLOW:
                self.mic.overflows += 1
            now = time.monotonic()
            for pcm in self.framer.push(self.converter.convert(data)):
                self.on_frame(Frame(pcm=pcm, t_capture=now, index=self.mic.frames))
                self.mic.frames += 1
            self.calls += 1
            self.last = now
        except Exception as exc:  # noqa: BLE001 - reported by the microphone thread
            self.error = exc
            return None, _PA_ABORT
        return None, _PA_CONTINUE


class Microphone(ThreadedSource):
    """Captures frames from a PyAudio input; reopens it when it fails or stalls."""
    thread_name = "microphone"

    def __init__(self, name: str = "", frame_bytes: int = 640, gain: float = 1.0,
                 on_error: Callable[[str], None] = lambda message: None,
                 on_recover: Callable[[], None] = lambda: None,
                 block_ms: int = 20, retry_initial: float = 0.5, retry_max: float = 10.0,
                 rate: int = 0, channels: int = 0, stall_s: float = 1.0,
                 presence: Optional[devices.PresenceCheck] = None) -> None:
        self.device_name = name
        super().__init__()
        self.name = f"mic {name!r}" if name else "default mic"
        self.frame_bytes = frame_bytes
        self.gain = gain
        self.on_error = on_error
        self.on_recover = on_recover
        self.block_ms = block_ms
        self.rate, self.channels = rate, channels
        self.stall_s = stall_s
        self.presence = presence or devices.capture
        self.backoff = Backoff(initial=retry_initial, cap=retry_max)
        self.frames = 0
        self.overflows = 0
        self.reopens = 0
        self.stalls = 0
        self.pyaudio_inits = 0
        self.opened: Optional[tuple[DeviceInfo, int, int]] = None

    def _run(self, on_frame: Callable[[Frame], None]) -> None:
        failing = False
        pa: Any = None
        pa_signature: Optional[tuple[str, ...]] = None
        try:
            while not self._stop.is_set():
                message = ""
                try:
                    signature = self.presence().signature
                    if pa is None or (failing and signature != pa_signature):
                        # PortAudio sees new devices only when initialised again.
                        if pa is not None:
                            close_pyaudio(pa)
                            pa = None
                        pa = open_pyaudio()
                        pa_signature = signature
                        self.pyaudio_inits += 1
                    self._capture(pa, on_frame, recovered=failing)
                except MicError as exc:
                    message = str(exc)
                except OSError as exc:
                    message = f"microphone read failed: {exc}"
                except Exception as exc:  # noqa: BLE001 - a capture thread never dies
                    message = f"microphone failed: {type(exc).__name__}: {exc}"
                if self._stop.is_set():
                    return
                if not failing:
                    self.on_error(f"{message}; retrying")       # once per outage, not per try
                else:
                    log.debug("microphone still failing: %s", message)
                failing = True
                self.reopens += 1
                self._stop.wait(self.backoff.next_delay())
        finally:
            if pa is not None:
                close_pyaudio(pa)

    def _capture(self, pa: Any, on_frame: Callable[[Frame], None], recovered: bool) -> None:
        device = find_input(pa, self.device_name)
        rate, channels = choose_format(pa, device, self.rate, self.channels)
        block = max(1, rate * self.block_ms // 1000)
        callback = _Callback(self, on_frame, Converter(rate, channels, self.gain),
                             Framer(self.frame_bytes))
        with quiet():
            stream = pa.open(format=_PA_INT16, channels=channels, rate=rate, input=True,
                             input_device_index=device.index, frames_per_buffer=block,
                             stream_callback=callback)
        try:
            self.opened = (device, rate, channels)
            log.info("microphone %r open at %d Hz, %d channel(s)%s", device.name, rate,
                     channels, "" if (rate, channels) == (SAMPLE_RATE, 1)
                     else f"; converting to {SAMPLE_RATE} Hz mono")
            self._watch(stream, callback, recovered)
        finally:
            self._close(stream, callback)

    @staticmethod
    def _close(stream: Any, callback: _Callback) -> None:
        # Let the callback thread end itself first (it returns paAbort on its next call):
        # closing an active stream cancels PortAudio's thread, which is only safe while it
        # waits on the device, never while it runs Python code.
        callback.closing = True
        deadline = time.monotonic() + 0.5
        with contextlib.suppress(Exception):
            while stream.is_active() and time.monotonic() < deadline:
                time.sleep(0.01)
        with quiet(), contextlib.suppress(Exception):
            stream.close()          # aborts a stream whose device stopped answering

    def _watch(self, stream: Any, callback: _Callback, recovered: bool) -> None:
        """The stream runs on PortAudio's thread; this one checks on it a few times a
        second until asked to stop. Raises when it failed or stalled."""
        period = min(0.25, self.stall_s / 2)
        first = True
        while not self._stop.wait(period):
            if callback.error is not None:
                raise MicError(f"microphone frame handling failed: {callback.error}")
            active = stream.is_active()
            if callback.calls and first:
                first = False
                self.backoff.reset()
                if recovered:
                    self.on_recover()
            quiet_for = time.monotonic() - callback.last
            # The first audio may take a moment on some devices: twice the grace.
            if quiet_for > (self.stall_s if callback.calls else max(2.0, 2 * self.stall_s)):
                self.stalls += 1
                raise MicStalled(f"microphone stalled: no audio for {quiet_for:.1f} s")
            if not active:
                raise OSError("the input stream stopped (was the microphone unplugged?)")
