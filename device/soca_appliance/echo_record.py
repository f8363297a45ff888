"""A recording of what :class:`.echo.EchoPath` got and gave, frame by frame, for finding
out offline why the room misbehaved (issue 12): the mic, the reference read for it, the
canceller's output, what went up, and the path's decisions. Off unless the environment
names a file (``SOCA_ECHO_RECORD``, read once when the path is made): a diagnostic of the
test rig and the bench, not a setting; nothing is recorded on a device by default.

One record per frame, fixed size, appended (buffered, flushed every second of audio so a
killed process leaves all but the last second): a header (``t_capture`` float64, frame
index int32, mode uint8 0 raw / 1 clean / 2 mute, local-VAD verdict uint8, the volume
the ducking asked for or -1 float32, uint8 1 when the burst gate sent comfort noise
instead) and four int16 blocks of ``n`` samples: near, far, clean, out.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np

ENV = "SOCA_ECHO_RECORD"
MODES = ("raw", "clean", "mute")
_HEAD = struct.Struct("<diBBfB")


class EchoRecorder:
    def __init__(self, path: Path, n: int) -> None:
        self.n = n
        self._file: Optional[BinaryIO] = open(path, "ab")
        self._count = 0

    @classmethod
    def from_env(cls, n: int) -> Optional["EchoRecorder"]:
        path = os.environ.get(ENV)
        return cls(Path(path), n) if path else None

    def write(self, t: float, index: int, mode: str, voiced: bool, volume: Optional[float],
              gated: bool, near: np.ndarray, far: np.ndarray, clean: np.ndarray,
              out: bytes) -> None:
        if self._file is None or len(near) != self.n:
            return
        self._file.write(_HEAD.pack(t, index, MODES.index(mode), voiced,
                                    -1.0 if volume is None else volume, gated))
        for block in (near, far, clean):
            self._file.write(np.asarray(block, dtype="<i2").tobytes())
        self._file.write(out)
        self._count += 1
        if self._count % 50 == 0:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class Recording:
    t: np.ndarray
    index: np.ndarray
    mode: np.ndarray
    voiced: np.ndarray
    volume: np.ndarray
    gated: np.ndarray
    near: np.ndarray          # frames x n
    far: np.ndarray
    clean: np.ndarray
    out: np.ndarray


def load(path: Path, n: int = 320) -> Recording:
    raw = Path(path).read_bytes()
    size = _HEAD.size + 8 * n
    count = len(raw) // size
    heads = [_HEAD.unpack_from(raw, k * size) for k in range(count)]
    body = np.frombuffer(b"".join(raw[k * size + _HEAD.size:(k + 1) * size]
                                  for k in range(count)), dtype="<i2").reshape(count, 4, n)
    cols = list(zip(*heads)) if heads else [()] * 6
    return Recording(np.array(cols[0], dtype=np.float64), np.array(cols[1]),
                     np.array(cols[2]), np.array(cols[3], dtype=bool),
                     np.array(cols[4], dtype=np.float32), np.array(cols[5], dtype=bool),
                     body[:, 0], body[:, 1], body[:, 2], body[:, 3])
