"""``soca-appliance bench``: how fast the appliance reacts, and what it costs a small Pi.

Runs the real appliance against the real :class:`~soca_appliance.simulator.Simulator` on
127.0.0.1, with the bundled English speech (``assets/demo-en.wav``) as the microphone,
SDL's ``dummy`` audio driver unless ``SDL_AUDIODRIVER`` is set, and gpiozero's mock pins.

Phases, per run (``--runs N``):

* in-process (the appliance's objects in this process, so that the moments that matter
  can be timestamped in the very thread that handles them): a spoken turn answered by the
  simulator, then server barges and button presses while a sentence plays, each followed
  by a new sentence in a new seq. Timestamps come from a wrapper around the link's
  ``on_message`` callback (a barge, the last chunk of a sentence), from the gpiozero mock
  pin (the button's release), and from an event-log listener (``sentence.play`` and
  ``sentence.stop``, called synchronously in the emitting thread).
* subprocess: ``soca-appliance run`` alone (the simulator stays in this process), for
  start-up (Popen → ``connected``, which follows ``stt.ready``), the uplink (the link's
  ``stats.latencies``, saved at shutdown by a small launcher around the CLI), CPU from
  ``/proc/PID/stat`` and per thread, peak RSS (``VmHWM``), threads, open fds, and the
  frames' arrival times at the simulator.
* a control probe in its own process during each phase: a bare Python thread hand-off
  every 20 ms, i.e. what this machine's scheduler alone does to a waking thread.

``--minutes N`` runs a soak instead: the appliance for N minutes with a spoken turn about
every 11 s, sampling RSS, threads and open file descriptors. ``--compare-progressive``
adds time to first audio with ``progressive_playback`` off and on.

Nothing here changes the appliance: the bench wraps callbacks and listens. See
``BENCHMARKS.md`` for figures and how to read them.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections import deque
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Optional

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


# --- /proc readings (Linux) ------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        data = fh.read()
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK     # utime, stime


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS/VmHWM in kB and Threads, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def proc_memory(pid: int | str = "self") -> dict[str, float]:
    """Proportional (PSS) and private memory in MB from /proc/PID/smaps_rollup: RSS counts
    every shared library page the process touched; these say what it costs on its own."""
    kb: dict[str, int] = {}
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("Pss", "Private_Clean", "Private_Dirty"):
                    kb[key] = int(value.split()[0])
    if not kb:
        return {}
    return {"pss_mb": round(kb.get("Pss", 0) / 1024.0, 1),
            "private_mb": round((kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0))
                                / 1024.0, 1)}


def proc_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_tasks_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Thread id -> (``comm``, CPU seconds) for every thread of a process."""
    out: dict[int, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm", encoding="utf-8") as fh:
                comm = fh.read().strip()
            out[int(tid)] = (comm, proc_cpu_s(f"{pid}/task/{tid}"))
        except OSError:
            continue
    return out


def threads_cpu_pct(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                    seconds: float, names: dict[str, str]) -> dict[str, float]:
    """% of one core per thread over an interval, by Python thread name where known
    (Python does not name its OS threads; SDL does)."""
    out: dict[str, float] = {}
    for tid, (comm, cpu) in after.items():
        name = names.get(str(tid), comm)
        used = cpu - before.get(tid, (comm, 0.0))[1]
        out[name] = out.get(name, 0.0) + 100.0 * used / seconds
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return float(sum(parts) - idle), float(sum(parts))


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model, "machine": platform.machine(), "kernel": platform.release(),
        "python": platform.python_version(),
        "sdl_audiodriver": os.environ.get("SDL_AUDIODRIVER", ""),
    }
    from .player import pygame
    info["pygame"] = pygame.version.ver
    info["sdl"] = ".".join(map(str, pygame.get_sdl_version()))
    with contextlib.suppress(Exception):
        info["sdl_mixer"] = ".".join(map(str, pygame.mixer.get_sdl_mixer_version()))
    import websocket
    info["websocket_client"] = getattr(websocket, "__version__", "")
    with contextlib.suppress(OSError):
        info["loadavg_start"] = Path("/proc/loadavg").read_text().split()[:3]
    return info


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
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent)]
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


# --- the appliance in this process -----------------------------------------------------

