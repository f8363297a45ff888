"""The kiosk's physical interface: LEDs that show the state, a button that interrupts.

``led_plan`` is a pure function from the appliance's state to what each LED does, tested
without hardware. :class:`GpioPanel` drives it with gpiozero (discrete LEDs or one RGB
LED, PWM where the pin allows) and turns button presses into callbacks; :class:`NoPanel`
stands in where there is no GPIO. ``--gpio mock`` uses gpiozero's MockFactory, so the
demo and the tests exercise the real gpiozero code.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .config import Leds

log = logging.getLogger("soca.indicators")

STATES = ("connecting", "ready", "listening", "thinking", "speaking", "error")


@dataclass(frozen=True)
class Pattern:
    kind: str = "off"                      # off | on | blink | pulse
    level: float = 1.0                     # brightness for "on" (PWM) / colour scale (RGB)
    on_time: float = 0.0
    off_time: float = 0.0
    color: tuple[float, float, float] = (0.0, 0.0, 0.0)   # RGB LED only


OFF = Pattern()
SLOW = dict(on_time=0.5, off_time=1.0)
FAST = dict(on_time=0.1, off_time=0.1)


HOLD_TO_TALK = Pattern("pulse", level=0.2, on_time=1.5, off_time=1.5)   # "press and hold me"


def led_plan(state: str, muted: bool, rgb: bool = False,
             hold_to_talk: bool = False) -> dict[str, Pattern]:
    """What each LED does in ``state``: keys are ready/listening/speaking/error, or rgb.
    ``hold_to_talk`` (push-to-talk mode): ready breathes slowly instead of glowing."""
    if rgb:
        pattern = _rgb_plan(state, muted)
        if hold_to_talk and state == "ready" and not muted:
            pattern = dataclasses.replace(HOLD_TO_TALK, color=(0.0, 0.4, 0.0))
        return {"rgb": pattern}
    plan = {"ready": OFF, "listening": OFF, "speaking": OFF, "error": OFF}
    if state == "connecting":
        plan["ready"] = Pattern("blink", **SLOW)
    elif state == "ready":
        plan["ready"] = Pattern("on", level=0.2)
    elif state == "listening":
        plan["listening"] = Pattern("pulse", on_time=0.5, off_time=0.5)
    elif state == "thinking":
        plan["listening"] = Pattern("blink", **FAST)
    elif state == "speaking":
        plan["speaking"] = Pattern("on", level=1.0)
    elif state == "error":
        plan["error"] = Pattern("blink", on_time=0.1, off_time=0.4)
    if hold_to_talk and state == "ready":
        plan["ready"] = HOLD_TO_TALK
    if muted and state != "error":
        plan["error"] = Pattern("on", level=0.3)      # privacy: a steady red glow
        plan["listening"] = OFF
    return plan


def _rgb_plan(state: str, muted: bool) -> Pattern:
    if state == "error":
        return Pattern("blink", color=(1.0, 0.0, 0.0), on_time=0.1, off_time=0.4)
    if muted:
        return Pattern("on", color=(0.4, 0.1, 0.0))
    return {
        "connecting": Pattern("blink", color=(0.0, 0.0, 1.0), **SLOW),
        "ready": Pattern("on", color=(0.0, 0.15, 0.0)),
        "listening": Pattern("pulse", color=(0.0, 0.0, 1.0), on_time=0.5, off_time=0.5),
        "thinking": Pattern("blink", color=(0.0, 0.6, 0.6), **FAST),
        "speaking": Pattern("on", color=(0.0, 1.0, 0.0)),
    }.get(state, OFF)


class NoPanel:
    """No GPIO: nothing to light, nothing to press."""
    pins: dict[str, Any] = {}

    def show(self, state: str, muted: bool) -> None:
        pass

    def close(self) -> None:
        pass


class GpioPanel:
    def __init__(self, leds: Leds, button_pin: Optional[int], long_press: float,
                 on_press: Callable[[], None], on_long_press: Callable[[], None],
                 pin_factory: Any = None, on_down: Optional[Callable[[], None]] = None,
                 on_up: Optional[Callable[[], None]] = None) -> None:
        """``on_down``/``on_up`` (push-to-talk): the button's press and release as they
        happen, instead of short and long presses."""
        # DigitalInputDevice, not Button: Button's HoldThread wakes every 100 ms for the life
        # of the process (0.10 % of a core, measured); a timer that exists only while the
        # button is down measures the long press instead.
        from gpiozero import DigitalInputDevice
        self.hold_to_talk = on_down is not None
        self.factory = pin_factory
        self.rgb = bool(leds.rgb)
        self.pins: dict[str, Any] = {}
        self._pwm: dict[str, bool] = {}
        self._devices: list[Any] = []
        self._long_press = long_press
        self._press_lock = threading.Lock()
        self._hold_timer: Optional[threading.Timer] = None   # while down, until long press
        self._held = False
        try:
            if self.rgb:
                self.pins["rgb"], self._pwm["rgb"] = self._rgb_led(leds.rgb)
            else:
                for role in ("ready", "listening", "speaking", "error"):
                    pin = getattr(leds, role)
                    if pin is not None:
                        self.pins[role], self._pwm[role] = self._led(pin)
            self.button = None
            if button_pin is not None:
                self.button = DigitalInputDevice(button_pin, pull_up=True, bounce_time=0.05,
                                                 pin_factory=pin_factory)
                self._devices.append(self.button)
                if on_down is not None:
                    self.button.when_activated = on_down
                    self.button.when_deactivated = on_up
                else:
                    self.button.when_activated = self._on_down
                    self.button.when_deactivated = self._on_released
        except Exception:
            self.close()
            raise
        self._on_press = on_press
        self._on_long_press = on_long_press

    def _led(self, pin: int) -> tuple[Any, bool]:
        from gpiozero import LED, PWMLED
        from gpiozero.exc import PinPWMUnsupported
        try:
            device: Any = PWMLED(pin, pin_factory=self.factory)
            pwm = True
        except PinPWMUnsupported:
            device, pwm = LED(pin, pin_factory=self.factory), False
        self._devices.append(device)
        return device, pwm

    def _rgb_led(self, pins: tuple[int, ...]) -> tuple[Any, bool]:
        from gpiozero import RGBLED
        from gpiozero.exc import PinPWMUnsupported
        try:
            device, pwm = RGBLED(*pins, pwm=True, pin_factory=self.factory), True
        except PinPWMUnsupported:
            device, pwm = RGBLED(*pins, pwm=False, pin_factory=self.factory), False
        self._devices.append(device)
        return device, pwm

    def _on_down(self) -> None:
        timer = threading.Timer(self._long_press, self._on_held)
        timer.name, timer.daemon = "button-hold", True
        with self._press_lock:
            if self._hold_timer is not None:
                self._hold_timer.cancel()
            self._hold_timer, self._held = timer, False
        timer.start()

    def _on_held(self) -> None:
        with self._press_lock:
            if self._hold_timer is None:
                return          # released while this timer was firing: a short press
            self._hold_timer, self._held = None, True
        self._on_long_press()

    def _on_released(self) -> None:
        with self._press_lock:
            timer, self._hold_timer = self._hold_timer, None
            held, self._held = self._held, False
        if timer is not None:
            timer.cancel()
        if not held:
            self._on_press()

    def show(self, state: str, muted: bool) -> None:
        if not self._devices:
            return          # closed: a late callback from a worker thread changes nothing
        for role, pattern in led_plan(state, muted, self.rgb, self.hold_to_talk).items():
            device = self.pins.get(role)
            if device is None:
                continue
            try:
                _apply(device, pattern, self.rgb, self._pwm[role])
            except Exception as exc:  # noqa: BLE001 - an LED must never stop the appliance
                log.warning("LED %s could not show %s: %s", role, state, exc)

    def close(self) -> None:
        with self._press_lock:
            timer, self._hold_timer = self._hold_timer, None
        if timer is not None:
            timer.cancel()
        for device in self._devices:
            try:
                if hasattr(device, "off"):
                    device.off()
                device.close()
            except Exception as exc:  # noqa: BLE001 - closing hardware must not stop shutdown
                log.debug("closing %s: %s", device, exc)
        self._devices.clear()


def _apply(device: Any, p: Pattern, rgb: bool, pwm: bool) -> None:
    color = p.color if pwm else tuple(1.0 if c > 0 else 0.0 for c in p.color)
    if p.kind == "off":
        device.off()
    elif p.kind == "on":
        if rgb:
            device.color = color
        else:
            device.value = p.level if pwm else 1
    elif p.kind == "pulse" and pwm:
        kwargs: dict[str, Any] = {"fade_in_time": p.on_time, "fade_out_time": p.off_time}
        if rgb:
            kwargs["on_color"] = color
        device.pulse(**kwargs)
    else:   # blink, or a pulse on a pin without PWM
        kwargs = {"on_time": p.on_time, "off_time": p.off_time}
        if rgb:
            kwargs["on_color"] = color
        device.blink(**kwargs)


def make_panel(mode: str, leds: Leds, button_pin: Optional[int], long_press: float,
               on_press: Callable[[], None], on_long_press: Callable[[], None],
               on_down: Optional[Callable[[], None]] = None,
               on_up: Optional[Callable[[], None]] = None) -> Any:
    """``off``: none. ``mock``: gpiozero's MockFactory. ``auto``: the Pi's pins, or none.
    ``on_down``/``on_up``: push-to-talk (see :class:`GpioPanel`).

    With ``auto``, no GPIO off a Raspberry Pi is normal (an info line). On a Pi, or when a pin
    factory loaded but a pin was refused (bad or busy pin), the appliance runs without its
    button and LEDs and says so at error level: a kiosk must not silently lose its button.
    """
    if mode == "off":
        return NoPanel()
    factory = None
    if mode == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin
        factory = MockFactory(pin_class=MockPWMPin)
    # gpiozero warns once per pin library it cannot load (lgpio, RPi.GPIO, pigpio, native):
    # noise on stderr off a Pi, and the reason worth saying on one, so they go to the log.
    # (catch_warnings swaps process-wide state: fine here, before any worker thread runs.)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            panel = GpioPanel(leds, button_pin, long_press, on_press, on_long_press, factory,
                              on_down, on_up)
        except Exception as exc:  # noqa: BLE001 - gpiozero raises many kinds off a Pi
            if mode == "mock":
                raise
            failure: Optional[Exception] = exc
        else:
            failure = None
    tried = [str(w.message) for w in caught]
    if failure is None:
        for text in tried:
            log.debug("gpiozero: %s", text)
        return panel
    model = board_model()
    why = f"{failure.__class__.__name__}: {failure}"
    if tried:
        why += " (" + "; ".join(tried) + ")"
    if model is None and _no_factory(failure):
        log.info("no usable GPIO here (not a Raspberry Pi; %s): running without button "
                 "and LEDs", why)
    else:
        log.error("GPIO failed%s: %s; running WITHOUT the button and LEDs: check button_pin "
                  "and [leds] in the config, the gpio group, and that no other program uses "
                  "the pins (soca-diag --only gpio)", f" on a {model}" if model else "", why)
    return NoPanel()


def _no_factory(exc: Exception) -> bool:
    """gpiozero found no pin library to load: there is no GPIO, rather than a bad pin."""
    from gpiozero.exc import BadPinFactory
    return isinstance(exc, (BadPinFactory, ImportError))


def board_model(path: str = "/proc/device-tree/model") -> Optional[str]:
    """The Raspberry Pi's model ("Raspberry Pi 4 Model B Rev 1.5"), or None off a Pi."""
    try:
        text = Path(path).read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
    except OSError:
        return None
    return text if "Raspberry Pi" in text else None
