"""Constants and small statistics shared by every measurement of the bench."""
from __future__ import annotations

import io
import math
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Optional


KEY = "bench-" + os.urandom(8).hex()
PROG = "soca-appliance bench"
ASSETS = Path(str(resources.files("soca_appliance") / "assets"))
SPEECH_WAV = ASSETS / "demo-en.wav"
FRAME_S = 0.02
SEQ_BASE = 1000             # injected seqs start here: far above the simulator's own seqs
SOAK_GAP_S = 7.0            # silence after each copy of the demo speech in the soak input

TARGETS = {                 # name: (limit, unit); every figure is "at most"
    "uplink_p99_ms": (2.0, "ms"),
    "barge_server_p99_ms": (5.0, "ms"),
    "barge_button_p99_ms": (5.0, "ms"),
    "sentence_start_p99_ms": (10.0, "ms"),
    "cpu_streaming_pct": (2.0, "%"),
    "peak_rss_mb": (60.0, "MB"),
    "startup_median_s": (1.5, "s"),
    "soak_rss_growth_mb_per_10min": (2.0, "MB"),
}


class BenchError(RuntimeError):
    """A phase could not complete (the appliance never connected, never played...)."""


# --- small helpers ---------------------------------------------------------------------

def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values_s: list[float], scale: float = 1000.0, digits: int = 3) -> dict[str, Any]:
    """p50/p99/max/mean of durations in seconds, scaled (default: to milliseconds)."""
    if not values_s:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    vals = [v * scale for v in values_s]
    return {"n": len(vals), "p50": round(percentile(vals, 50), digits),
            "p99": round(percentile(vals, 99), digits), "max": round(max(vals), digits),
            "mean": round(sum(vals) / len(vals), digits)}


def jitter(times: list[float], period: float = FRAME_S) -> dict[str, Any]:
    """|interval - period| between consecutive timestamps, in ms; gaps = intervals > 1.5 periods."""
    intervals = [b - a for a, b in zip(times, times[1:])]
    out = summary([abs(i - period) for i in intervals])
    out["gaps"] = sum(1 for i in intervals if i > 1.5 * period)
    return out


def median(values: list[float]) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class _NullStream(io.TextIOBase):
    """Where the in-process event log writes: the JSON lines are built, then discarded."""

    def write(self, text: str) -> int:
        return len(text)