class InProcess:
    """The real :class:`Appliance` with listeners: the Harness of tests/test_appliance.py."""

    def __init__(self, sim: Any, wav: Path, **overrides: Any) -> None:
        from . import config
        from .appliance import Appliance
        from .events import EventLog, setup_logging
        from .protocol import Barge, SentenceChunk, frame_bytes
        from .wavsource import WavSource

        values: dict[str, Any] = dict(url=sim.url, agent_id="bench-agent", lang="en",
                                      gpio="mock", log_format="json", backoff_initial=0.1,
                                      backoff_max=0.5)
        extra = {k: overrides.pop(k) for k in list(overrides) if k not in config.known_keys()}
        values.update(overrides)
        cfg = config.load(Path(os.devnull), env={}, overrides=values)
        if extra:                       # keys config.load does not know (yet): set directly
            cfg = dataclasses.replace(cfg, **extra)
        self.cfg = cfg
        self._cond = threading.Condition()
        self.records: list[tuple[float, dict[str, Any]]] = []
        self.barge_rx: dict[int, float] = {}                 # seq -> link thread handles it
        self.first_chunk: dict[tuple[int, Any], float] = {}  # (seq, id) -> first chunk handled
        self.last_chunk: dict[tuple[int, Any], tuple[float, bool]] = {}   # -> (t, player busy)
        self.send_times: list[float] = []
        self.events = EventLog("json", stream=_NullStream())
        self.events.subscribe(self._listen)
        setup_logging(self.events, "info")
        self.source = WavSource(wav, frame_bytes(cfg.frame_ms))
        self.app = Appliance(cfg, events=self.events, source=self.source, private_key=KEY)
        link = self.app.link
        handle = link.cb.on_message
        player = self.app.player

        def on_message(msg: Any) -> None:
            if isinstance(msg, SentenceChunk):
                key = (msg.seq, msg.sentence_id)
                if msg.is_last:
                    busy = player.busy
                    self.last_chunk[key] = (time.monotonic(), busy)
                self.first_chunk.setdefault(key, time.monotonic())
            elif isinstance(msg, Barge):
                self.barge_rx.setdefault(msg.seq, time.monotonic())
            handle(msg)

        link.cb.on_message = on_message
        # The link appends a latency right after each socket write: note when, too.
        send_times = self.send_times

        class _Latencies(deque):
            def append(self, value: float) -> None:     # noqa: D102 - the link thread
                send_times.append(time.monotonic())
                super().append(value)

        link.stats.latencies = _Latencies(link.stats.latencies, link.stats.latencies.maxlen)

    def _listen(self, record: dict[str, Any]) -> None:
        t = time.monotonic()
        with self._cond:
            self.records.append((t, record))
            self._cond.notify_all()

    def wait(self, event: str, timeout: float = 15.0, since: int = 0,
             **match: Any) -> tuple[float, dict[str, Any]]:
        """The first event named ``event`` matching ``match`` at index ``since`` or later."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, rec in self.records[since:]:
                    if rec["event"] == event and all(rec.get(k) == v for k, v in match.items()):
                        return t, rec
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"no {event} {match or ''} within {timeout:g} s")
                self._cond.wait(left)

    def mark(self) -> int:
        with self._cond:
            return len(self.records)

    def all(self, event: str) -> list[tuple[float, dict[str, Any]]]:
        with self._cond:
            return [(t, r) for t, r in self.records if r["event"] == event]

    def __enter__(self) -> "InProcess":
        self.app.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.app.shutdown()


@contextlib.contextmanager
def _quiet_soca_logging() -> Iterator[None]:
    """Give the ``soca`` logger back as it was (the in-process phases reconfigure it)."""
    root = logging.getLogger("soca")
    saved = (list(root.handlers), root.level, root.propagate)
    try:
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        root.propagate = saved[2]


@contextlib.contextmanager
def arrivals(sink: list[float]) -> Iterator[bool]:
    """Note when each audio frame reaches the simulator's session handler.

    The simulator has no hook for this yet: wrap its session's ``audio`` coroutine for the
    duration (the bench process only), and say so when that is not possible.
    """
    from . import simulator
    cls = getattr(simulator, "_Session", None)
    original = getattr(cls, "audio", None)
    if original is None:
        yield False
        return

    async def audio(self: Any, data: bytes) -> None:
        sink.append(time.monotonic())
        await original(self, data)

    cls.audio = audio
    try:
        yield True
    finally:
        cls.audio = original


def _sentence_messages(seq: int, sentence_id: int, mp3: bytes, text: str,
                       chunks: Optional[list[bytes]] = None) -> list[dict[str, Any]]:
    """A sentence as the server sends it: chunks, then an empty last chunk."""
    from .simulator import split_chunks
    parts = chunks if chunks is not None else split_chunks(mp3)
    msgs: list[dict[str, Any]] = [
        {"stepType": "sentence", "seq": seq, "sentenceId": sentence_id, "chunkIndex": i,
         "isLastChunk": False, "audioBase64": base64.b64encode(p).decode("ascii"),
         "audioMime": "audio/mp3", **({"contentStep": text} if i == 0 else {})}
        for i, p in enumerate(parts)]
    msgs.append({"stepType": "sentence", "seq": seq, "sentenceId": sentence_id,
                 "chunkIndex": len(parts), "isLastChunk": True, "audioBase64": None,
                 "audioMime": "audio/mp3"})
    return msgs


def _answer_mp3s() -> list[bytes]:
    return [p.read_bytes() for p in sorted(ASSETS.glob("answer-en-*.mp3"))]


def run_in_process(barges: int, presses: int, rng: random.Random,
                   frame_ms: int = 20) -> dict[str, Any]:
    """One conversation in this process: a spoken turn, then barges and button presses,
    with the control probe running next to it."""
    mp3s = _answer_mp3s()
    out: dict[str, Any] = {}
    with control_probe(600) as control:
        _conversation(out, barges, presses, rng, mp3s, frame_ms)
    out["control"] = control
    return out


def _conversation(out: dict[str, Any], barges: int, presses: int, rng: random.Random,
                  mp3s: list[bytes], frame_ms: int) -> None:
    from .simulator import Simulator
    with _quiet_soca_logging(), Simulator(expected_key=KEY) as sim, \
            InProcess(sim, SPEECH_WAV, frame_ms=frame_ms,
                      # "sentence complete -> audio starts" is the collect-then-play path;
                      # progressive playback is measured by --compare-progressive
                      progressive_playback=False) as h:
        app = h.app
        _, audio = h.wait("audio.output", timeout=10)
        out["mixer"] = {k: audio[k] for k in ("frequency", "buffer", "buffer_ms", "driver")}
        h.wait("connected", timeout=15)
        # The simulator answers the first spoken question (seq 1).
        _, first = h.wait("sentence.play", timeout=30, seq=1)
        seq, sid = 1, first["sentence_id"]
        server, button = [], []
        next_id = 10_000
        kinds = ["server"] * barges + ["button"] * presses
        rng.shuffle(kinds)
        for kind in kinds:
            time.sleep(rng.uniform(0.05, 0.35))       # somewhere in the playing sentence
            mark = h.mark()
            if kind == "server":
                new_seq = max(seq, SEQ_BASE) + 1
                if sim.inject({"type": "barge", "seq": new_seq, "reason": "bench"}) < 1:
                    raise BenchError("the appliance is not connected to the simulator")
                t_stop, _ = h.wait("sentence.stop", since=mark, seq=seq, sentence_id=sid,
                                   reason="barge")
                t_rx = h.barge_rx.get(new_seq)
                if t_rx is None:
                    raise BenchError(f"barge seq {new_seq} stopped audio but was not seen")
                server.append(t_stop - t_rx)
            else:
                pin = app.panel.button.pin
                pin.drive_low()
                time.sleep(0.06)                       # a short press, past the bounce time
                t_press = time.monotonic()
                pin.drive_high()                       # a short press fires on release
                t_stop, _ = h.wait("sentence.stop", since=mark, seq=seq, sentence_id=sid,
                                   reason="button")
                button.append(t_stop - t_press)
                new_seq = max(seq, SEQ_BASE) + 1       # the button retired the current seq
            # Playback again: a new sentence in the new seq.
            seq, sid = new_seq, next_id
            next_id += 1
            for msg in _sentence_messages(seq, sid, mp3s[sid % len(mp3s)], "bench sentence"):
                sim.inject(msg)
            h.wait("sentence.play", timeout=10, since=mark, seq=seq, sentence_id=sid)
        # The figures.
        plays = {(r["seq"], r["sentence_id"]): t for t, r in h.all("sentence.play")}
        starts, queued = [], 0
        for key, (t_last, busy) in h.last_chunk.items():
            if key not in plays:
                continue
            if busy:
                queued += 1            # it waited for the sentence before it: not a latency
            else:
                starts.append(plays[key] - t_last)
        stats = app.link.stats
        out["uplink"] = {"latency_s": list(stats.latencies), "send_times": list(h.send_times),
                         "frames_sent": stats.frames_sent,
                         "frames_dropped_not_ready": stats.frames_dropped_not_ready,
                         "frames_dropped_full": stats.frames_dropped_full}
        out["server_barge_s"] = server
        out["button_s"] = button
        out["sentence_start_s"] = starts
        out["sentences_queued"] = queued
        out["sim_stats"] = {k: v for k, v in sim.stats().items() if k != "last_start"}


# --- the appliance as a subprocess -----------------------------------------------------

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
        package_root = str(Path(__file__).resolve().parent.parent)
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
    from .simulator import Simulator
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


def run_subprocess(workdir: Path, quick: bool, frame_ms: int = 20) -> dict[str, Any]:
    """The appliance alone: start-up, uplink, CPU over a conversation and idle streaming,
    memory; with the control probe running next to it."""
    with control_probe(600) as control:
        out = _appliance_alone(workdir, quick, frame_ms)
    out["control"] = control
    return out


def _appliance_alone(workdir: Path, quick: bool, frame_ms: int) -> dict[str, Any]:
    from .simulator import Simulator
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


# --- soak ------------------------------------------------------------------------------

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
    from .simulator import Simulator
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


# --- progressive playback (when the config key exists) ----------------------------------

def has_progressive() -> bool:
    from .config import Config
    return "progressive_playback" in {f.name for f in dataclasses.fields(Config)}


def run_progressive(workdir: Path, repeats: int, rng: random.Random) -> dict[str, Any]:
    """Time to first audio (first chunk of a sentence handled → sentence.play), off vs on.

    Sentences are injected the way the simulator sends them: its chunking, one chunk every
    ``chunk_delay``; the microphone is silence, so the simulator adds nothing of its own.
    """
    from .simulator import Simulator, split_chunks
    silent = workdir / "silence.wav"
    with wave.open(str(silent), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(32000))
    mp3s = _answer_mp3s()
    out: dict[str, Any] = {}
    for on in (False, True):
        ttfa: list[float] = []
        with _quiet_soca_logging(), Simulator(expected_key=KEY) as sim, \
                InProcess(sim, silent, progressive_playback=on) as h:
            h.wait("connected", timeout=15)
            seq = SEQ_BASE
            for k in range(repeats):
                seq += 1
                sid = 20_000 + k
                mp3 = mp3s[k % len(mp3s)]
                mark = h.mark()
                msgs = _sentence_messages(seq, sid, mp3, "ttfa", split_chunks(mp3))
                for msg in msgs:
                    sim.inject(msg)
                    if not msg["isLastChunk"]:
                        time.sleep(sim.chunk_delay)
                t_play, _ = h.wait("sentence.play", timeout=10, since=mark, seq=seq,
                                   sentence_id=sid)
                ttfa.append(t_play - h.first_chunk[(seq, sid)])
                time.sleep(rng.uniform(0.05, 0.2))
                sim.inject({"type": "barge", "seq": seq + 1, "reason": "bench"})
                h.wait("sentence.stop", timeout=10, since=mark, seq=seq, sentence_id=sid)
                seq += 1
        out["on" if on else "off"] = summary(ttfa)
    return out


# --- the report --------------------------------------------------------------------------

def _verdict(value: Optional[float], target: str) -> Optional[bool]:
    return None if value is None else value <= TARGETS[target][0]


def build_report(machine: dict[str, Any], runs_in: list[dict[str, Any]],
                 runs_sub: list[dict[str, Any]], startups: list[dict[str, float]],
                 args: argparse.Namespace) -> dict[str, Any]:
    period = args.frame_ms / 1000.0

    def pooled_jitter(series: list[list[float]]) -> dict[str, Any]:
        deviations = [abs((b - a) - period) for ts in series for a, b in zip(ts, ts[1:])]
        return {**summary(deviations),
                "gaps": sum(jitter(ts, period)["gaps"] for ts in series)}

    def drops(ups: list[dict[str, Any]]) -> dict[str, int]:
        return {k: sum(u[k] for u in ups)
                for k in ("frames_sent", "frames_dropped_not_ready", "frames_dropped_full")}

    ups_sub = [r["uplink"] for r in runs_sub]
    ups_in = [r["uplink"] for r in runs_in]
    measurable = all(r["server_arrivals"] is not None for r in runs_sub)
    uplink = {
        "scope": "latency_ms, send_jitter_ms, frames_*: the appliance alone (the subprocess); "
                 "*_in_process: during the in-process phase, the simulator sharing the GIL",
        "latency_ms": summary([v for u in ups_sub for v in u["latency_s"]]),
        "send_jitter_ms": pooled_jitter([u["send_times"] for u in ups_sub]),
        "server_jitter_ms": (pooled_jitter([r["server_arrivals"] for r in runs_sub])
                             if measurable else None),
        **drops(ups_sub),
        "latency_in_process_ms": summary([v for u in ups_in for v in u["latency_s"]]),
        "send_jitter_in_process_ms": pooled_jitter([u["send_times"] for u in ups_in]),
        "in_process": drops(ups_in),
    }
    server = summary([v for r in runs_in for v in r["server_barge_s"]])
    button = summary([v for r in runs_in for v in r["button_s"]])
    starts = summary([v for r in runs_in for v in r["sentence_start_s"]])
    mixer = runs_in[0]["mixer"] if runs_in else {}
    startup_s = [s["connected_s"] for s in startups]
    cost_pct = [r["cpu_pct_conversation"] for r in runs_sub]
    controls = [r["control"] for r in runs_in + runs_sub
                if r.get("control", {}).get("handoff_ms")]
    report: dict[str, Any] = {
        "bench": {"command": " ".join(["python -m soca_appliance.bench"] + args.argv),
                  "runs": args.runs, "quick": args.quick, "frame_ms": args.frame_ms,
                  "machine": machine},
        "control": {
            "what": "bare Python thread hand-off every 20 ms in another process during each "
                    "phase: this machine's scheduling noise, no appliance code",
            "handoff_ms": {"n": sum(c["handoff_ms"]["n"] for c in controls),
                           "p50": _r(median([c["handoff_ms"]["p50"] for c in controls]), 3),
                           "p99": _r(max((c["handoff_ms"]["p99"] for c in controls),
                                         default=None), 3),
                           "max": _r(max((c["handoff_ms"]["max"] for c in controls),
                                         default=None), 3)},
            "system_busy_pct": [r.get("control", {}).get("system_busy_pct")
                                for pair in zip(runs_in, runs_sub) for r in pair],
        },
        "uplink": uplink,
        "barge": {"server_ms": server, "button_ms": button,
                  "mixer_buffer": {"samples": mixer.get("buffer"), "ms": mixer.get("buffer_ms"),
                                   "frequency": mixer.get("frequency"),
                                   "driver": mixer.get("driver")}},
        "playback": {"sentence_start_ms": starts,
                     "sentences_queued_excluded": sum(r["sentences_queued"] for r in runs_in)},
        "startup": {"n": len(startup_s), "connected_s": [round(s, 3) for s in startup_s],
                    "median_s": _r(median(startup_s), 3),
                    "first_event_median_s": _r(median([s["first_event_s"] for s in startups]), 3),
                    "audio_output_median_s": _r(median([s["audio_output_s"] for s in startups
                                                        if s["audio_output_s"] is not None]), 3),
                    "cpu_s_median": _r(median([s["cpu_s"] for s in startups if "cpu_s" in s]), 3)},
        "cost": {"cpu_pct_streaming": _r(median(cost_pct), 2),
                 "cpu_pct_streaming_max": _r(max(cost_pct, default=None), 2),
                 "cpu_s_per_min": _r(median([r["cpu_s_per_min"] for r in runs_sub]), 3),
                 "cpu_pct_idle_streaming": _r(median([r["cpu_pct_idle"] for r in runs_sub]), 2),
                 "peak_rss_mb": _r(max((r["peak_rss_mb"] for r in runs_sub), default=None), 1),
                 "pss_mb": _r(median([r["pss_mb"] for r in runs_sub if "pss_mb" in r]), 1),
                 "private_mb": _r(median([r["private_mb"] for r in runs_sub
                                          if "private_mb" in r]), 1),
                 "threads_max": max((r["threads_max"] for r in runs_sub), default=None),
                 "fds": max((r["fds"] for r in runs_sub), default=None),
                 "conversation_s": _r(median([r["conversation_s"] for r in runs_sub]), 1),
                 "sentences_played": [r["sentences_played"] for r in runs_sub],
                 "cpu_by_thread_pct": _median_by_key([r["cpu_by_thread_pct"] for r in runs_sub]),
                 "scope": "the appliance alone: python -m soca_appliance run, /proc/PID"},
        "runs": [{"in_process": {k: v for k, v in r.items() if k != "uplink"} |
                  {"uplink": {k: v for k, v in r["uplink"].items()
                              if k not in ("latency_s", "send_times")}},
                  "subprocess": {k: v for k, v in s.items()
                                 if k not in ("server_arrivals", "uplink")}}
                 for r, s in zip(runs_in, runs_sub)],
        "notes": [],
    }
    for run in report["runs"]:
        for key in ("server_barge_s", "button_s", "sentence_start_s"):
            run["in_process"][key] = [round(v * 1000.0, 3) for v in run["in_process"][key]]
        run["in_process"]["units"] = "ms"
    report["targets"] = _targets(report)
    return report


def _median_by_key(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for d in dicts for k in d}
    out = {k: round(median([d.get(k, 0.0) for d in dicts]) or 0.0, 2) for k in keys}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _r(value: Optional[float], digits: int) -> Optional[float]:
    return None if value is None else round(value, digits)


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    figures = {
        "uplink_p99_ms": report.get("uplink", {}).get("latency_ms", {}).get("p99"),
        "barge_server_p99_ms": report.get("barge", {}).get("server_ms", {}).get("p99"),
        "barge_button_p99_ms": report.get("barge", {}).get("button_ms", {}).get("p99"),
        "sentence_start_p99_ms": report.get("playback", {}).get("sentence_start_ms", {})
        .get("p99"),
        "cpu_streaming_pct": report.get("cost", {}).get("cpu_pct_streaming"),
        "peak_rss_mb": report.get("cost", {}).get("peak_rss_mb"),
        "startup_median_s": report.get("startup", {}).get("median_s"),
        "soak_rss_growth_mb_per_10min": (report.get("soak") or {}).get("rss_growth_mb_per_10min"),
    }
    return {name: {"value": value, "limit": TARGETS[name][0], "unit": TARGETS[name][1],
                   "pass": _verdict(value, name)}
            for name, value in figures.items() if value is not None}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def render_table(report: dict[str, Any]) -> str:
    t = report.get("targets", {})
    lines: list[str] = []

    def verdict(name: str) -> str:
        if name not in t:
            return ""
        return f"<= {t[name]['limit']:g} {t[name]['unit']}  " + ("PASS" if t[name]["pass"]
                                                                 else "MISS")

    def row(label: str, s: Optional[dict[str, Any]], unit: str, target: str = "",
            extra: str = "") -> None:
        s = s or {}
        lines.append(f"{label:<44} {_fmt(s.get('p50'), unit):>10} {_fmt(s.get('p99'), unit):>10} "
                     f"{_fmt(s.get('max'), unit):>10} {str(s.get('n', '')):>5}  "
                     f"{verdict(target) if target else extra}")

    def line(label: str, value: str, target: str = "") -> None:
        lines.append(f"{label:<44} {value:>32}  {verdict(target) if target else ''}".rstrip())

    m = report["bench"]["machine"]
    frame_ms = report["bench"].get("frame_ms", 20)
    lines.append(f"soca-appliance bench: {report['bench']['command']}")
    lines.append(f"machine: {m.get('cpu_model')} x{m.get('nproc')}, Python {m.get('python')}, "
                 f"pygame {m.get('pygame')} (SDL {m.get('sdl')}, SDL_mixer {m.get('sdl_mixer')}), "
                 f"SDL_AUDIODRIVER={m.get('sdl_audiodriver') or '(SDL default)'}")
    if m.get("loadavg_start"):
        lines.append(f"load average {' '.join(m['loadavg_start'])} at start, "
                     f"{' '.join(m.get('loadavg_end', []))} at end; whole machine "
                     f"{m.get('system_busy_pct', '-')} % busy during the bench "
                     "(other jobs share it)")
    lines.append("")
    lines.append(f"{'figure':<44} {'p50':>10} {'p99':>10} {'max':>10} {'n':>5}  target")
    if "control" in report:
        ctl = report["control"]
        row("control: bare thread hand-off (no appliance)", ctl["handoff_ms"], "ms",
            extra="machine busy % per run: " + ", ".join(
                _fmt(v) for v in ctl["system_busy_pct"]))
    if "uplink" in report:
        up = report["uplink"]
        row("uplink: capture -> socket write", up["latency_ms"], "ms", "uplink_p99_ms")
        row(f"uplink: send jitter |interval-{frame_ms}ms|", up["send_jitter_ms"], "ms",
            extra=f"gaps>{1.5 * frame_ms:g}ms: {up['send_jitter_ms'].get('gaps')}")
        if up.get("server_jitter_ms"):
            row("uplink: arrival jitter at the simulator", up["server_jitter_ms"], "ms",
                extra=f"gaps>{1.5 * frame_ms:g}ms: {up['server_jitter_ms'].get('gaps')}")
        line("uplink: frames sent / dropped not-ready/full",
             f"{up['frames_sent']} / {up['frames_dropped_not_ready']} / "
             f"{up['frames_dropped_full']}")
        row("  in-process (simulator shares the GIL)", up["latency_in_process_ms"], "ms")
    if "barge" in report:
        b = report["barge"]
        row("barge: server barge -> channel stopped", b["server_ms"], "ms",
            "barge_server_p99_ms")
        row("barge: button release -> channel stopped", b["button_ms"], "ms",
            "barge_button_p99_ms")
        mb = b["mixer_buffer"]
        line("  + audible: up to one mixer buffer",
             f"{mb.get('samples')} samples = {mb.get('ms')} ms ({mb.get('driver')})")
    if "playback" in report:
        row("playback: last chunk -> sentence.play", report["playback"]["sentence_start_ms"],
            "ms", "sentence_start_p99_ms")
    if "startup" in report:
        s = report["startup"]
        line("start-up: Popen -> connected (stt.ready)",
             f"median {_fmt(s['median_s'], 's')} (n={s['n']})", "startup_median_s")
        line("  of which: Popen -> first event (imports)", _fmt(s["first_event_median_s"], "s"))
        line("  CPU spent until connected", _fmt(s["cpu_s_median"], "s"))
    if "cost" in report:
        c = report["cost"]
        line("cost: CPU during a conversation",
             f"{_fmt(c['cpu_pct_streaming'], '%')} of a core "
             f"({_fmt(c['cpu_s_per_min'], 'CPU-s/min')})", "cpu_streaming_pct")
        line("cost: CPU idle streaming (silence)", f"{_fmt(c['cpu_pct_idle_streaming'], '%')}")
        line("cost: peak RSS (VmHWM)", _fmt(c["peak_rss_mb"], "MB"), "peak_rss_mb")
        if c.get("pss_mb") is not None:
            line("  of which its own: PSS / private", f"{_fmt(c['pss_mb'], 'MB')} / "
                 f"{_fmt(c['private_mb'], 'MB')}")
        line("cost: threads / open fds", f"{c['threads_max']} / {c['fds']}")
        busiest = [f"{k} {v:g}" for k, v in c.get("cpu_by_thread_pct", {}).items() if v > 0][:5]
        if busiest:
            lines.append(f"  CPU % by thread: {', '.join(busiest)}")
    if "soak" in report:
        k = report["soak"]
        line(f"soak: RSS growth over {k['rss_measured_span_min']} min",
             f"{_fmt(k['rss_growth_mb'], 'MB')} ({k['rss_first_mb']} -> {k['rss_last_mb']} MB)")
        line("soak: RSS trend, per 10 min", _fmt(k["rss_growth_mb_per_10min"], "MB"),
             "soak_rss_growth_mb_per_10min")
        line("soak: threads min/max, fds first/last",
             f"{k['threads_min']}/{k['threads_max']}, {k['fds_first']}/{k['fds_last']}")
        line("soak: CPU, turns, sentences, errors",
             f"{_fmt(k['cpu_pct'], '%')}, {k['turns']}, {k['sentences_played']}, {k['errors']}")
        line("soak: peak RSS (incl. the input WAV in memory)", _fmt(k["peak_rss_mb"], "MB"))
    if "progressive" in report:
        p = report["progressive"]
        if "skipped" in p:
            line("progressive playback", "skipped")
        else:
            row("time to first audio, progressive off", p["off"], "ms")
            row("time to first audio, progressive on", p["on"], "ms")
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Measure the appliance against the local simulator: uplink "
        "latency, barge and button stop time, sentence start, start-up, CPU and memory.")
    p.add_argument("--runs", type=int, default=1, help="scripted conversations (default 1)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document on stdout (the table goes to stderr)")
    p.add_argument("--quick", action="store_true",
                   help="one short turn, a few barges: a smoke test in about 20 s")
    p.add_argument("--barges", type=int, default=None,
                   help="server barges per run (default 15; --quick 3)")
    p.add_argument("--presses", type=int, default=None,
                   help="button presses per run (default 15; --quick 3)")
    p.add_argument("--startups", type=int, default=None,
                   help="start-up samples at least (default 3; --quick 1)")
    p.add_argument("--minutes", type=float, default=None, metavar="N",
                   help="soak instead: the appliance for N minutes, a turn about every 11 s")
    p.add_argument("--sample-every", type=float, default=None, metavar="S",
                   help="soak sampling period (default 5 s, 1 s under 2 minutes)")
    p.add_argument("--compare-progressive", action="store_true",
                   help="time to first audio with progressive_playback off and on "
                        "(when the config has that key)")
    p.add_argument("--frame-ms", type=int, choices=(20, 40, 50), default=20,
                   help="uplink frame size (the frame_ms key; default 20)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--probe", type=float, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.probe is not None:
        return probe_main(args.probe)
    if args.runs < 1:
        print(f"{PROG}: error: --runs must be at least 1", file=sys.stderr)
        return 2
    if args.minutes is not None and args.minutes <= 0:
        print(f"{PROG}: error: --minutes must be positive", file=sys.stderr)
        return 2
    if not Path("/proc/self/stat").exists():
        print(f"{PROG}: error: needs Linux /proc to measure CPU and memory", file=sys.stderr)
        return 2
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    barges = args.barges if args.barges is not None else (3 if args.quick else 15)
    presses = args.presses if args.presses is not None else (3 if args.quick else 15)
    want_startups = args.startups if args.startups is not None else (1 if args.quick else 3)
    rng = random.Random(6)
    machine = machine_info()
    sys0 = system_cpu()
    failed: list[str] = []
    report: dict[str, Any]
    with tempfile.TemporaryDirectory(prefix="soca-bench-") as tmp:
        workdir = Path(tmp)
        if args.minutes is not None:
            every = args.sample_every or (1.0 if args.minutes < 2 else 5.0)
            progress(f"soak: the appliance for {args.minutes:g} min, sampling every {every:g} s")
            report = {"bench": {"command": " ".join(["python -m soca_appliance.bench"]
                                                    + args.argv),
                                "machine": machine}, "notes": []}
            try:
                report["soak"] = run_soak(workdir, args.minutes, every, args.frame_ms)
            except BenchError as exc:
                failed.append(f"soak: {exc}")
            report["targets"] = _targets(report)
        else:
            runs_in: list[dict[str, Any]] = []
            runs_sub: list[dict[str, Any]] = []
            startups: list[dict[str, float]] = []
            for n in range(1, args.runs + 1):
                try:
                    progress(f"run {n}/{args.runs}: in-process conversation, {barges} server "
                             f"barges, {presses} button presses")
                    runs_in.append(run_in_process(barges, presses, rng, args.frame_ms))
                    progress(f"run {n}/{args.runs}: the appliance as a subprocess "
                             f"(start-up, CPU, memory)")
                    sub = run_subprocess(workdir, args.quick, args.frame_ms)
                    runs_sub.append(sub)
                    startups.append(sub["startup"])
                except BenchError as exc:
                    failed.append(f"run {n}: {exc}")
                    progress(f"run {n} failed: {exc}")
            extra = max(0, want_startups - len(startups))
            for n in range(extra):
                progress(f"start-up {n + 1}/{extra}: Popen -> connected")
                try:
                    startups.append(measure_startup(workdir, args.frame_ms))
                except BenchError as exc:
                    failed.append(f"start-up: {exc}")
            if not runs_in or not runs_sub:
                print(f"{PROG}: error: " + "; ".join(failed), file=sys.stderr)
                return 1
            report = build_report(machine, runs_in, runs_sub, startups, args)
            if args.compare_progressive:
                if has_progressive():
                    progress("progressive playback: time to first audio, off then on")
                    try:
                        report["progressive"] = run_progressive(
                            workdir, 4 if args.quick else 12, rng)
                    except BenchError as exc:
                        failed.append(f"progressive: {exc}")
                else:
                    report["progressive"] = {"skipped": "Config has no progressive_playback "
                                             "key yet: nothing to compare"}
            if report["uplink"]["server_jitter_ms"] is None:
                report["notes"].append("server-side jitter not measurable: the simulator "
                                       "session has no audio hook")
            report["notes"].append(
                "barge, button and sentence-start latencies are in-process (the simulator "
                "shares this process and the GIL); uplink, start-up and cost figures are the "
                "appliance alone, as a subprocess")
    busy, total = system_cpu()
    machine["system_busy_pct"] = round(100.0 * (busy - sys0[0]) / max(1.0, total - sys0[1]), 1)
    with contextlib.suppress(OSError):
        machine["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    report["errors"] = failed
    table = render_table(report)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table)
    for error in failed:
        print(f"{PROG}: error: {error}", file=sys.stderr)
    if failed:
        return 1
    missed = [name for name, t in report.get("targets", {}).items() if t["pass"] is False]
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
