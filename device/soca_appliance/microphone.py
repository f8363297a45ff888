"""The USB microphone through PyAudio: find it by name, open it at what it can do, convert
to 16 kHz mono, cut frames, and survive it being unplugged.

Capture runs on its own thread and never waits on the network: frames go to a callback
that must not block. A read error closes the stream, reports once, and reopens with
backoff until the device is back. PortAudio's start-up chatter on stderr is silenced.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from .backoff import Backoff
from .source import ThreadedSource
from .framing import Converter, Frame, Framer
from .protocol import SAMPLE_RATE

log = logging.getLogger("soca.microphone")

_OVERFLOW = -9981          # pyaudio.paInputOverflowed


class MicError(RuntimeError):
    pass


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_rate: int


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hide the pages ALSA, JACK and PortAudio print while probing devices.

    Only the C library writes to fd 2 here; our own log has its own handler, and any real
    error from PortAudio surfaces as an exception we log ourselves.
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def open_pyaudio() -> Any:
    with quiet_stderr():
        import pyaudio
        return pyaudio.PyAudio()


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
    import pyaudio
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


class Microphone(ThreadedSource):
    """Captures frames from a PyAudio input on a thread of its own."""
    thread_name = "microphone"

    def __init__(self, name: str = "", frame_bytes: int = 640, gain: float = 1.0,
                 on_error: Callable[[str], None] = lambda message: None,
                 on_recover: Callable[[], None] = lambda: None,
                 block_ms: int = 20, retry_initial: float = 0.5, retry_max: float = 10.0,
                 rate: int = 0, channels: int = 0) -> None:
        self.device_name = name
        super().__init__()
        self.name = f"mic {name!r}" if name else "default mic"
        self.frame_bytes = frame_bytes
        self.gain = gain
        self.on_error = on_error
        self.on_recover = on_recover
        self.block_ms = block_ms
        self.rate, self.channels = rate, channels
        self.backoff = Backoff(initial=retry_initial, cap=retry_max)
        self.frames = 0
        self.overflows = 0
        self.reopens = 0
        self.opened: Optional[tuple[DeviceInfo, int, int]] = None

    def _run(self, on_frame: Callable[[Frame], None]) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self._capture(on_frame, recovered=failing)
            except MicError as exc:
                message = str(exc)
            except OSError as exc:
                message = f"microphone read failed: {exc}"
            else:
                return
            if not failing:
                self.on_error(f"{message}; retrying")       # once per outage, not per try
            failing = True
            self.reopens += 1
            self._stop.wait(self.backoff.next_delay())

    def _capture(self, on_frame: Callable[[Frame], None], recovered: bool) -> None:
        pa = open_pyaudio()
        stream = None
        try:
            device = find_input(pa, self.device_name)
            rate, channels = choose_format(pa, device, self.rate, self.channels)
            block = max(1, rate * self.block_ms // 1000)
            with quiet_stderr():
                stream = pa.open(format=8, channels=channels, rate=rate, input=True,
                                 input_device_index=device.index, frames_per_buffer=block)
            self.opened = (device, rate, channels)
            log.info("microphone %r open at %d Hz, %d channel(s)%s", device.name, rate,
                     channels, "" if (rate, channels) == (SAMPLE_RATE, 1)
                     else f"; converting to {SAMPLE_RATE} Hz mono")
            self.backoff.reset()
            if recovered:
                self.on_recover()
            converter = Converter(rate, channels, self.gain)
            framer = Framer(self.frame_bytes)
            while not self._stop.is_set():
                try:
                    data = stream.read(block, exception_on_overflow=True)
                except OSError as exc:
                    if getattr(exc, "errno", None) == _OVERFLOW:
                        self.overflows += 1
                        continue
                    raise
                now = time.monotonic()
                for pcm in framer.push(converter.convert(data)):
                    on_frame(Frame(pcm=pcm, t_capture=now, index=self.frames))
                    self.frames += 1
        finally:
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
            with quiet_stderr():
                pa.terminate()
