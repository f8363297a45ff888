"""``--floor``: what streaming costs against the floor, in the same run.

The floor is the least a Python streamer can spend on the uplink: one thread,
websocket-client, the same 640-byte frames of the same speech paced by ``time.sleep``
from a fixed origin, nothing read back (:data:`FLOOR_SCRIPT`, run with ``python -c`` so
that not even this package is imported). The appliance is ``python -m soca_appliance run``
with every feature on (the web page and /metrics, the control socket, the echo canceller
when the config knows ``duplex = "aec"``), the same speech as its ``--input``.

Both stream, in alternating rounds (floor first in odd rounds, appliance first in even
ones, so that a drifting machine load biases neither), to a :class:`Sink`: a websocket
server on 127.0.0.1 that answers ``start`` with ``ready`` and ``stt.ready`` and then only
listens (the simulator would answer the speech, and playing answers is not streaming).
Per round and process, over a window after a settling second: CPU from
``/proc/PID/task/*/schedstat`` (nanoseconds, not 10 ms ticks), voluntary and involuntary
context switches summed over threads, threads, frames that reached the sink. The report
gives medians and the ratio appliance/floor of each.

Start-up: launch → ``stt.ready`` sent by the sink and → first frame at the sink, for both;
for the appliance also launch → first event line (imports done), and where import time
goes (``-X importtime``, the biggest top-level packages). Memory: VmHWM and PSS / private
(``smaps_rollup``) at the end of each round.

``--instructions``: each side once more under valgrind's callgrind, counting the guest
instructions executed inside the window only (``callgrind_control --zero`` at its start,
``--dump`` at its end): a figure that does not depend on this machine's clock or load.
Valgrind runs everything about 50× slower and on one core, so it is per frame that the
figure compares (and per second of audio: frames × the frame period).
"""
from __future__ import annotations

import contextlib
import glob
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

from .common import BenchError, KEY, SPEECH_WAV, median, progress
from .procfs import proc_memory, proc_status
from .sink import Sink

# The bare streamer. argv: URL FRAME_MS WAV; the key comes in $SOCA_PRIVATE_KEY (never in
# argv). Prints "streaming" once stt.ready came, then sends until SIGTERM.
FLOOR_SCRIPT = r"""
import json, os, signal, sys, time, wave
import websocket
url, frame_ms, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
key = os.environ.pop("SOCA_PRIVATE_KEY")
size = 32 * frame_ms
with wave.open(path, "rb") as w:
    pcm = w.readframes(w.getnframes())
pcm += bytes(-len(pcm) % size)
frames = [pcm[i:i + size] for i in range(0, len(pcm), size)]
silence = bytes(size)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
ws = websocket.create_connection(url, timeout=10)
ws.send(json.dumps({"type": "start", "private_key": key, "session_id": "floor",
                    "agent_id": "bench-agent", "lang": "en", "sr": 16000}))
while json.loads(ws.recv()).get("type") != "stt.ready":
    pass
print("streaming", flush=True)
period = frame_ms / 1000.0
t0 = time.monotonic()
i = 0
while not stop:
    delay = t0 + (i + 1) * period - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    ws.send_binary(frames[i] if i < len(frames) else silence)
    i += 1
ws.shutdown()
"""


# The appliance exactly as ``python -m soca_appliance``, plus: on SIGUSR1 it writes its
# threads' native ids and Python names to stderr (the main thread runs the handler within
# a second: it wakes once a second in Appliance.run).
NAMED_LAUNCHER = r"""
import json, signal, sys, threading
def names(signum, frame):
    sys.stderr.write("bench-threads " + json.dumps(
        {str(t.native_id): t.name for t in threading.enumerate()}) + "\n")
    sys.stderr.flush()
signal.signal(signal.SIGUSR1, names)
from soca_appliance import cli
sys.exit(cli.main(sys.argv[1:]))
"""


# --- /proc, summed over every thread ------------------------------------------------

