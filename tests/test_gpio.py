"""The LEDs and the button, on gpiozero's mock pins, alone and inside the real appliance.

Part one drives :class:`GpioPanel` (and the pure ``led_plan``) with ``MockFactory`` pins:
what each state lights, and how a press and a hold of the button are told apart. Part
two runs the whole appliance in-process against the local simulator, with the demo WAV
as its microphone, and presses the mock button (and the control socket) while the agent
speaks. Mock ``drive_low``/``drive_high`` call gpiozero's callbacks in the calling thread;
the hold comes from gpiozero's own thread, so the tests wait on events, never on sleeps.
"""
from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from soca_appliance import config
from soca_appliance.config import Leds
from soca_appliance.indicators import OFF, STATES, GpioPanel, NoPanel, Pattern, led_plan, make_panel

from conftest import wait_for

ASSETS = Path(__file__).resolve().parent.parent / "device" / "soca_appliance" / "assets"
DEMO_WAV = ASSETS / "demo-en.wav"
DISCRETE = Leds(ready=5, listening=6, speaking=13, error=19)
RGB = Leds(rgb=(22, 23, 24))
BUTTON = 17
ROLES = ("ready", "listening", "speaking", "error")


def blinking(device: Any) -> bool:
    """A blink or pulse runs in gpiozero's background thread."""
    thread = getattr(device, "_blink_thread", None)
    return thread is not None and thread.is_alive()


# --- led_plan: the pure part ---------------------------------------------------------------

DISCRETE_EXPECTED: dict[str, dict[str, tuple[str, float]]] = {
    # state: {role: (kind, level for "on")}; roles not named are off
    "connecting": {"ready": ("blink", 0)},
    "ready": {"ready": ("on", 0.2)},
    "listening": {"listening": ("pulse", 0)},
    "thinking": {"listening": ("blink", 0)},
    "speaking": {"speaking": ("on", 1.0)},
    "error": {"error": ("blink", 0)},
}


@pytest.mark.parametrize("state", STATES)
def test_led_plan_discrete(state: str) -> None:
    plan = led_plan(state, muted=False)
    assert set(plan) == set(ROLES)
    expected = DISCRETE_EXPECTED[state]
    for role in ROLES:
        p = plan[role]
        if role in expected:
            kind, level = expected[role]
            assert p.kind == kind, (state, role)
            if kind == "on":
                assert p.level == pytest.approx(level)
            else:
                assert p.on_time > 0 and p.off_time > 0
        else:
            assert p == OFF, (state, role)


def test_led_plan_blink_speeds_tell_states_apart() -> None:
    connecting = led_plan("connecting", False)["ready"]
    thinking = led_plan("thinking", False)["listening"]
    error = led_plan("error", False)["error"]
    assert connecting.on_time + connecting.off_time > thinking.on_time + thinking.off_time
    assert (error.on_time, error.off_time) != (thinking.on_time, thinking.off_time)


@pytest.mark.parametrize("state", [s for s in STATES if s != "error"])
def test_led_plan_discrete_muted_overlay(state: str) -> None:
    plain, muted = led_plan(state, False), led_plan(state, True)
    assert muted["error"] == Pattern("on", level=0.3)        # the privacy glow
    assert muted["listening"] == OFF                        # no "I hear you" while muted
    assert muted["ready"] == plain["ready"]
    assert muted["speaking"] == plain["speaking"]


def test_led_plan_error_wins_over_mute() -> None:
    assert led_plan("error", True) == led_plan("error", False)
    assert led_plan("error", True)["error"].kind == "blink"


def test_led_plan_unknown_state_is_dark() -> None:
    assert all(p == OFF for p in led_plan("stopped", False).values())


RGB_EXPECTED: dict[str, tuple[str, tuple[float, float, float]]] = {
    "connecting": ("blink", (0.0, 0.0, 1.0)),
    "ready": ("on", (0.0, 0.15, 0.0)),
    "listening": ("pulse", (0.0, 0.0, 1.0)),
    "thinking": ("blink", (0.0, 0.6, 0.6)),
    "speaking": ("on", (0.0, 1.0, 0.0)),
    "error": ("blink", (1.0, 0.0, 0.0)),
}


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("muted", [False, True])
def test_led_plan_rgb(state: str, muted: bool) -> None:
    plan = led_plan(state, muted, rgb=True)
    assert set(plan) == {"rgb"}
    p = plan["rgb"]
    if muted and state != "error":
        assert (p.kind, p.color) == ("on", (0.4, 0.1, 0.0))
    else:
        assert (p.kind, p.color) == RGB_EXPECTED[state]


