"""Push-to-talk: the pure gate and press classifier (no threads), the panel's press and
release on gpiozero's mock pins, and the whole appliance holding the mock button against
the simulator and a recording server: only the held span, with its pre-roll, goes up, and
``stop`` follows its last frame."""
from __future__ import annotations

from soca_appliance.framing import Frame
from soca_appliance.ptt import PressClassifier, PttGate

FRAME_MS = 20
PRE = 300 // FRAME_MS          # pre-roll frames
TAP = 200 // FRAME_MS          # frames a press must last to be speech


def frame(i: int) -> Frame:
    return Frame(i.to_bytes(2, "little") * 320, 0.0, i)


class Driver:
    """Feeds numbered frames; records what the gate sends and where it ends."""

    def __init__(self, gate: PttGate) -> None:
        self.gate = gate
        self.index = 0
        self.sent: list[int] = []
        self.starts: list[int] = []
        self.ends: list[int] = []

    def feed(self, count: int) -> None:
        for _ in range(count):
            result = self.gate.process(frame(self.index))
            if result.started:
                self.starts.append(self.index)
            if result.ended:
                assert not result.send, "the frame after a release is not speech"
                self.ends.append(self.index)
            self.sent += [f.index for f in result.send]
            self.index += 1


def test_only_the_held_span_and_its_pre_roll_go_up() -> None:
    d = Driver(PttGate(FRAME_MS))
    d.feed(50)                                  # nobody presses: nothing goes up
    assert d.sent == [] and not d.gate.active
    d.gate.press()                              # pressed before frame 50
    d.feed(TAP - 1)
    assert d.sent == []                         # not yet more than a tap
    d.feed(1)                                   # frame 59: it is a hold
    assert d.starts == [50 + TAP - 1]
    assert d.sent == list(range(50 - PRE, 50 + TAP))
    d.feed(40)                                  # frames 60..99 go up one by one
    assert d.sent == list(range(50 - PRE, 100))
    d.gate.release()                            # released before frame 100
    d.feed(30)
    assert d.ends == [100] and d.sent == list(range(50 - PRE, 100)) and not d.gate.active


def test_a_tap_sends_nothing_and_ends_nothing() -> None:
    d = Driver(PttGate(FRAME_MS))
    d.feed(20)
    d.gate.press()
    d.feed(TAP - 1)
    d.gate.release()
    d.feed(20)
    d.gate.press()                              # a press and release between two frames
    d.gate.release()
    d.feed(5)
    assert (d.sent, d.starts, d.ends) == ([], [], [])


def test_pre_roll_is_bounded_at_start_up() -> None:
    d = Driver(PttGate(FRAME_MS))
    d.feed(3)
    d.gate.press()
    d.feed(TAP)
    assert d.sent == list(range(0, 3 + TAP))


def test_release_and_press_between_two_frames_is_a_new_utterance() -> None:
    d = Driver(PttGate(FRAME_MS))
    d.gate.press()
    d.feed(30)
    d.gate.release()
    d.gate.press()
    d.feed(TAP)
    assert d.ends == [30] and d.starts == [TAP - 1, 30 + TAP - 1]
    # the second utterance's pre-roll starts after the first one's end
    second = d.sent[d.sent.index(29) + 1:]
    assert second == list(range(30, 30 + TAP))


def test_reset_while_held_starts_again_after_a_tap_wait() -> None:
    d = Driver(PttGate(FRAME_MS))
    d.gate.press()
    d.feed(20)
    d.gate.reset()                              # a new session
    assert not d.gate.active
    d.feed(TAP)
    assert d.starts == [TAP - 1, 20 + TAP - 1] and d.ends == []
    assert d.sent[-TAP:] == list(range(20, 20 + TAP))     # nothing of the old session


def test_other_frame_sizes() -> None:
    gate = PttGate(50)
    d = Driver(gate)
    d.feed(10)
    gate.press()
    d.feed(4)                                   # 200 ms of 50 ms frames
    assert d.sent == list(range(10 - 6, 14))


def test_press_classifier() -> None:
    c = PressClassifier()
    assert c.down(0.0) == "talk" and c.up(2.0) == "release"          # a hold
    assert c.down(2.2) == "talk"                                      # after a hold: talk
    assert c.up(2.3) == "release"                                     # a tap...
    assert c.down(2.6) == "double" and c.up(2.7) == "none"            # ...and a second one
    assert c.down(2.9) == "talk" and c.up(3.0) == "release"           # a third starts afresh
    assert c.down(3.6) == "talk" and c.up(3.7) == "release"           # too late for a double
    assert c.up(4.0) == "none"                                        # no press to end


def test_press_classifier_a_long_first_press_is_no_double() -> None:
    c = PressClassifier()
    c.down(0.0)
    c.up(0.5)                                   # spoke half a second
    assert c.down(0.6) == "talk"


