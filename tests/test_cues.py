"""Spoken cues: the pure policy (when to say "cannot reach the assistant", "ready"), the
bundled MP3s, and the real player on SDL's disk driver inside the whole appliance: speech
while the server is down makes the offline cue heard once, never over the agent."""
from __future__ import annotations

import pytest

from soca_appliance.cues import CUE_NAMES, CuePolicy, load_cues


def test_offline_cue_once_per_minute_while_offline() -> None:
    p = CuePolicy()
    assert p.speech_started(100.0, "connecting", False) == "offline"
    assert p.speech_started(101.0, "connecting", False) is None       # said already
    assert p.speech_started(159.9, "error", False) is None
    assert p.speech_started(160.0, "error", False) == "offline"       # a minute later


@pytest.mark.parametrize("state", ["ready", "listening", "thinking", "speaking"])
def test_no_offline_cue_while_online(state: str) -> None:
    p = CuePolicy()
    assert p.speech_started(0.0, state, False) is None
    assert p.speech_started(1.0, "connecting", False) == "offline"    # not used up online


def test_never_over_the_agent() -> None:
    p = CuePolicy()
    assert p.speech_started(0.0, "connecting", True) is None
    assert p.speech_started(0.5, "connecting", False) == "offline"    # not used up either


def test_ready_cue_only_when_asked_and_only_the_first_connect() -> None:
    assert CuePolicy().connected(False) is None                       # off by default
    p = CuePolicy(ready_cue=True)
    assert p.connected(False) == "ready"
    assert p.connected(False) is None                                 # a reconnect: silent
    busy = CuePolicy(ready_cue=True)
    assert busy.connected(True) is None                               # a greeting plays
    assert busy.connected(False) is None


@pytest.mark.parametrize("lang", ["en", "id"])
def test_bundled_cues_are_short_mp3(lang: str) -> None:
    cues = load_cues(lang)
    assert set(cues) == set(CUE_NAMES)
    for name, data in cues.items():
        assert data[:3] == b"ID3" or data[0] == 0xFF, name         # MPEG audio
        assert 1000 < len(data) < 20000, (name, len(data))          # seconds, not minutes


# --- the real player, and the whole appliance on SDL's disk driver --------------------------

import io  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Optional  # noqa: E402

from soca_appliance import config  # noqa: E402
from soca_appliance.appliance import Appliance  # noqa: E402
from soca_appliance.assembler import Sentence  # noqa: E402
from soca_appliance.events import EventLog  # noqa: E402
from soca_appliance.framing import Frame  # noqa: E402
from soca_appliance.player import Player, PlayerCallbacks, pygame  # noqa: E402
from soca_appliance.simulator import Simulator  # noqa: E402

from conftest import ASSETS, wait_for  # noqa: E402

KEY = "sk-test-0123456789abcdef"
OFFLINE_EN = (ASSETS / "cue-offline-en.mp3").read_bytes()


def test_a_spoken_cue_waits_for_the_agent_and_counts_as_speech() -> None:
    started = threading.Event()
    idle = threading.Event()
    player = Player(PlayerCallbacks(on_start=lambda s: started.set(), on_idle=idle.set))
    player.start()
    try:
        wait_for(lambda: player.info is not None, 10, "the output to open")
        assert player.quiet_for() > 1e6                          # nothing played yet
        player.enqueue(Sentence(1, 1, (ASSETS / "answer-en-1-1.mp3").read_bytes(), "x"))
        assert not player.play_cue(OFFLINE_EN, speech=True)     # queued agent speech
        assert started.wait(5)
        assert not player.play_cue(OFFLINE_EN, speech=True)     # agent speech playing
        assert player.play_cue((ASSETS / "chime.wav").read_bytes())   # the chime may
        assert idle.wait(10)
        assert player.play_cue(OFFLINE_EN, speech=True)
        assert player.quiet_for() == 0.0                         # the cue is speaking
        wait_for(lambda: player.quiet_for() > 0.1, 10, "the cue to end")
    finally:
        player.close(1.5)


class HandSource:
    """A microphone the test speaks into, paced like a real one."""
    name = "hand"

    def __init__(self) -> None:
        self.on_frame: Optional[Callable[[Frame], None]] = None
        self.index = 0

    def start(self, on_frame: Callable[[Frame], None]) -> None:
        self.on_frame = on_frame

    def stop(self, timeout: float = 1.0) -> None:
        self.on_frame = None

    def say(self, pcms: list[bytes]) -> None:
        t0 = time.monotonic()
        for n, pcm in enumerate(pcms):
            delay = t0 + n * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)           # the mic's pace, not a wait for a result
            assert self.on_frame is not None
            self.on_frame(Frame(pcm, time.monotonic(), self.index))
            self.index += 1


def question() -> list[bytes]:
    """demo-en.wav up to the end of its first question (0.5 s of silence first)."""
    with wave.open(str(ASSETS / "demo-en.wav"), "rb") as wav:
        pcm = wav.readframes(int(2.8 * wav.getframerate()))
    return [pcm[i:i + 640] for i in range(0, len(pcm) - 639, 640)]