# --- GpioPanel on mock pins ----------------------------------------------------------------

class Presses:
    def __init__(self) -> None:
        self.short = 0
        self.long = 0
        self.pressed = threading.Event()
        self.held = threading.Event()

    def on_press(self) -> None:
        self.short += 1
        self.pressed.set()

    def on_long_press(self) -> None:
        self.long += 1
        self.held.set()


@pytest.fixture
def presses() -> Presses:
    return Presses()


def panel(leds: Leds, presses: Presses, long_press: float = 1.0,
          factory: Optional[MockFactory] = None) -> GpioPanel:
    if factory is None:
        p = make_panel("mock", leds, BUTTON, long_press, presses.on_press, presses.on_long_press)
        assert isinstance(p, GpioPanel)
        return p
    return GpioPanel(leds, BUTTON, long_press, presses.on_press, presses.on_long_press, factory)


@pytest.fixture
def discrete(presses: Presses) -> Iterator[GpioPanel]:
    p = panel(DISCRETE, presses)
    yield p
    p.close()


def check_discrete(p: GpioPanel, state: str, muted: bool) -> None:
    plan = led_plan(state, muted)
    for role in ROLES:
        device, pattern = p.pins[role], plan[role]
        if pattern.kind == "off":
            assert device.value == 0 and not blinking(device), (state, muted, role)
        elif pattern.kind == "on":
            assert device.value == pytest.approx(pattern.level), (state, muted, role)
            assert not blinking(device), (state, muted, role)
        else:
            assert blinking(device), (state, muted, role)


def test_make_panel_mock_uses_pwm(discrete: GpioPanel) -> None:
    from gpiozero import PWMLED, DigitalInputDevice
    assert set(discrete.pins) == set(ROLES)
    assert all(isinstance(d, PWMLED) for d in discrete.pins.values())
    assert isinstance(discrete.button, DigitalInputDevice) and discrete.button.pull_up
    assert isinstance(discrete.pins["ready"].pin, MockPWMPin)
    assert str(discrete.button.pin) == f"GPIO{BUTTON}"


def test_make_panel_off_is_no_panel() -> None:
    p = make_panel("off", DISCRETE, BUTTON, 1.0, lambda: None, lambda: None)
    assert isinstance(p, NoPanel) and p.pins == {}
    p.show("speaking", True)
    p.close()


@pytest.mark.parametrize("muted", [False, True])
@pytest.mark.parametrize("state", STATES)
def test_each_state_lights_the_right_pins(discrete: GpioPanel, state: str, muted: bool) -> None:
    discrete.show(state, muted)
    check_discrete(discrete, state, muted)


def test_concrete_pin_values(discrete: GpioPanel) -> None:
    pins = {role: d.pin for role, d in discrete.pins.items()}
    discrete.show("speaking", False)
    assert {r: p.state for r, p in pins.items()} == pytest.approx(
        {"ready": 0, "listening": 0, "speaking": 1.0, "error": 0})
    discrete.show("ready", True)
    assert {r: p.state for r, p in pins.items()} == pytest.approx(
        {"ready": 0.2, "listening": 0, "speaking": 0, "error": 0.3})
    discrete.show("connecting", False)
    assert blinking(discrete.pins["ready"])
    assert all(pins[r].state == 0 for r in ("listening", "speaking", "error"))


def test_every_transition_leaves_no_stale_light(discrete: GpioPanel) -> None:
    for muted_before in (False, True):
        for before in STATES:
            for after in STATES:
                discrete.show(before, muted_before)
                discrete.show(after, not muted_before)
                check_discrete(discrete, after, not muted_before)


def test_without_pwm_leds_are_on_or_off(presses: Presses) -> None:
    from gpiozero import LED
    p = panel(DISCRETE, presses, factory=MockFactory())      # plain MockPin: no PWM
    try:
        assert all(type(d) is LED for d in p.pins.values())
        p.show("ready", False)
        assert p.pins["ready"].value == 1                    # level 0.2 becomes fully on
        p.show("listening", False)
        assert blinking(p.pins["listening"])                 # a pulse becomes a blink
        assert p.pins["ready"].value == 0
        p.show("ready", True)
        assert p.pins["error"].value == 1 and p.pins["ready"].value == 1
    finally:
        p.close()


