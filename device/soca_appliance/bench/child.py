"""The appliance as a subprocess (``python -m soca_appliance run``), its events read live."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .common import BenchError, KEY, SPEECH_WAV
from .procfs import proc_cpu_s, proc_fds, proc_status


# The child for the cost phase: the CLI exactly as ``python -m soca_appliance run``, plus
# one listener. It keeps every uplink latency (and when each frame was written) and saves
# them, with the drop counters, to $SOCA_BENCH_DUMP when the appliance shuts down.
# CLOCK_MONOTONIC is system-wide on Linux: the times compare with the bench's own.
_INSTRUMENTED = r"""
import collections, json, os, sys, threading, time
from soca_appliance import appliance, cli
dump = os.environ.pop("SOCA_BENCH_DUMP")
init, shutdown = appliance.Appliance.__init__, appliance.Appliance.shutdown
def bench_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    sends = self._bench_sends = []
    class Latencies(collections.deque):
        def append(self, value):
            sends.append(time.monotonic())
            collections.deque.append(self, value)
    self.link.stats.latencies = Latencies(maxlen=1 << 20)
def bench_shutdown(self):
    st = self.link.stats
    with open(dump, "w") as fh:
        json.dump({"latency_s": list(st.latencies), "send_times": self._bench_sends,
                   "frames_sent": st.frames_sent,
                   "frames_dropped_not_ready": st.frames_dropped_not_ready,
                   "frames_dropped_full": st.frames_dropped_full,
                   "threads": {str(t.native_id): t.name for t in threading.enumerate()}}, fh)
    shutdown(self)
appliance.Appliance.__init__, appliance.Appliance.shutdown = bench_init, bench_shutdown
sys.exit(cli.main(sys.argv[1:]))
"""


class Child:
    """``python -m soca_appliance run`` against a simulator, its JSON events read live.

    ``instrument``: the same command through :data:`_INSTRUMENTED`, which saves the
    link's uplink figures at shutdown (see :meth:`uplink`).
    """

    def __init__(self, sim_url: str, wav: Path, workdir: Path, instrument: bool = False,
                 frame_ms: int = 20) -> None:
        # Defaults, except: the control socket (on by default, as on the kiosk) lives in
        # the bench's own folder, not in /run.
        cfg = workdir / "bench-config.toml"
        cfg.write_text(f'frame_ms = {frame_ms}\ncontrol_socket = "{workdir / "ctl.sock"}"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOCA_")}
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(
            [package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.update(SOCA_PRIVATE_KEY=KEY, PYTHONUNBUFFERED="1",
                   SDL_AUDIODRIVER=os.environ.get("SDL_AUDIODRIVER") or "dummy",
                   PYGAME_HIDE_SUPPORT_PROMPT="1")
        self.dump: Optional[Path] = None
        launcher = ["-m", "soca_appliance"]
        if instrument:
            self.dump = workdir / f"uplink-{os.getpid()}-{time.monotonic_ns()}.json"
            env["SOCA_BENCH_DUMP"] = str(self.dump)
            launcher = ["-c", _INSTRUMENTED]
        self.cmd = [sys.executable, *launcher, "run", "--url", sim_url,
                    "--agent-id", "bench-agent", "--lang", "en", "--input", str(wav),
                    "--gpio", "mock", "--log-format", "json", "--config", str(cfg)]
        self._stderr = tempfile.TemporaryFile(dir=workdir)
        self._cond = threading.Condition()
        self.records: list[tuple[float, dict[str, Any]]] = []
        self.t_popen = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=env, text=True, bufsize=1)
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name="bench-child-out", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t = time.monotonic()
            try:
                record = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self.records.append((t, record))
                self._cond.notify_all()

    def wait(self, event: str, timeout: float, **match: Any) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, rec in self.records:
                    if rec.get("event") == event and all(rec.get(k) == v
                                                         for k, v in match.items()):
                        return t, rec
                if self.proc.poll() is not None:
                    raise BenchError(f"the appliance exited with {self.proc.returncode} "
                                     f"before {event}: {self.stderr_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"no {event} from the appliance within {timeout:g} s")
                self._cond.wait(min(left, 0.2))

    def count(self, event: str, **match: Any) -> int:
        with self._cond:
            return sum(1 for _, r in self.records if r.get("event") == event
                       and all(r.get(k) == v for k, v in match.items()))

    def last_state(self) -> tuple[float, str]:
        with self._cond:
            for t, r in reversed(self.records):
                if r.get("event") == "state":
                    return t, r["state"]
        return 0.0, ""

    def stderr_tail(self, chars: int = 600) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-chars:].strip()

    def sample(self) -> dict[str, Any]:
        st = proc_status(self.pid)
        return {"t": time.monotonic(), "cpu_s": proc_cpu_s(self.pid),
                "rss_kb": st.get("VmRSS", 0), "hwm_kb": st.get("VmHWM", 0),
                "threads": st.get("Threads", 0), "fds": proc_fds(self.pid)}

    def uplink(self) -> Optional[dict[str, Any]]:
        """The instrumented child's uplink figures, once it has shut down."""
        if self.dump is None or not self.dump.exists():
            return None
        return json.loads(self.dump.read_text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)
        self._stderr.close()
        return self.proc.returncode


def _sampler(child: Child, every: float, sink: list[dict[str, Any]],
             stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                sink.append(child.sample())
            stop.wait(every)
    thread = threading.Thread(target=run, name="bench-sampler", daemon=True)
    thread.start()
    return thread


def measure_startup(workdir: Path, frame_ms: int = 20) -> dict[str, float]:
    """Popen → first event line (imports done), audio.output, connected (after stt.ready)."""
    from ..simulator import Simulator
    with Simulator(expected_key=KEY) as sim:
        child = Child(sim.url, SPEECH_WAV, workdir, frame_ms=frame_ms)
        try:
            t_conn, _ = child.wait("connected", timeout=30)
            return _startup_times(child, t_conn)
        finally:
            child.stop()


def _startup_times(child: Child, t_conn: float) -> dict[str, float]:
    with child._cond:
        first = child.records[0][0] if child.records else t_conn
        audio = next((t for t, r in child.records if r.get("event") == "audio.output"), None)
    return {"connected_s": t_conn - child.t_popen, "first_event_s": first - child.t_popen,
            "audio_output_s": (audio - child.t_popen) if audio is not None else None}