def test_speech_while_offline_says_so_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    out = tmp_path / "speaker.raw"
    monkeypatch.setenv("SDL_AUDIODRIVER", "disk")
    monkeypatch.setenv("SDL_DISKAUDIOFILE", str(out))
    sim = Simulator(expected_key=KEY)
    sim.start()
    url = sim.url
    sim.stop()                                       # the server is down
    cfg = config.load(None, env={}, overrides=dict(
        url=url, agent_id="a", lang="en", gpio="off", vad=True, duplex="half",
        backoff_initial=0.1, backoff_max=0.5, log_format="json"))
    records: list[dict[str, Any]] = []
    events = EventLog("json", stream=io.StringIO())
    events.subscribe(records.append)
    source = HandSource()
    app = Appliance(cfg, events=events, source=source, private_key=KEY)
    app.start()
    try:
        wait_for(lambda: app.player.info is not None, 10, "the speaker to open")
        assert app.state == "connecting"
        source.say(question())
        wait_for(lambda: app.cues.played["offline"] == 1, 5, "the offline cue")
        cue_s = pygame.mixer.Sound(file=io.BytesIO(OFFLINE_EN)).get_length()
        source.say([bytes(640)] * 150)               # 3 s: the cue plays out
        # half duplex: the mic went up as silence for as long as the cue spoke, and more
        assert app.counters.snapshot()["frames_silenced"] >= int(cue_s / 0.02)
        source.say(question())                       # speaking again, within the minute
        wait_for(lambda: app.counters.snapshot()["utterances"] == 2, 5, "the second utterance")
        wait_for(lambda: app.player.quiet_for() > 0.5, 10, "the speaker to go quiet")
        assert app.cues.played["offline"] == 1       # said once
        assert app.press(source="button") == "chime"  # the button too: rate-limited
        pcm = pygame.mixer.Sound(file=io.BytesIO(OFFLINE_EN)).get_raw()   # at the mixer's rate
    finally:
        app.shutdown()
    data = out.read_bytes()
    anchor = next(i for i in range(0, len(pcm), 2) if pcm[i:i + 2] != b"\0\0")
    probe = pcm[anchor:anchor + 400]
    at = data.find(probe)
    assert at >= 0, "the offline cue is not in what the speaker played"
    assert data[at - anchor:at - anchor + len(pcm)] == pcm         # whole
    assert data.find(probe, at + len(pcm) - anchor) == -1          # once


def make_app(url: str, **overrides: Any) -> Appliance:
    values = dict(url=url, agent_id="a", lang="id", gpio="off", duplex="full",
                  backoff_initial=0.1, backoff_max=0.5, log_format="json")
    values.update(overrides)
    cfg = config.load(None, env={}, overrides=values)
    return Appliance(cfg, events=EventLog("json", stream=io.StringIO()), source=HandSource(),
                     private_key=KEY)


def test_ready_cue_on_the_first_connect_only() -> None:
    with Simulator(expected_key=KEY) as sim:
        app = make_app(sim.url, ready_cue=True)
        app.start()
        try:
            wait_for(lambda: app.cues.played["ready"] == 1, 10, "the ready cue")
            assert app.player.quiet_for() == 0.0            # it is speaking
            sim.drop_connections()
            wait_for(lambda: app.link.stats.connects >= 2, 10, "the reconnect")
            wait_for(lambda: app.state == "ready", 5, "ready again")
            assert app.cues.played == {"offline": 0, "ready": 1}
            assert app.press(source="button") == "chime"    # online: the chime as before
        finally:
            app.shutdown()


def test_button_press_while_offline_says_so_screen_and_ctl_chime() -> None:
    sim = Simulator(expected_key=KEY)
    sim.start()
    url = sim.url
    sim.stop()
    app = make_app(url)
    app.start()
    try:
        wait_for(lambda: app.player.info is not None, 10, "the speaker to open")
        assert app.cues.played["ready"] == 0
        assert app.press(source="screen") == "chime"        # staff tools: unchanged
        assert app.press(source="ctl") == "chime"
        assert app.press(source="button") == "offline"
        assert app.cues.played["offline"] == 1
        assert app.press(source="button") == "chime"        # once a minute
    finally:
        app.shutdown()


CUE_TAP_CHILD = r"""
import io, os, sys, time
os.environ["SDL_AUDIODRIVER"] = "dummy"
from soca_appliance.echo import MixerTap
from soca_appliance.player import Player, pygame
cue = open(sys.argv[1], "rb").read()
player = Player()
player.start()
deadline = time.monotonic() + 10
while player.info is None and time.monotonic() < deadline:
    time.sleep(0.01)
tap = MixerTap()
assert tap.install()
pcm = pygame.mixer.Sound(file=io.BytesIO(cue)).get_raw()
assert player.play_cue(cue, speech=True)
while player.quiet_for() == 0.0 and time.monotonic() < deadline + 10:
    time.sleep(0.05)
time.sleep(0.2)
tap.remove()
mixed = b"".join(b for _, b in tap.buffers)
anchor = next(i for i in range(0, len(pcm), 2) if pcm[i:i + 2] != b"\0\0")
at = mixed.find(pcm[anchor:anchor + 400])
print(at >= 0 and mixed[at - anchor:at - anchor + len(pcm)] == pcm)
player.close(1.5)
"""


def test_the_echo_reference_carries_a_spoken_cue() -> None:
    """With the echo canceller (echo.py), the far-end reference is SDL_mixer's post-mix
    (echo.MixerTap): a spoken cue on the cue channel is in it, whole. In a child, so this
    process's mixer keeps no hook."""
    import os
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", CUE_TAP_CHILD,
                           str(ASSETS / "cue-offline-id.mp3")], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "PYGAME_HIDE_SUPPORT_PROMPT": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "True", done.stdout