@pytest.mark.parametrize("pwm", [True, False])
def test_rgb_panel(presses: Presses, pwm: bool) -> None:
    factory = MockFactory(pin_class=MockPWMPin) if pwm else MockFactory()
    p = panel(RGB, presses, factory=factory)
    try:
        led = p.pins["rgb"]
        p.show("ready", False)
        assert led.color == pytest.approx((0.0, 0.15, 0.0) if pwm else (0.0, 1.0, 0.0))
        assert not blinking(led)
        p.show("speaking", True)
        assert led.color == pytest.approx((0.4, 0.1, 0.0) if pwm else (1.0, 1.0, 0.0))
        for state in ("connecting", "listening", "thinking", "error"):
            p.show(state, False)
            assert blinking(led), state
        p.show("speaking", False)
        assert led.color == pytest.approx((0.0, 1.0, 0.0)) and not blinking(led)
        p.show("stopped", False)
        assert led.color == (0, 0, 0)
    finally:
        p.close()


@pytest.mark.parametrize("state", ["speaking", "connecting", "listening"])
def test_close_turns_everything_off(presses: Presses, state: str) -> None:
    p = panel(DISCRETE, presses)
    p.show(state, True)
    devices = list(p.pins.values()) + [p.button]
    pins = [d.pin for d in p.pins.values()]
    p.close()
    assert all(d.closed for d in devices)
    assert all(not pin.state for pin in pins)
    assert not any(blinking(d) for d in devices)
    p.close()                                   # twice is harmless


def test_close_rgb_turns_it_off(presses: Presses) -> None:
    p = panel(RGB, presses, factory=MockFactory(pin_class=MockPWMPin))
    p.show("thinking", False)
    pins = [led.pin for led in p.pins["rgb"]._leds]
    p.close()
    assert all(not pin.state for pin in pins)


def test_short_press_calls_on_press(discrete: GpioPanel, presses: Presses) -> None:
    pin = discrete.button.pin
    pin.drive_low()
    pin.drive_high()
    assert presses.pressed.is_set()
    assert (presses.short, presses.long) == (1, 0)


def test_long_press_calls_on_long_press_only(presses: Presses) -> None:
    p = panel(DISCRETE, presses, long_press=0.05)
    try:
        pin = p.button.pin
        pin.drive_low()
        assert presses.held.wait(3.0), "the hold never fired"
        pin.drive_high()
        assert (presses.short, presses.long) == (0, 1)
        # the next short press is a press again
        pin.drive_low()
        pin.drive_high()
        assert (presses.short, presses.long) == (1, 1)
    finally:
        p.close()


def test_button_without_leds(presses: Presses) -> None:
    p = panel(Leds(), presses)
    try:
        assert p.pins == {}
        p.show("speaking", False)
        p.button.pin.drive_low()
        p.button.pin.drive_high()
        assert presses.short == 1
    finally:
        p.close()


# --- gpio = auto: what is reported when the pins cannot be used ------------------------------

class LogLines(logging.Handler):
    """What soca.indicators logs (the soca logger may not propagate to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def gpio_log() -> Iterator[LogLines]:
    logger = logging.getLogger("soca.indicators")
    lines, level = LogLines(), logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.DEBUG)
    yield lines
    logger.removeHandler(lines)
    logger.setLevel(level)


@pytest.fixture
def default_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockFactory]:
    """gpio = auto finds a working pin factory (as on a Pi): gpiozero's default, mocked."""
    from gpiozero import Device
    factory = MockFactory(pin_class=MockPWMPin)
    monkeypatch.setattr(Device, "pin_factory", factory)
    yield factory
    factory.close()


@pytest.mark.parametrize("leds, button", [
    (Leds(ready=999), BUTTON), (Leds(ready=-1), BUTTON), (Leds(ready=5), 999),
    (Leds(ready=BUTTON), BUTTON),                                # the button on an LED's pin
])
def test_auto_with_a_bad_pin_is_an_error(default_factory: MockFactory, gpio_log: LogLines,
                                         presses: Presses, leds: Leds, button: int) -> None:
    p = make_panel("auto", leds, button, 1.0, presses.on_press, presses.on_long_press)
    assert isinstance(p, NoPanel)
    errors = gpio_log.at(logging.ERROR)
    assert len(errors) == 1 and "WITHOUT the button and LEDs" in errors[0], gpio_log.records
    assert "button_pin and [leds]" in errors[0]
    assert gpio_log.at(logging.INFO) == []
    # Nothing half-made is left claiming a pin: a good panel can be built right after.
    good = make_panel("auto", DISCRETE, BUTTON, 1.0, presses.on_press, presses.on_long_press)
    assert isinstance(good, GpioPanel)
    good.close()


