"""The appliance alone: start-up, uplink, CPU and memory over a conversation."""
from __future__ import annotations

import threading
import time
import wave
from pathlib import Path
from typing import Any

from .common import BenchError, KEY, SPEECH_WAV
from .child import Child, _sampler, _startup_times
from .inprocess import arrivals
from .probe import control_probe
from .procfs import proc_cpu_s, proc_memory, proc_tasks_cpu, threads_cpu_pct


def run_subprocess(workdir: Path, quick: bool, frame_ms: int = 20) -> dict[str, Any]:
    """The appliance alone: start-up, uplink, CPU over a conversation and idle streaming,
    memory; with the control probe running next to it."""
    with control_probe(600) as control:
        out = _appliance_alone(workdir, quick, frame_ms)
    out["control"] = control
    return out


def _appliance_alone(workdir: Path, quick: bool, frame_ms: int) -> dict[str, Any]:
    from ..simulator import Simulator
    with wave.open(str(SPEECH_WAV), "rb") as w:
        wav_s = w.getnframes() / w.getframerate()
    arrived: list[float] = []
    samples: list[dict[str, Any]] = []
    stop_sampling = threading.Event()
    with arrivals(arrived) as recording, Simulator(expected_key=KEY) as sim:
        child = Child(sim.url, SPEECH_WAV, workdir, instrument=True, frame_ms=frame_ms)
        try:
            t_conn, _ = child.wait("connected", timeout=30)
            startup = _startup_times(child, t_conn)
            startup["cpu_s"] = proc_cpu_s(child.pid)
            sampler = _sampler(child, 0.5, samples, stop_sampling)
            time.sleep(0.5)
            a = child.sample()
            tasks_a = proc_tasks_cpu(child.pid)
            if quick:
                time.sleep(4.0)
            else:
                # Until the WAV was spoken and every answer played: the state is back at
                # ready after the end of the input (cap: one minute).
                deadline = child.t_popen + 60.0
                while time.monotonic() < deadline:
                    t_state, state = child.last_state()
                    now = time.monotonic()
                    if (now > t_conn + wav_s + 1.0 and state == "ready"
                            and now - t_state > 0.5 and child.count("answer") >= 1):
                        break
                    time.sleep(0.2)
            b = child.sample()
            time.sleep(2.0 if quick else 8.0)       # idle streaming: silence, no answers
            c = child.sample()
            tasks_c = proc_tasks_cpu(child.pid)
            stop_sampling.set()
            sampler.join(2)
            final = child.sample()
            memory = proc_memory(child.pid)
            plays = child.count("sentence.play")
            turns = child.count("transcript", final=True)
            sim_stats = sim.stats()
        finally:
            stop_sampling.set()
            code = child.stop()
    uplink = child.uplink()
    if uplink is None:
        raise BenchError(f"the appliance saved no uplink figures (exit {code})")
    conv_s = b["t"] - a["t"]
    idle_s = c["t"] - b["t"]
    conv_cpu = b["cpu_s"] - a["cpu_s"]
    idle_cpu = c["cpu_s"] - b["cpu_s"]
    # Server-side arrival jitter over the streaming window only (not the connect burst).
    window = [t for t in arrived if a["t"] <= t <= c["t"]]
    return {
        "startup": startup,
        "conversation_s": round(conv_s, 2), "idle_s": round(idle_s, 2),
        "cpu_s_conversation": round(conv_cpu, 3), "cpu_s_idle": round(idle_cpu, 3),
        "cpu_pct_conversation": round(100.0 * conv_cpu / conv_s, 2),
        "cpu_pct_idle": round(100.0 * idle_cpu / idle_s, 2),
        "cpu_s_per_min": round(60.0 * conv_cpu / conv_s, 3),
        "cpu_by_thread_pct": threads_cpu_pct(tasks_a, tasks_c, c["t"] - a["t"],
                                             uplink.get("threads", {})),
        "peak_rss_mb": round(final["hwm_kb"] / 1024.0, 1),
        "rss_mb": round(final["rss_kb"] / 1024.0, 1),
        **memory,
        "threads_max": max((s["threads"] for s in samples), default=final["threads"]),
        "fds": final["fds"],
        "sentences_played": plays, "turns": turns,
        "server_arrivals": window if recording else None,
        "uplink": uplink,
        "server_frames_received": sim_stats["frames_received"],
        "exit_code": code,
    }
