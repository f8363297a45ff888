"""Measuring the echo room (tests and bench): :class:`MonitorTap` records what a rig's sink
really carries (for the mic sink: exactly what the room plays into the appliance's mic) and
:func:`fidelity` says how faithfully one signal carries another, window by window, aligned
to the sample. Never used by the appliance itself."""
from __future__ import annotations

import subprocess
import threading

import numpy as np

from .room import RATE
from .room_rig import PulseRig


class MonitorTap:
    """What a rig's sink actually carries, recorded from its monitor with ``parec`` (16 kHz
    mono s16le): for the mic sink, exactly what the room plays into the appliance's mic."""

    def __init__(self, rig: PulseRig, sink: str = "mic") -> None:
        self.proc = subprocess.Popen(["parec", "-d", f"{sink}.monitor", "--raw",
                                      "--format=s16le", f"--rate={RATE}", "--channels=1",
                                      "--latency-msec=20"], env=rig.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._data = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name=f"tap-{sink}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            chunk = self.proc.stdout.read1(3200)
            if not chunk:
                return
            with self._lock:
                self._data += chunk

    def samples(self) -> np.ndarray:
        with self._lock:
            raw = bytes(self._data[:len(self._data) // 2 * 2])
        return np.frombuffer(raw, dtype="<i2").astype(np.float64)

    def close(self) -> np.ndarray:
        self.proc.terminate()
        self.proc.wait(5)
        self._thread.join(5)
        return self.samples()


def fidelity(up: np.ndarray, ref: np.ndarray, window: int = 4000,
             search: int = 160) -> tuple[float, float]:
    """How faithfully ``up`` carries ``ref``: the energy-weighted correlation over 250 ms
    windows and the level lost (dB). ``ref`` is found in ``up`` by cross-correlation, then
    each window is aligned on its own to the SAMPLE within +-10 ms: the rig's streams
    underrun now and then on a busy machine (a few ms inserted or dropped, measured 2.4 ms
    once), and a window off by even one sample of full-band speech correlates far less
    (the old measure searched in steps of 2 samples and read 0.61-0.86 for a bit-exact
    uplink)."""
    up = np.asarray(up, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    size = 1 << int(np.ceil(np.log2(len(up) + len(ref))))
    full = np.fft.irfft(np.fft.rfft(up, size) * np.conj(np.fft.rfft(ref, size)), size)
    lag = int(np.argmax(full[:max(1, len(up) - len(ref) + 1)]))
    num = den = e_up = e_ref = 0.0
    for a in range(0, len(ref) - window + 1, window):
        y = ref[a:a + window]
        weight = float(np.dot(y, y))
        if weight <= 0:
            continue
        lo, hi = max(0, lag + a - search), min(len(up), lag + a + window + search)
        seg = up[lo:hi]
        if len(seg) < window:
            continue
        # every shift at once: correlation of y with each window of seg
        c = np.correlate(seg, y, mode="valid")
        energy = np.convolve(seg ** 2, np.ones(window), mode="valid")
        score = c / np.sqrt(np.maximum(energy, 1e-12) * weight)
        k = int(np.argmax(score))
        x = seg[k:k + window]
        best = float(np.corrcoef(x, y)[0, 1]) if np.std(x) > 0 else 0.0
        num += best * weight
        den += weight
        e_up += float(np.dot(x, x))
        e_ref += weight
    if den == 0:
        return 0.0, float("inf")
    return num / den, 10 * np.log10(e_ref / e_up) if e_up > 0 else float("inf")