def test_auto_with_a_pin_held_by_another_program_is_an_error(
        default_factory: MockFactory, gpio_log: LogLines, presses: Presses) -> None:
    from gpiozero import LED
    other = LED(DISCRETE.ready)                         # someone else drives GPIO5
    try:
        p = make_panel("auto", DISCRETE, BUTTON, 1.0, presses.on_press, presses.on_long_press)
        assert isinstance(p, NoPanel)
        assert any("GPIOPinInUse" in line for line in gpio_log.at(logging.ERROR))
    finally:
        other.close()


def test_auto_on_a_pi_without_a_pin_library_is_an_error(
        monkeypatch: pytest.MonkeyPatch, gpio_log: LogLines, presses: Presses) -> None:
    from gpiozero import Device
    from soca_appliance import indicators
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    monkeypatch.setattr(indicators, "board_model", lambda: "Raspberry Pi 5 Model B Rev 1.0")
    p = make_panel("auto", DISCRETE, BUTTON, 1.0, presses.on_press, presses.on_long_press)
    assert isinstance(p, NoPanel)
    [error] = gpio_log.at(logging.ERROR)
    assert "on a Raspberry Pi 5 Model B" in error and "BadPinFactory" in error
    assert "Falling back from lgpio" in error                  # gpiozero's reasons, kept


def test_auto_off_a_pi_is_one_info_line_and_no_warnings(
        monkeypatch: pytest.MonkeyPatch, gpio_log: LogLines, presses: Presses,
        recwarn: pytest.WarningsRecorder) -> None:
    from gpiozero import Device
    from soca_appliance import indicators
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    monkeypatch.setattr(indicators, "board_model", lambda: None)
    p = make_panel("auto", DISCRETE, BUTTON, 1.0, presses.on_press, presses.on_long_press)
    assert isinstance(p, NoPanel)
    assert gpio_log.at(logging.ERROR) == []
    [info] = gpio_log.at(logging.INFO)
    assert "not a Raspberry Pi" in info
    assert [w for w in recwarn if "gpiozero" in w.filename] == []   # not on stderr


def test_auto_pin_error_is_an_error_event_in_the_json_log(
        default_factory: MockFactory, presses: Presses) -> None:
    from soca_appliance.events import EventLog, setup_logging
    out = io.StringIO()
    setup_logging(EventLog("json", stream=out), "info")
    try:
        make_panel("auto", Leds(ready=BUTTON), BUTTON, 1.0, presses.on_press,
                   presses.on_long_press)
    finally:
        logging.getLogger("soca").handlers.clear()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["event"], e["level"], e["logger"]) for e in events] == [
        ("log", "error", "soca.indicators")]


def test_board_model(tmp_path: Path) -> None:
    from soca_appliance.indicators import board_model
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi Zero 2 W Rev 1.0\0")
    assert board_model(str(model)) == "Raspberry Pi Zero 2 W Rev 1.0"
    model.write_bytes(b"QEMU Virtual Machine\0")
    assert board_model(str(model)) is None
    assert board_model(str(tmp_path / "absent")) is None


# --- the real appliance, end to end ---------------------------------------------------------

