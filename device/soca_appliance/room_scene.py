"""One echo-room scene for the tests and the bench: the real appliance (``python -m
soca_appliance run``, SDL's ``pulse`` driver, PyAudio's ``pulse`` device) in a private
PulseAudio daemon, the room process between its speaker and its mic (:mod:`.room`), and
at the far end either the simulator (which decides barges from what it receives) or any
server with a ``url`` (a recorder).

A :class:`Scene` is one such setup; nothing in it is faked: the agent's voice really goes
out through a null sink, through the room, and back in through the mic. The user's voice
is espeak-ng; the agent's, the simulator's bundled sentences. Never used by the appliance.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

import soxr

from .room import Room, RoomSettings, level_for
from .room_rig import PulseRig, RoomProcess, end_process
from .simulator import Simulator, default_assets_dir

ASSETS = default_assets_dir()

KEY = "room-test-key"
USER_TEXT = "Stop please, I want to ask something else."
GREETING = "Hello, what is the weather like today?"
USER_LEVEL = 0.1          # the user's voice: espeak-ng at -20 dB (the echo, 10 dB over it, does not clip)


@dataclass
class Interruption:
    """One talk-over and how long each part of its barge took.

    ``said`` and ``stopped`` are the room's clock: the user's voice begins, the speaker is
    quiet (``stopped`` None: it never stopped). The stages are time.monotonic(), which the
    room, the simulator and the appliance's event reader share: ``up_s`` from the voice's
    first sample into the mic sink to the arrival at the far end of the first voiced
    sub-frame of the utterance it barged on (the rig's playback, the mic's capture, the
    canceller, the uplink, and any unvoiced start of the word);
    ``gate_s`` the far end's onset to its barge (``gate_audio_s`` of audio, of which
    ``gate_voiced_s`` voiced: the gate needs 0.6 s); ``down_s`` the barge to the appliance
    logging it; ``out_s`` that to the room hearing the speaker quiet (the player's stop,
    SDL's buffer, the rig's capture of the speaker)."""
    said: float
    stopped: Optional[float]
    up_s: Optional[float] = None
    gate_s: Optional[float] = None
    gate_audio_s: Optional[float] = None
    gate_voiced_s: Optional[float] = None
    down_s: Optional[float] = None
    out_s: Optional[float] = None

    @property
    def latency(self) -> Optional[float]:
        return None if self.stopped is None else self.stopped - self.said

    def stages(self) -> dict[str, Optional[float]]:
        """The stages by name (``up_s`` ... ``out_s``)."""
        return {k: v for k, v in asdict(self).items() if k.endswith("_s")}


def voice_onset(voice: np.ndarray) -> float:
    """Seconds into an utterance where its voice begins."""
    return float(np.argmax(np.abs(voice) > 300)) / 16000


def have_room() -> bool:
    return all(shutil.which(t) for t in ("pulseaudio", "pactl", "pacat", "parec", "espeak-ng"))


def espeak(text: str, workdir: Path, rate: int = 16000) -> np.ndarray:
    """``text`` spoken by espeak-ng (en-us) as mono float at ``rate``."""
    wav = workdir / f"espeak-{abs(hash(text)) % 10**10}.wav"
    if not wav.exists():
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), text], check=True,
                       capture_output=True, timeout=30)
    import wave
    with wave.open(str(wav), "rb") as w:
        src_rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32)
    return soxr.resample(samples, src_rate, rate).astype(np.float64)


def long_answer_assets(dest: Path, sentences: int = 28) -> Path:
    """The simulator's assets with every English turn answered by ``sentences`` of the
    bundled sentences in a row (28 x ~2.1 s: about a minute of agent speech)."""
    manifest = json.loads((ASSETS / "manifest.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for mp3 in ASSETS.glob("*.mp3"):
        shutil.copy(mp3, dest / mp3.name)
    pool = [s for turn in manifest["en"] for s in turn["agent"]]
    for turn in manifest["en"]:
        turn["agent"] = [pool[i % len(pool)] for i in range(sentences)]
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def decode_mp3s_16k(paths: list[Path]) -> np.ndarray:
    """The agent's sentences as the speaker plays them (pygame's decoder, in a child so
    this process's mixer stays untouched), at 16 kHz mono."""
    code = ("import os,sys,io; os.environ['SDL_AUDIODRIVER']='dummy';"
            "import pygame, numpy as np, soxr; pygame.mixer.init(22050,-16,1);"
            "out=[np.frombuffer(pygame.mixer.Sound(file=io.BytesIO(open(p,'rb').read()))"
            ".get_raw(),'<i2') for p in sys.argv[1:]];"
            "x=soxr.resample(np.concatenate(out).astype(np.float32),22050,16000);"
            "sys.stdout.buffer.write(np.clip(x,-32768,32767).astype('<i2').tobytes())")
    raw = subprocess.run([sys.executable, "-c", code, *map(str, paths)], check=True,
                         capture_output=True, env={**os.environ, "PYGAME_HIDE_SUPPORT_PROMPT": "1"}
                         ).stdout
    return np.frombuffer(raw, dtype="<i2").astype(np.float64)