def task_totals(pid: int) -> dict[str, float]:
    """CPU ns (schedstat), voluntary/involuntary switches and threads, over all threads."""
    cpu_ns = vcs = nvcs = 0
    threads = 0
    per_task: dict[int, tuple[str, int]] = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/schedstat", encoding="ascii") as fh:
                ns = int(fh.read().split()[0])
            with open(f"{task}/comm", encoding="utf-8") as fh:
                per_task[int(task.rsplit("/", 1)[1])] = (fh.read().strip(), ns)
            cpu_ns += ns
            with open(f"{task}/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("voluntary_ctxt_switches"):
                        vcs += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        nvcs += int(line.split()[1])
            threads += 1
        except (OSError, ValueError, IndexError):
            continue                      # a thread that ended between listing and reading
    return {"t": time.monotonic(), "cpu_ns": cpu_ns, "vcs": vcs, "nvcs": nvcs,
            "threads": threads, "tasks": per_task}


def threads_pct(a: dict[str, Any], b: dict[str, Any], names: dict[str, str]
                ) -> dict[str, float]:
    """% of a core per thread between two :func:`task_totals`, by Python thread name where
    the process told it (Python does not name its OS threads; SDL and PortAudio do)."""
    span = b["t"] - a["t"]
    out: dict[str, float] = {}
    for tid, (comm, ns) in b["tasks"].items():
        name = names.get(str(tid), comm)
        out[name] = out.get(name, 0.0) + 100.0 * (ns - a["tasks"].get(tid, (comm, 0))[1]) \
            / 1e9 / span
    return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


# --- the two streamers ---------------------------------------------------------------

def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCA_")}
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(SOCA_PRIVATE_KEY=KEY, PYTHONUNBUFFERED="1",
               SDL_AUDIODRIVER=os.environ.get("SDL_AUDIODRIVER") or "dummy",
               PYGAME_HIDE_SUPPORT_PROMPT="1")
    return env


CONFIG_NAME = "floor-config.toml"     # written once per run by run_floor


def appliance_config(workdir: Path, frame_ms: int, duplex: Optional[str] = None) -> Path:
    """Every feature on: the web page and /metrics (on a free port), the control socket,
    the echo canceller when this version's config has ``duplex = "aec"`` (or ``duplex``,
    the bench's ``--floor-duplex``: ``half`` measures the streaming path alone)."""
    duplex = duplex or default_duplex()
    path = workdir / CONFIG_NAME
    path.write_text(f'frame_ms = {frame_ms}\nduplex = "{duplex}"\n'
                    f'control_socket = "{workdir / "floor-ctl.sock"}"\n'
                    '[web]\nlisten = "127.0.0.1:0"\n')
    return path


def default_duplex() -> str:
    """Every feature on: ``aec`` when this version's config knows it."""
    from .. import config
    return "aec" if "aec" in getattr(config, "_CHOICES", {}).get("duplex", ()) else "half"


def command(kind: str, url: str, workdir: Path, frame_ms: int,
            launcher: tuple[str, ...] = ("-m", "soca_appliance")) -> list[str]:
    if kind == "floor":
        return [sys.executable, "-c", FLOOR_SCRIPT, url, str(frame_ms), str(SPEECH_WAV)]
    return [sys.executable, *launcher, "run", "--url", url,
            "--agent-id", "bench-agent", "--lang", "en", "--input", str(SPEECH_WAV),
            "--gpio", "mock", "--log-format", "json",
            "--config", str(workdir / CONFIG_NAME)]


class Streamer:
    """One streamer as a subprocess, its stdout lines timestamped as they come."""

    def __init__(self, kind: str, url: str, workdir: Path, frame_ms: int,
                 prefix: tuple[str, ...] = (), extra_env: Optional[dict[str, str]] = None,
                 launcher: tuple[str, ...] = ("-m", "soca_appliance")) -> None:
        self.kind = kind
        env = _env()
        env.update(extra_env or {})
        self._stderr = tempfile.TemporaryFile(dir=workdir)
        self.lines: list[tuple[float, str]] = []
        self.t_launch = time.monotonic()
        self.proc = subprocess.Popen([*prefix, *command(kind, url, workdir, frame_ms, launcher)],
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=env,
                                     text=True, bufsize=1)
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name="bench-streamer-out",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))

    def first_event(self) -> Optional[float]:
        return self.lines[0][0] if self.lines else None

    def event(self, name: str) -> Optional[tuple[float, dict[str, Any]]]:
        for t, line in list(self.lines):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == name:
                    return t, record
        return None

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)
        return self.proc.returncode

    def close(self) -> None:
        self._stderr.close()


def _round(kind: str, sink: Sink, workdir: Path, frame_ms: int, seconds: float,
           settle: float) -> dict[str, Any]:
    s = Streamer(kind, sink.url, workdir, frame_ms, launcher=("-c", NAMED_LAUNCHER))
    names: dict[str, str] = {}
    try:
        conn = sink.first_frame(s.t_launch, 60.0, s.proc)
        time.sleep(settle)
        a, n_a = task_totals(s.pid), len(conn.arrivals)
        time.sleep(seconds)
        b, n_b = task_totals(s.pid), len(conn.arrivals)
        status = proc_status(s.pid)
        memory = proc_memory(s.pid)
        first_event = s.first_event()
        if kind == "appliance":
            names = _thread_names(s)
        code = s.stop()
        if code not in (0, -signal.SIGTERM):
            raise BenchError(f"{kind} exited with {code}: {s.stderr()[-400:].strip()}")
    finally:
        s.stop()
        s.close()
    span = b["t"] - a["t"]
    frames = n_b - n_a
    cpu_s = (b["cpu_ns"] - a["cpu_ns"]) / 1e9
    return {
        "cpu_pct": round(100.0 * cpu_s / span, 3),
        "us_per_frame": round(1e6 * cpu_s / frames, 1) if frames else None,
        "vcs_per_s": round((b["vcs"] - a["vcs"]) / span, 1),
        "nvcs_per_s": round((b["nvcs"] - a["nvcs"]) / span, 1),
        "threads": b["threads"], "frames": frames, "window_s": round(span, 2),
        "frames_per_s": round(frames / span, 1),
        "startup_ready_s": round(conn.t_ready - s.t_launch, 3) if conn.t_ready else None,
        "startup_first_frame_s": round(conn.arrivals[0] - s.t_launch, 3),
        "startup_first_event_s": (round(first_event - s.t_launch, 3)
                                  if first_event is not None and kind == "appliance" else None),
        "peak_rss_mb": round(status.get("VmHWM", 0) / 1024.0, 1), **memory,
        "cpu_by_thread_pct": threads_pct(a, b, names),
    }