class Recorder:
    """Every event the appliance emits, with a way to wait for one."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def __call__(self, record: dict[str, Any]) -> None:
        with self.cond:
            self.events.append(record)
            self.cond.notify_all()

    def find(self, pred: Callable[[dict[str, Any]], bool], start: int = 0) -> list[dict[str, Any]]:
        with self.cond:
            return [e for e in self.events[start:] if pred(e)]

    def mark(self) -> int:
        with self.cond:
            return len(self.events)

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0,
             start: int = 0, what: str = "event") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events[start:]:
                    if pred(e):
                        return e
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [e["event"] for e in self.events if e["event"] != "log"]
                    pytest.fail(f"timed out after {timeout:g} s waiting for {what}; "
                                f"events: {seen}")
                self.cond.wait(remaining)


def ev(name: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == name and all(e.get(k) == v for k, v in fields.items())


class Rig:
    def __init__(self, app: Any, sim: Any, rec: Recorder, tmp_path: Path) -> None:
        self.app, self.sim, self.rec, self.tmp_path = app, sim, rec, tmp_path
        self.stopped = False

    @property
    def pin(self) -> Any:
        return self.app.panel.button.pin

    def stat(self, key: str) -> int:
        return self.sim.stats()[key]

    def connected(self) -> None:
        wait_for(lambda: self.app.link.streaming and self.stat("frames_received") > 5, 10,
                 "the appliance to connect and stream")

    def first_sentence(self) -> dict[str, Any]:
        return self.rec.wait(ev("sentence.play"), 20, what="the first sentence.play")

    def shutdown(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.app.shutdown()


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Rig]:
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    from soca_appliance.appliance import Appliance
    from soca_appliance.events import EventLog
    from soca_appliance.simulator import Simulator
    from soca_appliance.wavsource import WavSource

    sim = Simulator(expected_key="k")
    sim.start()
    rig_: Optional[Rig] = None
    try:
        # os.devnull: never the machine's /etc/soca-appliance/config.toml
        cfg = config.load(Path(os.devnull), env={}, overrides={
            "url": sim.url, "agent_id": "test-agent", "lang": "en", "gpio": "mock",
            "input": str(DEMO_WAV), "duplex": "full", "long_press": 0.1,
            "leds.ready": DISCRETE.ready, "leds.listening": DISCRETE.listening,
            "leds.speaking": DISCRETE.speaking, "leds.error": DISCRETE.error,
            "button_pin": BUTTON, "control_socket": str(tmp_path / "c.sock")})
        rec = Recorder()
        events = EventLog("json", stream=io.StringIO())
        events.subscribe(rec)
        app = Appliance(cfg, events, WavSource(cfg.input), "k")
        rig_ = Rig(app, sim, rec, tmp_path)
        app.start()
        yield rig_
    finally:
        if rig_ is not None:
            rig_.shutdown()
        sim.stop()


def test_button_barges_in_during_a_sentence(rig: Rig) -> None:
    play = rig.first_sentence()
    seq, sid = play["seq"], play["sentence_id"]
    speaking = rig.app.panel.pins["speaking"]
    wait_for(lambda: speaking.value == 1.0, 2, "the speaking LED")
    mark = rig.rec.mark()

    rig.pin.drive_low()
    rig.pin.drive_high()                # a short press, handled in this thread

    rig.rec.wait(ev("sentence.stop", seq=seq, sentence_id=sid, reason="button"), 2, mark,
                 "the playing sentence to stop")
    barge = rig.rec.wait(ev("barge", source="button"), 2, mark, "the local barge event")
    assert barge["seq"] == seq
    wait_for(lambda: rig.stat("barges_received") == 1, 5, "the simulator to get the barge")
    # The simulator answers with a barge to the next seq; from then on seq is over for good.
    server = rig.rec.wait(lambda e: e["event"] == "barge" and e.get("source") == "server",
                          5, mark, "the server's barge")
    assert server["seq"] > seq
    wait_for(lambda: rig.app.status()["seq"] == server["seq"], 2, "the new seq")
    assert rig.rec.find(ev("sentence.play", seq=seq), mark) == []
    assert rig.app.counters.barges_button == 1
    assert speaking.value == 0
    assert not rig.app.player.busy


def test_long_press_mutes_and_unmutes_the_mic(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    presses: list[str] = []
    real_press = rig.app.press
    monkeypatch.setattr(rig.app, "press", lambda source="button": presses.append(source)
                        or real_press(source))
    rig.connected()
    error_led = rig.app.panel.pins["error"]
    mark = rig.rec.mark()

    rig.pin.drive_low()                 # hold: gpiozero's thread fires after long_press
    rig.rec.wait(ev("mute", muted=True), 3, mark, "mute")
    rig.pin.drive_high()
    assert rig.app.muted
    wait_for(lambda: error_led.value == pytest.approx(0.3), 2, "the privacy glow")
    assert presses == []                                    # the hold is not also a press

    # What was already queued goes out; after that nothing more reaches the server.
    wait_for(lambda: rig.stat("frames_received") == rig.app.link.stats.frames_sent, 3,
             "the queued frames to drain")
    muted_before = rig.app.counters.frames_muted
    first = rig.stat("frames_received")
    time.sleep(0.5)
    assert rig.stat("frames_received") == first
    assert rig.app.counters.frames_muted > muted_before     # captured, counted, not sent

    mark = rig.rec.mark()
    rig.pin.drive_low()
    rig.rec.wait(ev("mute", muted=False), 3, mark, "unmute")
    rig.pin.drive_high()
    wait_for(lambda: rig.stat("frames_received") > first + 5, 3, "audio to flow again")
    wait_for(lambda: error_led.value == 0, 2, "the privacy glow to go out")
    assert presses == []
    rig.pin.drive_low()                 # and a short press still reaches press()
    rig.pin.drive_high()
    assert presses == ["button"]


def test_shutdown_turns_every_led_off(rig: Rig) -> None:
    rig.connected()
    ready = rig.app.panel.pins["ready"]
    wait_for(lambda: ready.value == pytest.approx(0.2) or blinking(rig.app.panel.pins["listening"]),
             3, "a lit LED")
    rig.app.set_muted(True)
    assert rig.app.panel.pins["error"].value == pytest.approx(0.3)
    devices = list(rig.app.panel.pins.values()) + [rig.app.panel.button]
    pins = [d.pin for d in rig.app.panel.pins.values()]
    rig.shutdown()
    assert all(not pin.state for pin in pins)
    assert all(d.closed for d in devices)
    assert rig.rec.find(ev("state", state="stopped"))


def test_control_socket_acts_like_the_button(rig: Rig,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from soca_appliance.control import ControlServer, ctl_main, make_handler

    path = str(rig.tmp_path / "c.sock")
    server = ControlServer(path, make_handler(rig.app))
    server.start()
    try:
        def ctl(*argv: str) -> tuple[int, Any]:
            code = ctl_main(["--control-socket", path, *argv])
            out = capsys.readouterr().out
            return code, json.loads(out)

        # nothing is being said yet: a press is a chime, not a barge
        code, reply = ctl("barge")
        assert (code, reply) == (0, {"ok": True, "result": "chime"})

        rig.connected()
        code, status = ctl("status")
        assert code == 0 and status["ok"] is True
        assert status["connected"] is True and status["muted"] is False
        assert status["state"] in ("ready", "listening", "thinking", "speaking")
        assert isinstance(status["seq"], int)
        assert status["counters"]["frames_sent"] > 0
        assert status["counters"]["barges_button"] == 0

        play = rig.first_sentence()
        mark = rig.rec.mark()
        code, reply = ctl("barge")
        assert (code, reply) == (0, {"ok": True, "result": "barged"})
        rig.rec.wait(ev("sentence.stop", seq=play["seq"], sentence_id=play["sentence_id"],
                        reason="button"), 2, mark, "the sentence to stop")
        rig.rec.wait(ev("barge", source="ctl", seq=play["seq"]), 2, mark, "the ctl barge")
        wait_for(lambda: rig.stat("barges_received") == 1, 5, "the simulator to get the barge")
        rig.rec.wait(lambda e: e["event"] == "barge" and e.get("source") == "server", 5, mark,
                     "the server's barge")
        assert rig.rec.find(ev("sentence.play", seq=play["seq"]), mark) == []

        mark = rig.rec.mark()
        code, reply = ctl("mute")
        assert (code, reply) == (0, {"ok": True, "muted": True})
        assert rig.rec.find(ev("mute", muted=True), mark)
        code, status = ctl("status")
        assert status["muted"] is True and status["counters"]["barges_button"] == 1
        assert status["seq"] > play["seq"]
        code, reply = ctl("unmute")
        assert (code, reply) == (0, {"ok": True, "muted": False})
        assert rig.app.muted is False
    finally:
        server.close()
    assert not os.path.exists(path)
    assert ctl_main(["--control-socket", path, "status"]) == 2


def test_an_idle_button_has_no_thread_that_polls(discrete: GpioPanel) -> None:
    """gpiozero's Button keeps a HoldThread waking every 100 ms for the life of the
    process; the panel's long-press timer exists only while the button is down."""
    from gpiozero.mixins import HoldThread

    def threads(kind: str) -> list[threading.Thread]:
        return [t for t in threading.enumerate()
                if (isinstance(t, HoldThread) if kind == "hold" else t.name == "button-hold")]

    assert threads("hold") == [] and threads("timer") == []
    pin = discrete.button.pin
    pin.drive_low()
    assert len(threads("timer")) == 1
    pin.drive_high()
    wait_for(lambda: threads("timer") == [], 5, "the long-press timer to end with the press")
    assert threads("hold") == []
