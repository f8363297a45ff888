"""``--minutes N``: the appliance as a subprocess for N minutes; RSS, threads, fds sampled."""
from __future__ import annotations

import math
import threading
import time
import wave
from pathlib import Path
from typing import Any

from .common import BenchError, KEY, SOAK_GAP_S, SPEECH_WAV, progress
from .child import Child, _sampler
from .procfs import proc_tasks_cpu


def soak_wav(path: Path, minutes: float) -> float:
    """The demo speech then SOAK_GAP_S of silence, repeated for ``minutes``: 2 turns a copy."""
    with wave.open(str(SPEECH_WAV), "rb") as w:
        params = w.getparams()
        speech = w.readframes(w.getnframes())
    silence = bytes(int(SOAK_GAP_S * params.framerate) * params.sampwidth * params.nchannels)
    cycle_s = len(speech + silence) / (params.framerate * params.sampwidth * params.nchannels)
    copies = max(1, math.ceil(minutes * 60.0 / cycle_s))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(params.nchannels)
        out.setsampwidth(params.sampwidth)
        out.setframerate(params.framerate)
        for _ in range(copies):
            out.writeframes(speech + silence)
    return cycle_s


def run_soak(workdir: Path, minutes: float, every: float, frame_ms: int = 20) -> dict[str, Any]:
    from ..simulator import Simulator
    wav = workdir / "soak.wav"
    cycle_s = soak_wav(wav, minutes)
    duration = minutes * 60.0
    warmup = min(60.0, max(5.0, duration * 0.2))
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    with Simulator(expected_key=KEY) as sim:
        child = Child(sim.url, wav, workdir, frame_ms=frame_ms)
        try:
            t_conn, _ = child.wait("connected", timeout=30)
            sampler = _sampler(child, every, samples, stop)
            next_note = time.monotonic() + 60.0
            while time.monotonic() < t_conn + duration:
                time.sleep(0.5)
                if child.proc.poll() is not None:
                    raise BenchError(f"the appliance died during the soak: {child.stderr_tail()}")
                if time.monotonic() >= next_note:
                    next_note += 60.0
                    last = samples[-1] if samples else {}
                    progress(f"soak: {(time.monotonic() - t_conn) / 60:.1f} min, "
                             f"RSS {last.get('rss_kb', 0) / 1024:.1f} MB, "
                             f"{child.count('transcript', final=True)} turns")
            stop.set()
            sampler.join(every + 2)
            final = child.sample()
            threads_cpu = {comm: round(cpu, 2) for comm, cpu in
                           proc_tasks_cpu(child.pid).values()}
            counts = {"turns": child.count("transcript", final=True),
                      "sentences_played": child.count("sentence.play"),
                      "barges": child.count("barge"), "errors": child.count("error"),
                      "connects": child.count("connected")}
        finally:
            stop.set()
            code = child.stop()
    if len(samples) < 2:
        raise BenchError(f"only {len(samples)} sample(s) in the soak: run it longer")
    after = [s for s in samples if s["t"] >= t_conn + warmup]
    if len(after) < 2:
        after = samples[-2:]
    rss = [s["rss_kb"] / 1024.0 for s in after]
    ts = [(s["t"] - t_conn) / 60.0 for s in after]
    slope = _slope(ts, rss)
    span_min = (ts[-1] - ts[0]) if len(ts) > 1 else 0.0
    cpu_span = samples[-1]["t"] - samples[0]["t"] if len(samples) > 1 else 0.0
    return {
        "minutes": minutes, "sample_every_s": every, "warmup_s": warmup,
        "input_cycle_s": round(cycle_s, 1), "samples": len(samples),
        "rss_first_mb": round(rss[0], 2), "rss_last_mb": round(rss[-1], 2),
        "rss_growth_mb": round(rss[-1] - rss[0], 2),
        "rss_slope_mb_per_min": round(slope, 3),
        "rss_growth_mb_per_10min": round(slope * 10.0, 2),
        "rss_measured_span_min": round(span_min, 2),
        "peak_rss_mb": round(final["hwm_kb"] / 1024.0, 1),
        "threads_max": max(s["threads"] for s in samples),
        "threads_min": min(s["threads"] for s in samples),
        "fds_first": after[0]["fds"], "fds_last": after[-1]["fds"],
        "fds_max": max(s["fds"] for s in samples),
        "fd_growth": after[-1]["fds"] - after[0]["fds"],
        "cpu_pct": round(100.0 * (samples[-1]["cpu_s"] - samples[0]["cpu_s"]) / cpu_span, 2)
        if cpu_span > 0 else None,
        "cpu_by_thread_s": threads_cpu,
        "input_wav_mb": round(wav.stat().st_size / 1e6, 1),
        **counts, "exit_code": code,
        "series": [{"t_s": round(s["t"] - t_conn, 1), "rss_mb": round(s["rss_kb"] / 1024, 2),
                    "threads": s["threads"], "fds": s["fds"]} for s in samples],
    }


def _slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0
