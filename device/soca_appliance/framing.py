"""From whatever a capture device delivers to exact protocol frames. Pure, no I/O.

A :class:`Converter` turns interleaved PCM16 at the device's rate and channel count into
mono 16 kHz PCM16 (downmix, soxr's streaming resampler with its anti-alias filter, a
clip-safe gain); a :class:`Framer` cuts exact 20/40/50 ms frames from blocks of any size.

numpy and soxr load on first use, not with :class:`Frame`: the link imports this module
and reaches ``stt.ready`` before the audio side needs them (issue 13).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .protocol import SAMPLE_RATE


@dataclass(slots=True)
class Frame:
    """One protocol frame of PCM16LE mono 16 kHz and when capture delivered it.

    Never changed once made (a stage that alters the audio makes a new one), but not
    ``frozen``: a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, three times slower, and one is made for every frame."""
    pcm: bytes
    t_capture: float      # time.monotonic() when the frame's last sample was read
    index: int


class Converter:
    def __init__(self, in_rate: int, in_channels: int, gain: float = 1.0) -> None:
        self.in_rate = int(in_rate)
        self.in_channels = int(in_channels)
        self.gain = float(gain)
        self.identity = (self.in_rate == SAMPLE_RATE and self.in_channels == 1
                         and self.gain == 1.0)
        # One stream for the whole capture, so the filter state carries across blocks:
        # no clicks at block edges.
        self._resampler: Optional[Any] = None       # soxr.ResampleStream
        if self.in_rate != SAMPLE_RATE:
            import soxr
            self._resampler = soxr.ResampleStream(self.in_rate, SAMPLE_RATE, 1, dtype="float32")

    def convert(self, block: bytes, last: bool = False) -> bytes:
        if self.identity:
            return block
        import numpy as np
        samples = np.frombuffer(block, dtype="<i2")
        usable = len(samples) - len(samples) % self.in_channels
        audio = samples[:usable].astype(np.float32)
        if self.in_channels > 1:
            audio = audio.reshape(-1, self.in_channels).mean(axis=1)
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio, last=last)
        if self.gain != 1.0:
            audio = audio * self.gain
        return np.clip(np.rint(audio), -32768, 32767).astype("<i2").tobytes()


class Framer:
    def __init__(self, frame_bytes: int) -> None:
        self.frame_bytes = frame_bytes
        self._buf = bytearray()

    def push(self, data: bytes) -> list[bytes]:
        if not self._buf and len(data) == self.frame_bytes:
            return [bytes(data)]        # a device block of one frame: most blocks, no copies
        self._buf += data
        cut = len(self._buf) - len(self._buf) % self.frame_bytes
        if cut == 0:
            return []
        out = [bytes(self._buf[i:i + self.frame_bytes]) for i in range(0, cut, self.frame_bytes)]
        del self._buf[:cut]
        return out

    def reset(self) -> None:
        self._buf.clear()


def rms_dbfs(pcm: bytes) -> float:
    import numpy as np      # (loaded by then: a dictionary lookup per frame)
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(samples * samples)))
    return 20.0 * np.log10(rms / 32768.0) if rms > 0 else float("-inf")