def _thread_names(s: Streamer) -> dict[str, str]:
    with contextlib.suppress(OSError):
        os.kill(s.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        for line in s.stderr().splitlines():
            if line.startswith("bench-threads "):
                with contextlib.suppress(ValueError):
                    return json.loads(line.split(" ", 1)[1])
        time.sleep(0.1)
    return {}


_KEYS = ("cpu_pct", "us_per_frame", "vcs_per_s", "nvcs_per_s", "threads", "frames_per_s",
         "startup_ready_s", "startup_first_frame_s", "startup_first_event_s", "peak_rss_mb",
         "pss_mb", "private_mb")


def run_floor(workdir: Path, rounds: int, seconds: float, frame_ms: int = 20,
              settle: float = 1.0, instructions: bool = False,
              importtime: bool = True, wyoming: Optional[str] = None,
              duplex: Optional[str] = None) -> dict[str, Any]:
    """Alternating rounds of the floor and the appliance (and wyoming-satellite at 20 and
    64 ms chunks when its executable is given); medians and ratios."""
    duplex = duplex or default_duplex()
    config_text = appliance_config(workdir, frame_ms, duplex).read_text()
    kinds = ["floor", "appliance"] + (["wyoming_20ms", "wyoming_64ms"] if wyoming else [])
    per: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    with Sink() as sink:
        for n in range(rounds):
            for kind in (kinds if n % 2 == 0 else kinds[::-1]):
                progress(f"floor {n + 1}/{rounds}: {kind} streaming for {seconds:g} s")
                if kind.startswith("wyoming") and wyoming:
                    from .wyoming import wyoming_round
                    row = wyoming_round(wyoming, int(kind[8:10]), seconds, settle)
                else:
                    row = _round(kind, sink, workdir, frame_ms, seconds, settle)
                per[kind].append(row)
        out: dict[str, Any] = {
            "what": "the same speech, 640-byte frames every 20 ms, to a listening sink; "
                    "floor = one-thread websocket-client + time.sleep; appliance = "
                    "soca-appliance run, every feature on; alternating rounds, medians"
            if frame_ms == 20 else f"as at 20 ms, with {frame_ms} ms frames",
            "frame_ms": frame_ms, "rounds": rounds, "window_s": seconds,
            "appliance_config": config_text,
            "duplex": duplex,
        }
        for kind, rows in per.items():
            out[kind] = {k: _med([r[k] for r in rows]) for k in _KEYS}
            names = {n for r in rows for n in r["cpu_by_thread_pct"]}
            out[kind]["cpu_by_thread_pct"] = dict(sorted(
                ((n, _med([r["cpu_by_thread_pct"].get(n, 0.0) for r in rows])) for n in names),
                key=lambda kv: -(kv[1] or 0)))
            out[kind]["rounds"] = rows
        out["ratio"] = {k: _ratio(out["appliance"][k], out["floor"][k])
                        for k in ("cpu_pct", "us_per_frame", "vcs_per_s", "threads",
                                  "peak_rss_mb", "pss_mb", "startup_first_frame_s")}
        for kind in kinds[2:]:
            out["ratio"][kind] = {k: _ratio(out[kind][k], out["floor"][k])
                                  for k in ("cpu_pct", "vcs_per_s", "peak_rss_mb", "pss_mb")}
        # Each round's pair compared too: robust to the load drifting between rounds.
        out["ratio"]["cpu_pct_paired_median"] = _med(
            [_ratio(a["cpu_pct"], f["cpu_pct"]) for a, f in zip(per["appliance"], per["floor"])])
        if importtime:
            from .imports import import_profile
            progress("floor: appliance start-up under -X importtime")
            out["imports"] = import_profile(sink, workdir, frame_ms)
        if instructions:
            from .instructions import count_instructions
            out["instructions"] = {kind: count_instructions(kind, sink, workdir, frame_ms)
                                   for kind in ("floor", "appliance")}
            f, a = (out["instructions"][k].get("per_frame") for k in ("floor", "appliance"))
            out["ratio"]["instructions_per_frame"] = _ratio(a, f)
    return out


def _med(values: list[Any]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    m = median(vals)
    return None if m is None else round(m, 3)


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or not b else round(a / b, 2)
