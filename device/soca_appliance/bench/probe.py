"""The control measurement: a bare thread hand-off in another process, next to a phase."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from .common import FRAME_S, summary
from .procfs import system_cpu


def probe_main(seconds: float) -> int:
    """The control measurement: a bare Python hand-off between two threads every 20 ms.

    Run in its own process next to a phase, it shows what this machine's scheduler does
    to a waking thread right now (other jobs, CPU frequency), with no appliance code.
    Runs until ``seconds`` passed or SIGTERM; prints one JSON line: the hand-off latency
    summary in ms.
    """
    cond = threading.Condition()
    box: list[float] = []
    lat: list[float] = []
    done = threading.Event()

    def consumer() -> None:
        while not done.is_set():
            with cond:
                while not box and not done.is_set():
                    cond.wait(0.1)
                if box:
                    lat.append(time.monotonic() - box.pop())

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    thread = threading.Thread(target=consumer, daemon=True)
    thread.start()
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < seconds and not stop.is_set():
        n += 1
        time.sleep(max(0.0, t0 + n * FRAME_S - time.monotonic()))
        with cond:
            box.append(time.monotonic())
            cond.notify()
    done.set()
    thread.join(1)
    print(json.dumps(summary(lat)), flush=True)
    return 0


@contextlib.contextmanager
def control_probe(seconds: float) -> Iterator[dict[str, Any]]:
    """Run :func:`probe_main` in another process for the duration; fill the dict after."""
    out: dict[str, Any] = {}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2])]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.Popen([sys.executable, "-m", "soca_appliance.bench", "--probe",
                             str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    b0 = system_cpu()
    try:
        yield out
    finally:
        b1 = system_cpu()
        out["system_busy_pct"] = round(100.0 * (b1[0] - b0[0]) / max(1.0, b1[1] - b0[1]), 1)
        proc.terminate()
        try:
            text, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate()
        with contextlib.suppress(ValueError):
            out["handoff_ms"] = json.loads(text.strip().splitlines()[-1]) if text.strip() else None
