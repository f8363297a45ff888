"""A WAV file as the microphone, paced in real time, then silence: the appliance without a
sound card (demo, tests, benchmark). Any rate or channel count is converted like a mic."""
from __future__ import annotations

import logging
import threading
import time
import wave
from pathlib import Path
from typing import Callable, Optional

from .source import ThreadedSource
from .framing import Converter, Frame, Framer

log = logging.getLogger("soca.wavsource")


class WavSourceError(ValueError):
    pass


class WavSource(ThreadedSource):
    thread_name = "wav-source"

    def __init__(self, path: str | Path, frame_bytes: int = 640, gain: float = 1.0,
                 on_end: Optional[Callable[[], None]] = None) -> None:
        self.path = Path(path)
        self.frame_bytes = frame_bytes
        self.on_end = on_end
        super().__init__()
        self.name = f"file {self.path.name}"
        self.frames = 0
        self.ended = threading.Event()
        try:
            with wave.open(str(self.path), "rb") as wav:
                if wav.getsampwidth() != 2:
                    raise WavSourceError(f"{self.path}: only 16-bit PCM WAV is supported "
                                         f"(this one has {8 * wav.getsampwidth()}-bit samples)")
                rate, channels = wav.getframerate(), wav.getnchannels()
                raw = wav.readframes(wav.getnframes())
        except FileNotFoundError:
            raise WavSourceError(f"input file {self.path} does not exist") from None
        except (wave.Error, EOFError) as exc:
            raise WavSourceError(f"input file {self.path} is not a PCM WAV file ({exc})") from None
        converter = Converter(rate, channels, gain)
        pcm = converter.convert(raw, last=True)
        framer = Framer(frame_bytes)
        self._frames = framer.push(pcm + bytes(-len(pcm) % frame_bytes))
        self.duration = len(self._frames) * frame_bytes / 32000

    def _run(self, on_frame: Callable[[Frame], None]) -> None:
        period = self.frame_bytes / 32000
        silence = bytes(self.frame_bytes)
        t0 = time.monotonic()
        index = 0
        # Deadlines from a fixed origin: sleeping late once does not shift every later frame.
        # The stop is looked at once per frame, after the sleep (Event.is_set is a Python
        # call): a stop waits at most one period.
        stopped = self._stop.is_set
        frames, count = self._frames, len(self._frames)
        monotonic, sleep = time.monotonic, time.sleep
        while True:
            delay = t0 + (index + 1) * period - monotonic()
            if delay > 0:
                # time.sleep, not Event.wait: about 10 % less CPU per period (bench --floor)
                sleep(delay)
            if stopped():
                break
            on_frame(Frame(frames[index] if index < count else silence, monotonic(), index))
            index += 1
            self.frames = index
            if index == count:
                log.info("end of %s (%.1f s); continuing with silence", self.path.name,
                         self.duration)
                self.ended.set()
                if self.on_end is not None:
                    self.on_end()
