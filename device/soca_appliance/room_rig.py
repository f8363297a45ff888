"""The echo room's plumbing (tests and bench): a private PulseAudio daemon with the null
sinks ``speaker`` (what the appliance plays, through SDL's ``pulse`` driver) and ``mic``
(whose monitor the appliance records through PyAudio's ``pulse`` device), and
:class:`RoomProcess`, the handle on ``python -m soca_appliance.room`` running between them
(its signal chain is :mod:`.room`). Never used by the appliance itself."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Optional

from .room import RATE, RoomSettings


def end_process(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, ``grace`` seconds to exit, then SIGKILL (a child that has exited: nothing)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class PulseRig:
    """A private PulseAudio daemon (own HOME, runtime dir and socket) with null sinks
    ``speaker`` and ``mic``. ``env`` is what SDL, PortAudio and pacat need to use it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="soca-room-"))
        self.socket = self.dir / "native"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._keepers: list[subprocess.Popen[bytes]] = []
        runtime = self.dir / "run"
        runtime.mkdir(mode=0o700)
        self.env = {**os.environ, "HOME": str(self.dir), "XDG_RUNTIME_DIR": str(runtime),
                    "PULSE_SERVER": f"unix:{self.socket}", "PULSE_SINK": "speaker",
                    "PULSE_SOURCE": "mic.monitor", "SDL_AUDIODRIVER": "pulse",
                    # A fixed 60 ms for SDL's stream: with the small buffer SDL asks for, a
                    # busy machine underruns and the server raises the latency step by step
                    # (measured: 250 -> 500 ms in a minute at load 6 on 2 cores).
                    "PULSE_LATENCY_MSEC": "60"}

    def start(self, timeout: float = 10.0) -> "PulseRig":
        script = self.dir / "room.pa"
        script.write_text(
            f"load-module module-native-protocol-unix socket={self.socket} auth-anonymous=1\n"
            f"load-module module-null-sink sink_name=speaker rate={RATE} channels=1\n"
            f"load-module module-null-sink sink_name=mic rate={RATE} channels=1\n"
            "set-default-sink speaker\nset-default-source mic.monitor\n")
        self.proc = subprocess.Popen(
            ["pulseaudio", "-n", "-F", str(script), "--daemonize=no", "--exit-idle-time=-1",
             "--use-pid-file=no", "--system=false", "--disallow-exit", "--log-target=stderr",
             "--log-level=error"], env=self.env, stdout=subprocess.DEVNULL,
            stderr=(self.dir / "pulse.log").open("wb"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pulseaudio exited: {(self.dir / 'pulse.log').read_text()}")
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("pulseaudio did not come up")
        # An idle null sink renders in 2 s blocks, and a stream that connects then keeps
        # that backlog as latency (measured: 1.8 s on PyAudio's pulse device). A reader at
        # 10 ms on each monitor, kept for the rig's life, brings both down to 10 ms first.
        for sink in ("speaker", "mic"):
            keeper = subprocess.Popen(["parec", "-d", f"{sink}.monitor", "--raw",
                                       "--latency-msec=10"], env=self.env,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            self._keepers.append(keeper)
            first = threading.Event()
            threading.Thread(target=_drain, args=(keeper.stdout, first), daemon=True,
                             name=f"pulse-keeper-{sink}").start()
            if not first.wait(max(0.1, deadline - time.monotonic())):
                self.stop()
                raise RuntimeError(f"no audio from {sink}.monitor")
        return self

    def stop(self) -> None:
        for keeper in self._keepers:
            keeper.terminate()
            keeper.wait(5)
        self._keepers.clear()
        if self.proc is not None:
            end_process(self.proc, 5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PulseRig":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _drain(pipe: Optional[IO[bytes]], first: threading.Event) -> None:
    if pipe is None:
        return
    while pipe.read(3200):
        first.set()


class RoomProcess:
    """``python -m soca_appliance.room`` on a rig; :meth:`say` queues an utterance and
    returns its start in the room's clock (seconds); :attr:`quiet_at` lists when the
    speaker went quiet (same clock)."""

    def __init__(self, rig: PulseRig, settings: RoomSettings, latency_ms: int = 60) -> None:
        args = [sys.executable, "-m", "soca_appliance.room", "--echo-gain", str(settings.echo_gain),
                "--delay-ms", str(settings.delay_ms), "--rt60", str(settings.rt60),
                "--noise-dbfs", str(settings.noise_dbfs), "--drift", str(settings.drift),
                "--latency-ms", str(latency_ms)]
        self.proc = subprocess.Popen(args, env=rig.env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._lock = threading.RLock()
        self._said: dict[int, float] = {}
        self.said_mono: dict[float, float] = {}     # room clock -> time.monotonic()
        self.quiet_at: list[float] = []
        self.quiet_mono: list[float] = []           # time.monotonic(), one per quiet_at
        self.loud_at: list[float] = []
        self.t = 0.0
        self.running = False
        self._cond = threading.Condition(self._lock)
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,),
                                        name="room-reader", daemon=True)
        self._reader.start()
        self._n = 0
        with self._cond:            # the null sink's first block comes after ~2 s
            if not self._cond.wait_for(lambda: self.running, 15.0):
                self.close()
                raise RuntimeError("the room process did not start")

    def _read(self, out: IO[str]) -> None:
        for line in out:
            parts = line.split()
            with self._cond:
                if parts[:1] == ["said"]:
                    self._said[int(parts[1])] = float(parts[2])
                    self.said_mono[float(parts[2])] = float(parts[3])
                elif parts[:1] == ["quiet"]:
                    self.quiet_at.append(float(parts[1]))
                    self.quiet_mono.append(float(parts[2]))
                elif parts[:1] == ["loud"]:
                    self.loud_at.append(float(parts[1]))
                elif parts[:1] == ["t"]:
                    self.t = float(parts[1])
                elif parts[:1] == ["running"]:
                    self.running = True
                self._cond.notify_all()

    def say(self, raw16k: Path, gain: float = 1.0, timeout: float = 5.0) -> float:
        return self._ask("say", f"{gain} {raw16k}", timeout, "start the utterance")

    def delay_more(self, ms: float, timeout: float = 5.0) -> float:
        """From now on the speaker reaches the mic ``ms`` later (an output whose latency
        jumps, e.g. SDL's buffer 512 -> 2048: +70 ms at 22.05 kHz); returns when, in the
        room's clock."""
        return self._ask("delay", f"{ms}", timeout, "take the delay")

    def _ask(self, verb: str, args: str, timeout: float, what: str) -> float:
        """One numbered command to the room process (``verb N args``); the room's clock
        when the room acknowledged it."""
        assert self.proc.stdin is not None
        with self._cond:
            self._n += 1
            n = self._n
        self.proc.stdin.write(f"{verb} {n} {args}\n")
        self.proc.stdin.flush()
        with self._cond:
            if not self._cond.wait_for(lambda: n in self._said, timeout):
                raise RuntimeError(f"the room did not {what}")
            return self._said[n]

    def wait_quiet_after(self, t: float, timeout: float) -> Optional[float]:
        with self._cond:
            self._cond.wait_for(lambda: any(q > t for q in self.quiet_at), timeout)
            later = [q for q in self.quiet_at if q > t]
            return later[0] if later else None

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                self.proc.wait(3)
