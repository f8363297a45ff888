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