# --- the LEDs and the button's press and release on gpiozero's mock pins -------------------

import threading  # noqa: E402

import pytest  # noqa: E402

from soca_appliance.config import Leds  # noqa: E402
from soca_appliance.indicators import (HOLD_TO_TALK, STATES, GpioPanel, led_plan,  # noqa: E402
                                       make_panel)

DISCRETE = Leds(ready=5, listening=6, speaking=13, error=19)


@pytest.mark.parametrize("rgb", [False, True])
def test_hold_to_talk_shows_only_in_ready(rgb: bool) -> None:
    for state in STATES:
        for muted in (False, True):
            plain, ptt = led_plan(state, muted, rgb), led_plan(state, muted, rgb, True)
            if state == "ready" and not (rgb and muted):
                assert ptt != plain, (state, muted)
            else:
                assert ptt == plain, (state, muted)
    ready = led_plan("ready", False, rgb, True)
    pattern = ready["rgb"] if rgb else ready["ready"]
    assert pattern.kind == "pulse" and pattern.on_time == HOLD_TO_TALK.on_time
    # not to be taken for connecting (a blink) or listening (a fast pulse)
    assert led_plan("connecting", False, rgb, True) != ready
    assert led_plan("listening", False, rgb, True) != ready


def test_push_to_talk_panel_reports_press_and_release() -> None:
    calls: list[str] = []
    down, up = threading.Event(), threading.Event()
    p = make_panel("mock", DISCRETE, 17, 0.05, lambda: calls.append("press"),
                   lambda: calls.append("long"),
                   on_down=lambda: (calls.append("down"), down.set()),
                   on_up=lambda: (calls.append("up"), up.set()))
    assert isinstance(p, GpioPanel) and p.hold_to_talk
    try:
        pin = p.button.pin
        pin.drive_low()
        assert down.wait(2)
        # held six times as long as long_press (a negative check is bounded in time):
        # no long press in this mode
        assert not threading.Event().wait(0.3) and calls == ["down"]
        pin.drive_high()
        assert up.wait(2)
        assert calls == ["down", "up"]
        p.show("ready", False)
        assert p.pins["ready"]._blink_thread is not None        # breathing: "hold to talk"
    finally:
        p.close()


# --- the whole appliance, holding the mock button ------------------------------------------

import io  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402
from typing import Any, Callable, Optional  # noqa: E402

from soca_appliance import config  # noqa: E402
from soca_appliance.appliance import Appliance  # noqa: E402
from soca_appliance.events import EventLog  # noqa: E402
from soca_appliance.simulator import Simulator  # noqa: E402

from conftest import ASSETS, wait_for  # noqa: E402
from servers import RecordingServer  # noqa: E402

KEY = "sk-test-0123456789abcdef"
FRAME_S = FRAME_MS / 1000


class HandSource:
    """A microphone the test speaks into: each :meth:`say` hands frames to the appliance
    from the test's own thread, paced like a real mic (one frame per 20 ms)."""
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
            delay = t0 + n * FRAME_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)           # the mic's pace, not a wait for a result
            assert self.on_frame is not None
            self.on_frame(Frame(pcm, time.monotonic(), self.index))
            self.index += 1


