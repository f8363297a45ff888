"""``--wyoming EXE``: wyoming-satellite streaming the same speech, as another column of
``--floor``, in the same alternating rounds.

wyoming-satellite is not a dependency and none of its code is here: install it in a venv
of its own and name its executable. It runs with ``--no-zeroconf`` and no wake word or VAD
(it always streams), its ``--mic-command`` a paced copy of the same WAV (:data:`PACER`, in
its own process like ``arecord`` would be, and not counted), chunks of 20 ms and of its
default 64 ms (1024 samples). A minimal Wyoming client here connects, sends
``run-satellite`` and counts the ``audio-chunk`` events that arrive.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from .common import BenchError, SPEECH_WAV
from .floor import task_totals
from .procfs import proc_memory, proc_status

# argv: WAV CHUNK_MS. Raw s16le mono 16 kHz on stdout, paced by time.sleep.
PACER = r"""
import sys, time, wave
with wave.open(sys.argv[1], "rb") as w:
    pcm = w.readframes(w.getnframes())
size = int(sys.argv[2]) * 32
t0, i = time.monotonic(), 0
while True:
    delay = t0 + (i + 1) * size / 32000 - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    chunk = pcm[i * size:(i + 1) * size]
    sys.stdout.buffer.write(chunk + bytes(size - len(chunk)))
    sys.stdout.buffer.flush()
    i += 1
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wyoming_round(exe: str, chunk_ms: int, seconds: float, settle: float = 1.0
                  ) -> dict[str, Any]:
    port = _free_port()
    mic = " ".join(shlex.quote(a) for a in (sys.executable, "-c", PACER, str(SPEECH_WAV),
                                            str(chunk_ms)))
    t_launch = time.monotonic()
    proc = subprocess.Popen([exe, "--name", "bench", "--uri", f"tcp://127.0.0.1:{port}",
                             "--mic-command", mic, "--mic-command-samples-per-chunk",
                             str(16 * chunk_ms), "--no-zeroconf"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    arrivals: list[float] = []
    conn = None
    try:
        deadline = time.monotonic() + 30.0
        while conn is None:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=1.0)
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("wyoming-satellite did not listen") from None
                time.sleep(0.05)
        conn.settimeout(None)
        conn.sendall(b'{"type": "run-satellite"}\n')
        reader = threading.Thread(target=_read_events, args=(conn, arrivals),
                                  name="bench-wyoming", daemon=True)
        reader.start()
        while not arrivals:
            if time.monotonic() > deadline:
                raise BenchError("no audio chunk from wyoming-satellite")
            time.sleep(0.01)
        time.sleep(settle)
        a, n_a = task_totals(proc.pid), len(arrivals)
        time.sleep(seconds)
        b, n_b = task_totals(proc.pid), len(arrivals)
        status, memory = proc_status(proc.pid), proc_memory(proc.pid)
    finally:
        if conn is not None:
            conn.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)    # its mic command too: its whole session
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    span, frames = b["t"] - a["t"], n_b - n_a
    cpu_s = (b["cpu_ns"] - a["cpu_ns"]) / 1e9
    return {"cpu_pct": round(100.0 * cpu_s / span, 3),
            "us_per_frame": round(1e6 * cpu_s / frames, 1) if frames else None,
            "vcs_per_s": round((b["vcs"] - a["vcs"]) / span, 1),
            "nvcs_per_s": round((b["nvcs"] - a["nvcs"]) / span, 1),
            "threads": b["threads"], "frames": frames, "window_s": round(span, 2),
            "frames_per_s": round(frames / span, 1), "startup_ready_s": None,
            "startup_first_frame_s": round(arrivals[0] - t_launch, 3),
            "startup_first_event_s": None,
            "peak_rss_mb": round(status.get("VmHWM", 0) / 1024.0, 1), **memory,
            "cpu_by_thread_pct": {}}


def _read_events(conn: socket.socket, arrivals: list[float]) -> None:
    """Wyoming events: a JSON header line, then data and payload bytes."""
    f = conn.makefile("rb")
    with contextlib.suppress(OSError, ValueError):
        while True:
            line = f.readline()
            if not line:
                return
            header = json.loads(line)
            extra = int(header.get("data_length") or 0) + int(header.get("payload_length") or 0)
            if extra:
                f.read(extra)
            if header.get("type") == "audio-chunk":
                arrivals.append(time.monotonic())