class Scene:
    """Rig + room + far end + appliance. ``far_end``: "simulator" or a RecordingServer."""

    def __init__(self, work: Path, duplex: str, *, echo_over_user_db: float = 10.0,
                 far_end: Any = "simulator", sentences: int = 28, mixer_buffer: int = 512,
                 drift: float = 0.0, vad: bool = False,
                 env: Optional[dict[str, str]] = None) -> None:
        self.work = work
        self.duplex = duplex
        self.user_raw = work / "user16k.raw"
        self.greeting_raw = work / "greeting16k.raw"
        voice = espeak(USER_TEXT, work) * USER_LEVEL
        self.user_voice = voice
        np.clip(voice, -32768, 32767).astype("<i2").tofile(self.user_raw)
        greet = espeak(GREETING, work) * USER_LEVEL
        np.clip(greet, -32768, 32767).astype("<i2").tofile(self.greeting_raw)
        agent = decode_mp3s_16k(sorted(ASSETS.glob("answer-en-*.mp3")))
        settings = RoomSettings(drift=drift)
        settings.echo_gain = level_for(voice, echo_over_user_db, agent, settings)
        self.settings = settings
        self.latency_ms = Room(settings).latency_ms
        self.rig = PulseRig()
        self.sim: Optional[Simulator] = None
        self.far_end = far_end
        self.sentences = sentences
        self.mixer_buffer = mixer_buffer
        self.vad = vad
        self.room: Optional[RoomProcess] = None
        self.app: Optional[subprocess.Popen[str]] = None
        self.events: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self.stderr = work / "appliance.err"
        self.extra_env = env or {}

    # --- life cycle -------------------------------------------------------------------

    def __enter__(self) -> "Scene":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = 30.0) -> None:
        self.rig.start()
        self.room = RoomProcess(self.rig, self.settings)
        if self.far_end == "simulator":
            self.sim = Simulator(expected_key=KEY,
                                 assets_dir=long_answer_assets(self.work / "assets",
                                                               self.sentences))
            self.sim.start()
            url = self.sim.url
        else:
            url = self.far_end.url
        cfg = self.work / "config.toml"
        cfg.write_text("\n".join([
            f'url = "{url}"', 'agent_id = "agent-room"', 'lang = "en"', 'mic = "pulse"',
            f'duplex = "{self.duplex}"', 'gpio = "off"', 'log_format = "json"',
            f'control_socket = "{self.work / "ctl.sock"}"', f"mixer_buffer = {self.mixer_buffer}",
            f"vad = {'true' if self.vad else 'false'}", ""]))
        env = {**self.rig.env, "SOCA_PRIVATE_KEY": KEY, **self.extra_env}
        self.app = subprocess.Popen([sys.executable, "-m", "soca_appliance", "run", "--config",
                                     str(cfg)], env=env, stdout=subprocess.PIPE,
                                    stderr=self.stderr.open("w"), text=True, cwd=self.work)
        threading.Thread(target=self._read_events, daemon=True, name="scene-events").start()
        self.wait_event(lambda e: e.get("event") == "state" and e.get("state") == "ready",
                        timeout, "the appliance ready")
        # The mic is open once the room's audio reaches the uplink.
        self.wait_event(lambda e: e.get("event") == "log" and "microphone" in
                        str(e.get("message", "")) and "open" in str(e.get("message", "")),
                        timeout, "the microphone open")

    def close(self) -> None:
        if self.app is not None:
            end_process(self.app, 10)
        if self.room is not None:
            self.room.close()
        if self.sim is not None:
            self.sim.stop()
        self.rig.stop()

    # --- events ------------------------------------------------------------------------

    def _read_events(self) -> None:
        assert self.app is not None and self.app.stdout is not None
        for line in self.app.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            record["_mono"] = time.monotonic()
            with self._lock:
                self.events.append(record)

    def events_of(self, name: str, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("event") == name
                    and all(e.get(k) == v for k, v in match.items())]

    def wait_event(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for e in self.events:
                    if pred(e):
                        return e
            if self.app is not None and self.app.poll() is not None:
                raise AssertionError(f"the appliance exited ({self.app.returncode}) waiting "
                                     f"for {what}: {self.stderr.read_text()[-2000:]}")
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")

    def count(self, name: str) -> int:
        return len(self.events_of(name))

    def wait_count(self, name: str, more_than: int, timeout: float) -> None:
        self.wait_event(lambda e: self.count(name) > more_than, timeout,
                        f"more than {more_than} {name} events")

    def log_lines(self) -> list[str]:
        return [str(e.get("message", "")) for e in self.events_of("log")]

    # --- the room's clock --------------------------------------------------------------

    def say(self, raw: Optional[Path] = None) -> float:
        assert self.room is not None
        return self.room.say(raw or self.user_raw)

    def interrupt(self, timeout: float = 6.0) -> Interruption:
        """The user talks over the agent; wait for the speaker to stop, and time the parts
        of the barge (see :class:`Interruption`)."""
        assert self.room is not None
        onset = voice_onset(self.user_voice)
        start = self.say()
        said = start + onset
        it = Interruption(said, self.stopped_after(said, timeout=timeout))
        if it.stopped is None or self.sim is None:
            return it
        with self.room._cond:
            said_mono = self.room.said_mono[start] + onset
            quiet_mono = self.room.quiet_mono[self.room.quiet_at.index(it.stopped)]
        # The first barge after the voice began; its onset may come before (up_s < 0): the
        # far end's utterance then began on something else (residual echo) and ran on.
        barge = next((b for b in self.sim.speech_barges() if b["barge"] >= said_mono), None)
        heard = next((e["_mono"] for e in self.events_of("barge", source="server")
                      if e["_mono"] >= said_mono), None)
        if barge is not None:
            it.up_s = barge["onset"] - said_mono
            it.gate_s = barge["barge"] - barge["onset"]
            it.gate_audio_s, it.gate_voiced_s = barge["audio_s"], barge["voiced_s"]
            if heard is not None:
                it.down_s = heard - barge["barge"]
        if heard is not None:
            it.out_s = quiet_mono - heard
        return it

    def stopped_after(self, t: float, timeout: float = 5.0, quiet_for: float = 0.5
                      ) -> Optional[float]:
        """When the speaker went quiet after ``t`` and stayed quiet ``quiet_for`` s (a
        stop, not a pause between sentences), in the room's clock."""
        assert self.room is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.room._cond:
                quiets = [q for q in self.room.quiet_at if q > t]
                louds = list(self.room.loud_at)
                now = self.room.t
            for q in quiets:
                nxt = [x for x in louds if x > q]
                if (nxt and nxt[0] - q >= quiet_for) or (not nxt and now - q >= quiet_for):
                    return q
            time.sleep(0.05)
        return None

    def idle_for(self) -> float:
        """Seconds (room clock, to the second) since the speaker went quiet; 0 while it
        plays, or before it ever played."""
        assert self.room is not None
        with self.room._cond:
            if self.speaking() or not self.room.quiet_at:
                return 0.0
            return max(0.0, self.room.t - self.room.quiet_at[-1])

    def speaking(self) -> bool:
        assert self.room is not None
        with self.room._cond:
            return bool(self.room.loud_at) and (not self.room.quiet_at
                                                 or self.room.loud_at[-1] > self.room.quiet_at[-1])
