"""Checks: the LEDs (walked through every state on the pins the config names) and the button
(a real press, or a simulated one on mock pins)."""
from __future__ import annotations

import time
from typing import Any

from .context import Context
from .result import BUTTON_WAIT_S, Result, failed, passed, skipped

def check_leds(ctx: Context) -> Result:
    name = "gpio.leds"
    from ..indicators import STATES, NoPanel, board_model, led_plan
    if ctx.gpio_mode == "off":
        return skipped(name, "gpio = off")
    panel, why = ctx.panel()
    if isinstance(panel, NoPanel):
        if board_model() is not None:
            return failed(name, f"no usable GPIO ({why or 'no pin factory'})",
                          "add the user to group gpio; install lgpio in the venv "
                          "(install.sh does on a Pi)")
        reason = ("gpiozero found no pin library" if "BadPinFactory" in why
                  else why or "no pin factory")
        return skipped(name, f"no GPIO here (not a Raspberry Pi; {reason})",
                       "--gpio mock exercises the LED code with simulated pins")
    if not panel.pins:
        return skipped(name, "no LEDs configured ([leds] in the config)")
    rgb = "rgb" in panel.pins
    hold = 1.0 if ctx.interactive and ctx.gpio_mode != "mock" else 0.05   # time to watch
    watch = hold >= 1.0
    if watch:
        ctx.say(f"soca-diag: walking the LEDs through {len(STATES)} states, {hold:g} s each...")
    wrong: list[str] = []
    for state in STATES:
        if watch:
            ctx.say(f"  LEDs: {state}")
        panel.show(state, False)
        time.sleep(hold)
        for role, pattern in led_plan(state, False, rgb).items():
            device = panel.pins.get(role)
            if device is None or pattern.kind not in ("on", "off"):
                continue                               # blinking/pulsing: any value is right
            lit = _led_value(device) > 0
            if lit != (pattern.kind == "on"):
                wrong.append(f"{role} should be {pattern.kind} in '{state}'")
    for device in panel.pins.values():
        device.off()
    pins = ", ".join(f"{role}={_pin_name(dev)}" for role, dev in panel.pins.items())
    detail = f"{ctx.gpio_mode}: {pins}; walked {len(STATES)} states ({', '.join(STATES)})"
    if wrong:
        return failed(name, detail + "; " + "; ".join(wrong), "check [leds] pins in the config")
    return passed(name, detail, mode=ctx.gpio_mode, leds=sorted(panel.pins),
                  states=list(STATES))


def check_button(ctx: Context) -> Result:
    name = "gpio.button"
    from ..indicators import NoPanel
    if ctx.gpio_mode == "off":
        return skipped(name, "gpio = off")
    if not ctx.interactive:
        return skipped(name, "needs someone to press it (--no-interactive)")
    panel, why = ctx.panel()
    if isinstance(panel, NoPanel):
        return skipped(name, f"no GPIO here: {why or 'no pin factory'}")
    button = getattr(panel, "button", None)
    if button is None:
        return skipped(name, "no button configured (button_pin)")
    pin = ctx.cfg.button_pin
    ctx.pressed.clear()
    start = time.monotonic()
    if ctx.gpio_mode == "mock":
        button.pin.drive_low()                 # a simulated press and release
        time.sleep(0.1)
        button.pin.drive_high()
        if ctx.pressed.wait(2.0):
            return passed(name, f"simulated press on mock GPIO{pin} reached the handler")
        return failed(name, f"simulated press on mock GPIO{pin} was not seen")
    ctx.say(f"soca-diag: press the button (GPIO{pin}) within {BUTTON_WAIT_S:g} s...")
    if ctx.pressed.wait(BUTTON_WAIT_S):
        took = time.monotonic() - start
        return passed(name, f"GPIO{pin}: pressed after {took:.1f} s", seconds=round(took, 2))
    return failed(name, f"GPIO{pin}: no press within {BUTTON_WAIT_S:g} s",
                  f"the button goes between GPIO{pin} and GND (internal pull-up); check "
                  "button_pin in the config")



def _led_value(device: Any) -> float:
    value = device.value
    if isinstance(value, tuple):
        return max(value)
    return float(value)


def _pin_name(device: Any) -> str:
    pins = getattr(device, "_leds", None)
    if pins:
        return "/".join(_pin_name(led) for led in pins)
    pin = getattr(device, "pin", None)
    info = getattr(pin, "info", None)
    return str(getattr(info, "name", None) or pin)