class App:
    def __init__(self, url: str, **overrides: Any) -> None:
        values = dict(url=url, agent_id="agent-1", lang="en", gpio="mock", duplex="full",
                      button_mode="push_to_talk", backoff_initial=0.1, backoff_max=0.5,
                      log_format="json")
        values.update(overrides)
        self.cfg = config.load(None, env={}, overrides=values)
        self.records: list[dict[str, Any]] = []
        self.events = EventLog("json", stream=io.StringIO())
        self.events.subscribe(self.records.append)
        self.source = HandSource()
        self.app = Appliance(self.cfg, events=self.events, source=self.source,
                             private_key=KEY)
        self.pin = self.app.panel.button.pin

    def of(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [r for r in list(self.records) if r["event"] == name
                and all(r.get(k) == v for k, v in match.items())]

    def __enter__(self) -> "App":
        self.app.start()
        wait_for(lambda: self.app.link.streaming, 10, "the link to stream")
        return self

    def __exit__(self, *exc: object) -> None:
        self.app.shutdown()


def numbered(start: int, count: int) -> list[bytes]:
    return [frame(i).pcm for i in range(start, start + count)]


def test_only_the_held_span_reaches_the_server_then_stop() -> None:
    with RecordingServer() as server, App(server.url) as a:
        assert a.app.panel.hold_to_talk and a.app.status()["button_mode"] == "push_to_talk"
        a.source.say(numbered(0, 50))                     # nobody holds the button
        a.pin.drive_low()
        a.source.say(numbered(50, 60))
        a.pin.drive_high()
        a.source.say(numbered(110, 30))
        wait_for(lambda: server.texts(), 5, "the stop")
        wait_for(lambda: len(server.frames()) >= 60 + PRE, 5, "the held frames")
        sent = [pcm for _, pcm in server.frames()]
        assert sent == numbered(50 - PRE, 60 + PRE)       # the pre-roll and the held span
        assert server.texts() == [{"type": "stop"}]
        # the stop came after the last frame: the next press's frames come after it
        a.pin.drive_low()
        a.source.say(numbered(140, TAP + 5))
        a.pin.drive_high()
        a.source.say(numbered(200, 2))
        wait_for(lambda: len(server.texts()) == 2, 5, "the second stop")
        assert [pcm for _, pcm in server.frames()][60 + PRE:] == numbered(140 - PRE, PRE + TAP + 5)
        assert a.app.counters.snapshot()["utterances"] == 2


def demo_frames() -> list[bytes]:
    with wave.open(str(ASSETS / "demo-en.wav"), "rb") as wav:
        pcm = wav.readframes(wav.getnframes())
    return [pcm[i:i + 640] for i in range(0, len(pcm) - 639, 640)]


def test_hold_to_talk_against_the_simulator_barge_and_double_press() -> None:
    frames = demo_frames()
    first = frames[:int(2.74 / FRAME_S)]          # lead silence, then the first question
    with Simulator(expected_key=KEY) as sim, App(sim.url) as a:
        a.source.say(first[:10])
        a.pin.drive_low()
        a.source.say(first[10:])                  # released right as the question ends:
        a.pin.drive_high()                        # only the stop can end the utterance
        a.source.say([bytes(640)] * 5)
        wait_for(lambda: a.of("transcript", final=True), 10, "the final transcript")
        assert a.of("transcript", final=True)[0]["text"] == "Hello, what is the weather like today?"
        stats = sim.stats()
        assert stats["stops_received"] == 1 and stats["frames_received"] == len(first)
        # The agent answers; a press barges it at once and the held question goes up.
        wait_for(lambda: a.of("sentence.play"), 15, "the answer to play")
        a.pin.drive_low()
        wait_for(lambda: a.of("barge", source="button"), 5, "the button's barge")
        a.source.say(first)
        a.pin.drive_high()
        a.source.say([bytes(640)] * 5)
        wait_for(lambda: len(a.of("transcript", final=True)) == 2, 10, "the second final")
        assert sim.stats()["stops_received"] == 2
        # Two taps: mute (the long press of barge mode); a hold while muted sends nothing.
        received = sim.stats()["frames_received"]
        for _ in range(2):
            a.pin.drive_low()
            a.source.say([bytes(640)] * 3)
            a.pin.drive_high()
            a.source.say([bytes(640)] * 3)
        wait_for(lambda: a.of("mute", muted=True), 5, "mute by a double press")
        a.pin.drive_low()
        a.source.say(first[20:60])
        a.pin.drive_high()
        a.source.say([bytes(640)] * 3)
        assert sim.stats()["frames_received"] == received and a.app.muted
        assert sim.stats()["stops_received"] == 2


# --- the screen says "hold to talk" (real headless Chromium, 800x480) -----------------------

from pathlib import Path  # noqa: E402

from web_helpers import FakeApp, chromium_driver, make_server, screenshot  # noqa: E402


class PttApp(FakeApp):
    def status(self) -> dict[str, Any]:
        return {**super().status(), "button_mode": self.mode}

    mode = "push_to_talk"


@pytest.mark.parametrize("lang, pill, hint", [
    ("en", "Hold to talk", "Hold the button while you talk."),
    ("id", "Tahan untuk bicara", "Tekan dan tahan tombol selama berbicara.")])
def test_the_screen_says_hold_to_talk(tmp_path: Path, lang: str, pill: str, hint: str) -> None:
    app = PttApp()
    events = EventLog("json", stream=io.StringIO())
    server = make_server(app, events, lang=lang)
    try:
        for driver in chromium_driver():
            driver.get(f"http://127.0.0.1:{server.port}/")
            text = "return [document.getElementById('state').textContent, " \
                   "document.getElementById('hint').textContent]"
            wait_for(lambda: driver.execute_script(text) == [pill, hint], 10,
                     "the hold-to-talk pill and hint")
            screenshot(driver, tmp_path, f"hold-to-talk-{lang}")
            events.emit("state", state="speaking")          # not while the agent speaks
            wait_for(lambda: driver.execute_script(text)[0] != pill, 5, "the speaking pill")
            app.muted = True                                 # nor while muted
            events.emit("mute", muted=True)
            events.emit("state", state="ready")
            wait_for(lambda: driver.execute_script(text)[0] not in ("", pill)
                     and driver.execute_script(text)[1] != hint, 5, "the muted ready pill")
            app.mode, app.muted = "barge", False             # barge mode: as before
            driver.refresh()
            wait_for(lambda: driver.execute_script(text)[0] in ("Ready", "Siap"), 10,
                     "the plain ready pill")
    finally:
        server.close()
