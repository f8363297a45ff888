"""Test audio: synthetic tones and noise, espeak-ng speech, and signal measurements.

Everything is PCM16 mono unless a name says otherwise. Arrays are ``numpy.int16``;
``to_bytes`` turns them into PCM16LE. Speech comes from ``espeak-ng`` (on PATH), written
into a caller-given directory (a pytest ``tmp_path``) and resampled to 16 kHz with soxr.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import soxr

RATE = 16000


# --- synthesis ---------------------------------------------------------------------------

def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(round(seconds * rate)), dtype=np.int16)


def sine(freq: float, seconds: float, rate: int = RATE, amplitude: float = 0.5,
         phase: float = 0.0) -> np.ndarray:
    """A tone at ``amplitude`` of full scale (0..1)."""
    t = np.arange(int(round(seconds * rate))) / rate
    return to_int16(amplitude * 32767.0 * np.sin(2 * np.pi * freq * t + phase))


def white_noise(seconds: float, dbfs: float = -20.0, rate: int = RATE,
                seed: int = 0) -> np.ndarray:
    """Gaussian white noise with an RMS of ``dbfs`` (reproducible for a given seed)."""
    rng = np.random.default_rng(seed)
    rms = 32768.0 * 10 ** (dbfs / 20.0)
    return to_int16(rng.normal(0.0, rms, int(round(seconds * rate))))


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def to_bytes(x: np.ndarray) -> bytes:
    return np.asarray(x, dtype="<i2").tobytes()


def from_bytes(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2")


def interleave(*channels: np.ndarray) -> np.ndarray:
    """Interleaved multi-channel samples from equally long mono arrays."""
    return np.stack(channels, axis=1).reshape(-1).astype(np.int16)


def concat(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype=np.int16) for p in parts])


# --- speech ------------------------------------------------------------------------------

def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples and the rate of a PCM16 WAV file (channels are averaged)."""
    with wave.open(str(path), "rb") as wav:
        channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
        data = wav.readframes(wav.getnframes())
    if width != 2:
        raise ValueError(f"{path}: {8 * width}-bit WAV, expected 16-bit")
    samples = np.frombuffer(data, dtype="<i2")
    if channels > 1:
        samples = to_int16(samples.reshape(-1, channels).mean(axis=1))
    return samples.astype(np.int16), rate


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(to_bytes(samples))
    return path


def espeak(text: str, workdir: Path, voice: str = "en-us", rate: int = RATE,
           name: Optional[str] = None) -> np.ndarray:
    """``text`` spoken by espeak-ng, as mono int16 at ``rate`` (espeak writes 22.05 kHz).

    The WAV is written to ``workdir`` (reused when it already exists there).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    stem = name or f"espeak-{voice}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"
    raw = workdir / f"{stem}.wav"
    if not raw.exists():
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text],
                       check=True, capture_output=True, timeout=30)
    samples, src_rate = read_wav(raw)
    if src_rate != rate:
        samples = to_int16(soxr.resample(samples.astype(np.float32), src_rate, rate))
    return samples


# --- framing -----------------------------------------------------------------------------

def frames(samples: np.ndarray, frame_ms: int = 20, rate: int = RATE) -> Iterator[bytes]:
    """Consecutive whole frames of PCM16LE (a trailing partial frame is left out)."""
    n = rate * frame_ms // 1000
    usable = len(samples) - len(samples) % n
    pcm = to_bytes(samples[:usable])
    for off in range(0, len(pcm), 2 * n):
        yield pcm[off:off + 2 * n]


# --- measurement -------------------------------------------------------------------------

def window_rms_db(samples: np.ndarray, window: int) -> np.ndarray:
    """RMS in dBFS of consecutive windows of ``window`` samples (-inf for digital silence)."""
    usable = len(samples) - len(samples) % window
    x = samples[:usable].astype(np.float64).reshape(-1, window)
    rms = np.sqrt(np.mean(x * x, axis=1))
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(rms / 32768.0)


def speech_bounds(samples: np.ndarray, rate: int = RATE, window_ms: int = 10,
                  below_peak_db: float = 35.0) -> tuple[int, int]:
    """(first, end) sample of the region whose energy is within ``below_peak_db`` of the peak.

    Measured on ``window_ms`` windows: ``first`` is the start of the first loud window,
    ``end`` the end of the last one.
    """
    window = rate * window_ms // 1000
    db = window_rms_db(samples, window)
    loud = np.flatnonzero(db >= db.max() - below_peak_db)
    if loud.size == 0:
        raise ValueError("no signal")
    return int(loud[0] * window), int((loud[-1] + 1) * window)


def rms(samples: np.ndarray) -> float:
    x = np.asarray(samples, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def peak_frequency(samples: np.ndarray, rate: int) -> float:
    """Frequency of the largest FFT bin (Hann window)."""
    x = np.asarray(samples, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / rate)[int(np.argmax(spectrum))])
