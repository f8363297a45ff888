"""``soca-diag``: check a kiosk from an SSH session, one line per check.

Runs, in order: the configuration, the private key, the microphone (found by name, then a
few seconds recorded through the same :class:`~soca_appliance.framing.Converter` path the
appliance uses, with level, peak and clipping), the speaker (pygame's mixer plays the
bundled chime), the GPIO LEDs and button, the network (DNS, TCP, TLS, then a real ``start``
handshake with the voice agent), the boot service, and the Pi itself (power, temperature,
disk, memory).

Every check is a small function returning a :class:`Result` (PASS, WARN, FAIL or SKIP, a
one-line detail, a hint and optional figures); whatever it raises becomes a FAIL with the
reason, never a traceback. The exit status is 1 when any check FAILs, else 0. ``--json``
prints one document ``{"checks": [...], "ok": bool}``. The private key is never printed:
every text is scrubbed of it before it is shown.

The mic and the speaker cannot be shared with a running appliance on most USB devices: stop
the service first (``sudo systemctl stop soca-appliance``) for those two checks.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import pwd
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TextIO
from urllib.parse import urlparse

from . import __version__, config
from .config import Config, ConfigError

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
UNIT = "soca-appliance"
SERVICE_USER = "soca"
SILENT_DBFS = -60.0
CLIP_SHARE = 0.01                    # more than 1 % of samples at full scale
BUTTON_WAIT_S = 10.0
THROTTLE_BITS = {
    0: "under-voltage now", 1: "ARM frequency capped now", 2: "throttled now",
    3: "soft temperature limit now", 16: "under-voltage since boot",
    17: "frequency capped since boot", 18: "throttled since boot",
    19: "soft temperature limit since boot",
}
UNDER_VOLTAGE_NOW = 1 << 0
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


@dataclass
class Result:
    name: str
    status: str
    detail: str = ""
    hint: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


def passed(name: str, detail: str, **figures: Any) -> Result:
    return Result(name, PASS, detail, "", figures)


def warned(name: str, detail: str, hint: str = "", **figures: Any) -> Result:
    return Result(name, WARN, detail, hint, figures)


def failed(name: str, detail: str, hint: str = "", **figures: Any) -> Result:
    return Result(name, FAIL, detail, hint, figures)


def skipped(name: str, detail: str, hint: str = "") -> Result:
    return Result(name, SKIP, detail, hint)


# --- shared state --------------------------------------------------------------------------

class Context:
    """What the checks share: the settings, the key, and devices opened once."""

    def __init__(self, args: argparse.Namespace, env: Mapping[str, str],
                 prompt: TextIO = sys.stderr) -> None:
        self.args = args
        self.env = env
        self.prompt = prompt
        self.interactive = not args.no_interactive
        self.record_seconds = args.record_seconds
        self.cfg_error: Optional[str] = None
        self.config_source = ""
        self.cfg = self._load_config()
        self.gpio_mode = args.gpio or self.cfg.gpio
        self.key: Optional[str] = None
        self.key_error: Optional[str] = None
        self.key_source = ""
        self._load_key()
        self._pa: Any = None
        self.pa_stuck = False
        self._mic: Optional[tuple[Any, int, int]] = None       # (device, rate, channels)
        self._mic_error: Optional[str] = None
        self._panel: Any = None
        self._panel_why = ""
        self._pressed = threading.Event()
        self._dns: Optional[list[tuple[Any, ...]]] = None
        self._dns_error: Optional[str] = None
        self._dns_ms = 0.0

    # configuration and key -----------------------------------------------------------

    def _load_config(self) -> Config:
        path = self.args.config
        if path is None:
            path = config.DEFAULT_CONFIG_PATH if config.DEFAULT_CONFIG_PATH.exists() else None
        self.config_source = str(path) if path is not None else "defaults (no config file)"
        overrides = {"url": self.args.url, "gpio": self.args.gpio}
        try:
            return config.load(path, env=self.env, overrides=overrides)
        except ConfigError as exc:
            self.cfg_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported as the config check's FAIL
            self.cfg_error = _describe(exc)
        # Go on with the defaults, so the hardware checks still say something useful.
        try:
            fallback = Config(url=self.args.url or config.DEFAULT_URL,
                              gpio=self.args.gpio or "auto")
            config.check_url(fallback.url, fallback.allow_insecure)
            return fallback
        except ConfigError:
            return Config(gpio=self.args.gpio or "auto")

    def _load_key(self) -> None:
        try:
            self.key = config.read_private_key(self.cfg, self.env)
        except ConfigError as exc:
            self.key_error = str(exc)
            return
        except Exception as exc:  # noqa: BLE001
            self.key_error = _describe(exc)
            return
        self.key_source = (f"{config.KEY_ENV} (environment)" if self.env.get(config.KEY_ENV)
                           else self.cfg.private_key_file)

    def secrets(self) -> list[str]:
        found = [self.key or "", self.env.get(config.KEY_ENV, "").strip()]
        return [s for s in found if len(s) >= 4]

    def say(self, text: str) -> None:
        """A line for the person at the kiosk (stderr: stdout stays the report)."""
        print(text, file=self.prompt, flush=True)

    # microphone ---------------------------------------------------------------------

    def mic(self) -> tuple[Any, int, int]:
        """The configured input and the format the appliance would open it at (cached)."""
        from .microphone import MicError, choose_format, find_input, open_pyaudio
        if self._mic is not None:
            return self._mic
        if self._mic_error is not None:
            raise MicError(self._mic_error)
        try:
            if self._pa is None:
                self._pa = open_pyaudio()
            device = find_input(self._pa, self.cfg.mic)
            rate = int(getattr(self.cfg, "mic_rate", 0) or 0)
            channels = int(getattr(self.cfg, "mic_channels", 0) or 0)
            if rate or channels:
                rate, channels = choose_format(self._pa, device, rate, channels)
            else:
                rate, channels = choose_format(self._pa, device)
        except Exception as exc:  # noqa: BLE001 - MicError, OSError, a missing PortAudio...
            self._mic_error = str(exc) if isinstance(exc, MicError) else _describe(exc)
            raise MicError(self._mic_error) from None
        self._mic = (device, rate, channels)
        return self._mic

    @property
    def pa(self) -> Any:
        return self._pa

    # GPIO ----------------------------------------------------------------------------

    def panel(self) -> tuple[Any, str]:
        """The LED/button panel built the way the appliance builds it, and why if none."""
        if self._panel is None:
            from .indicators import make_panel
            catcher = _LogCatcher("soca.indicators")
            with catcher:
                self._panel = make_panel(self.gpio_mode, self.cfg.leds, self.cfg.button_pin,
                                         self.cfg.long_press, self._pressed.set,
                                         self._pressed.set)
            self._panel_why = catcher.text()
        return self._panel, self._panel_why

    @property
    def pressed(self) -> threading.Event:
        return self._pressed

    # network -------------------------------------------------------------------------

    def endpoint(self) -> tuple[str, str, int]:
        parsed = urlparse(self.cfg.url)
        port = parsed.port or (443 if parsed.scheme == "wss" else 80)
        return parsed.scheme, parsed.hostname or "", port

    def resolve(self) -> list[tuple[Any, ...]]:
        if self._dns is None and self._dns_error is None:
            _scheme, host, port = self.endpoint()
            start = time.monotonic()
            try:
                self._dns = _with_timeout(
                    lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                    self.cfg.connect_timeout, f"resolving {host}")
            except Exception as exc:  # noqa: BLE001
                self._dns_error = _describe(exc)
            self._dns_ms = (time.monotonic() - start) * 1000.0
        if self._dns_error is not None:
            raise OSError(self._dns_error)
        assert self._dns is not None
        return self._dns

    def close(self) -> None:
        if self._panel is not None:
            with contextlib.suppress(Exception):
                self._panel.close()
        if self._pa is not None and not self.pa_stuck:
            from .microphone import quiet_stderr
            with contextlib.suppress(Exception), quiet_stderr():
                self._pa.terminate()


class _LogCatcher(logging.Handler):
    """Collects what a module logs while it runs (make_panel says why GPIO is missing)."""

    def __init__(self, logger: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(logger)
        self.lines: list[str] = []
        self._level = self.logger.level

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> "_LogCatcher":
        self.logger.addHandler(self)
        self.logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)

    def text(self) -> str:
        return "; ".join(self.lines)


# --- checks: configuration and key ---------------------------------------------------------

def check_config(ctx: Context) -> Result:
    name = "config"
    if ctx.cfg_error is not None:
        return failed(name, ctx.cfg_error, "fix the file (see etc/config.example.toml); "
                      "soca-diag --only config checks it again")
    cfg = ctx.cfg
    where = ctx.config_source
    if not cfg.agent_id:
        return failed(name, f"{where}: agent_id is not set", "set agent_id in the config "
                      "file (or SOCA_AGENT_ID)")
    if cfg.agent_id == "your-agent-id":
        return failed(name, f"{where}: agent_id is still the example's 'your-agent-id'",
                      "set agent_id to your Soca AI agent's id")
    return passed(name, f"{where}: url {cfg.url}, agent {cfg.agent_id}, lang {cfg.lang}",
                  source=where, url=cfg.url)


def check_key(ctx: Context) -> Result:
    name = "key"
    if ctx.key_error is not None:
        return failed(name, ctx.key_error, "run as root or as the service user (sudo soca-diag); "
                      "install.sh --key-file FILE writes the key with the right mode")
    if ctx.env.get(config.KEY_ENV):
        return passed(name, f"read from {config.KEY_ENV} (environment); not shown")
    path = Path(ctx.cfg.private_key_file)
    info = path.stat()
    owner = _user_name(info.st_uid)
    detail = f"{path}: mode {stat.S_IMODE(info.st_mode):04o}, owner {owner}; not shown"
    try:
        service_uid = pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        service_uid = None
    if service_uid is not None and info.st_uid != service_uid:
        return warned(name, detail + f"; the service runs as {SERVICE_USER} and cannot read it",
                      f"chown {SERVICE_USER}:{SERVICE_USER} {path}")
    return passed(name, detail, path=str(path), mode=f"{stat.S_IMODE(info.st_mode):04o}",
                  owner=owner)


# --- checks: audio -------------------------------------------------------------------------

def check_mic_device(ctx: Context) -> Result:
    name = "mic.device"
    if ctx.cfg.input:
        return skipped(name, f"input = {ctx.cfg.input}: the appliance reads a WAV file, "
                       "not a microphone")
    try:
        device, rate, channels = ctx.mic()
    except Exception as exc:  # noqa: BLE001
        return failed(name, str(exc), "plug the USB mic in; 'soca-appliance devices' lists "
                      "the inputs; set mic = part of its name; the user needs group audio; "
                      "stop the service if it holds the device")
    converted = (rate, channels) != (16000, 1)
    detail = (f"{device.name!r} (#{device.index}): native {device.default_rate} Hz, "
              f"up to {device.max_input_channels} ch; opens at {rate} Hz {channels} ch"
              + ("; converted to 16 kHz mono" if converted else ""))
    return passed(name, detail, device=device.name, index=device.index,
                  native_rate=device.default_rate,
                  max_channels=device.max_input_channels, rate=rate, channels=channels)


def record(ctx: Context, seconds: float) -> bytes:
    """``seconds`` of 16 kHz mono PCM, read and converted the way the appliance does."""
    from .framing import Converter
    from .microphone import quiet_stderr
    device, rate, channels = ctx.mic()
    block = max(1, rate // 50)                                    # 20 ms reads
    blocks = max(1, int(round(seconds * rate / block)))
    converter = Converter(rate, channels, ctx.cfg.mic_gain)
    with quiet_stderr():
        stream = ctx.pa.open(format=8, channels=channels, rate=rate, input=True,
                             input_device_index=device.index, frames_per_buffer=block)
    out = bytearray()
    try:
        for index in range(blocks):
            data = stream.read(block, exception_on_overflow=False)
            out += converter.convert(data, last=index == blocks - 1)
    finally:
        with contextlib.suppress(Exception):
            stream.close()
    return bytes(out)


def levels(pcm: bytes) -> dict[str, float]:
    """RMS and peak in dBFS (-inf for digital silence) and the share of clipped samples."""
    import numpy as np
    from .framing import rms_dbfs
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    if samples.size == 0:
        return {"rms_dbfs": float("-inf"), "peak_dbfs": float("-inf"), "clipped": 0.0}
    peak = int(np.max(np.abs(samples)))
    clipped = float(np.count_nonzero((samples >= 32767) | (samples <= -32768))) / samples.size
    return {"rms_dbfs": float(rms_dbfs(pcm)),
            "peak_dbfs": 20.0 * math.log10(peak / 32768.0) if peak else float("-inf"),
            "clipped": clipped}


def check_mic_level(ctx: Context) -> Result:
    name = "mic.level"
    if ctx.cfg.input:
        return skipped(name, f"input = {ctx.cfg.input}: no microphone in use")
    try:
        ctx.mic()
    except Exception as exc:  # noqa: BLE001
        return skipped(name, f"no microphone ({exc})")
    seconds = ctx.record_seconds
    if ctx.interactive:
        ctx.say(f"soca-diag: recording {seconds:g} s from the microphone: speak normally...")
    try:
        pcm = _with_timeout(lambda: record(ctx, seconds), seconds + 5.0,
                            "the microphone delivered no audio")
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, TimeoutError):
            ctx.pa_stuck = True           # a read still blocks in PortAudio: leave it be
        return failed(name, f"recording failed: {_describe(exc)}",
                      "is another program (the service?) using the mic? "
                      "sudo systemctl stop soca-appliance, then try again")
    lv = levels(pcm)
    rms, peak, clip = lv["rms_dbfs"], lv["peak_dbfs"], lv["clipped"]
    detail = (f"{len(pcm) / 32000:.1f} s: RMS {_db(rms)}, peak {_db(peak)}, "
              f"clipping {clip * 100:.2f} % (gain {ctx.cfg.mic_gain:g})")
    figures = dict(seconds=round(len(pcm) / 32000, 3), rms_dbfs=rms, peak_dbfs=peak,
                   clipped_share=clip)
    if clip > CLIP_SHARE:
        return warned(name, detail + ": clipping", "lower mic_gain or the capture volume "
                      "(alsamixer, F4), or move the mic away from the speaker", **figures)
    if not rms > SILENT_DBFS:
        return warned(name, detail + ": silent", "is the mic muted or its capture volume at "
                      "0 (alsamixer, F4)? is it the right input (mic = ...)?", **figures)
    return passed(name, detail, **figures)


def check_speaker(ctx: Context) -> Result:
    name = "speaker"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame                           # SDL_AUDIODRIVER is respected, never set here
    driver = ctx.env.get("SDL_AUDIODRIVER") or "SDL default"
    try:
        pygame.mixer.init(frequency=22050, size=-16, channels=1, buffer=ctx.cfg.mixer_buffer)
    except pygame.error as exc:
        return failed(name, f"audio output failed to open ({driver}): {exc}",
                      "is a speaker/DAC connected ('aplay -l')? the user needs group audio; "
                      "stop the service if it holds the device")
    try:
        freq, _fmt, channels = pygame.mixer.get_init()
        chime = resources.files("soca_appliance").joinpath("assets", "chime.wav").read_bytes()
        sound = pygame.mixer.Sound(file=io.BytesIO(chime))
        length = sound.get_length()
        if ctx.interactive:
            ctx.say("soca-diag: playing the chime on the speaker...")
        start = time.monotonic()
        channel = sound.play()
        if channel is None:
            return failed(name, "the mixer had no free channel to play the chime")
        while channel.get_busy() and time.monotonic() - start < length + 2.0:
            time.sleep(0.01)
        played = time.monotonic() - start
        figures = dict(driver=driver, frequency=freq, channels=channels,
                       buffer=ctx.cfg.mixer_buffer,
                       buffer_ms=round(1000.0 * ctx.cfg.mixer_buffer / freq, 1),
                       chime_ms=round(length * 1000.0), played_ms=round(played * 1000.0))
        detail = (f"{driver}: {freq} Hz, {channels} ch, buffer {ctx.cfg.mixer_buffer} "
                  f"({figures['buffer_ms']} ms); chime {figures['chime_ms']} ms played in "
                  f"{figures['played_ms']} ms")
        if channel.get_busy():
            return warned(name, detail + ": still playing, the output does not advance",
                          "check the ALSA device and driver (SDL_AUDIODRIVER)", **figures)
        return passed(name, detail, **figures)
    finally:
        with contextlib.suppress(Exception):
            pygame.mixer.quit()


# --- checks: GPIO --------------------------------------------------------------------------

def check_leds(ctx: Context) -> Result:
    name = "gpio.leds"
    from .indicators import STATES, NoPanel, led_plan
    if ctx.gpio_mode == "off":
        return skipped(name, "gpio = off")
    panel, why = ctx.panel()
    if isinstance(panel, NoPanel):
        if _is_pi():
            return failed(name, f"no usable GPIO ({why or 'no pin factory'})",
                          "add the user to group gpio; install lgpio in the venv "
                          "(install.sh does on a Pi)")
        return skipped(name, f"no GPIO here (not a Raspberry Pi): {why or 'no pin factory'}",
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
    from .indicators import NoPanel
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


# --- checks: network -----------------------------------------------------------------------

def check_dns(ctx: Context) -> Result:
    name = "net.dns"
    _scheme, host, port = ctx.endpoint()
    try:
        infos = ctx.resolve()
    except OSError as exc:
        return failed(name, f"{host}: {exc}", "check the network (ip addr; ping 1.1.1.1) and "
                      "the DNS server (/etc/resolv.conf)", ms=round(ctx._dns_ms, 1))
    addresses = sorted({info[4][0] for info in infos})
    return passed(name, f"{host} -> {', '.join(addresses[:4])} in {ctx._dns_ms:.0f} ms",
                  ms=round(ctx._dns_ms, 1), addresses=addresses)


def _connect(ctx: Context) -> tuple[socket.socket, Any, float]:
    """A TCP connection to the first address that answers; (socket, address, ms)."""
    errors = []
    for family, kind, proto, _canon, address in ctx.resolve():
        sock = socket.socket(family, kind, proto)
        sock.settimeout(ctx.cfg.connect_timeout)
        start = time.monotonic()
        try:
            sock.connect(address)
            return sock, address, (time.monotonic() - start) * 1000.0
        except OSError as exc:
            sock.close()
            errors.append(f"{address[0]}: {_describe(exc)}")
    raise OSError("; ".join(errors) or "no address")


def check_tcp(ctx: Context) -> Result:
    name = "net.tcp"
    _scheme, host, port = ctx.endpoint()
    try:
        ctx.resolve()
    except OSError:
        return skipped(name, "needs DNS (see net.dns)")
    try:
        sock, address, ms = _connect(ctx)
    except OSError as exc:
        return failed(name, f"{host}:{port}: {exc}", "a firewall or proxy may block the port; "
                      "is the url's host and port right?")
    sock.close()
    return passed(name, f"{address[0]}:{port} connected in {ms:.0f} ms", ms=round(ms, 1),
                  address=address[0], port=port)


def check_tls(ctx: Context) -> Result:
    name = "net.tls"
    scheme, host, port = ctx.endpoint()
    if scheme != "wss":
        return skipped(name, "ws:// is not encrypted")
    try:
        ctx.resolve()
    except OSError:
        return skipped(name, "needs DNS (see net.dns)")
    context = ssl.create_default_context(cafile=ctx.cfg.ca_file or None)
    try:
        sock, _address, _ms = _connect(ctx)
    except OSError as exc:
        return skipped(name, f"needs a TCP connection (see net.tcp): {exc}")
    start = time.monotonic()
    try:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            ms = (time.monotonic() - start) * 1000.0
            cert = tls.getpeercert() or {}
            version = tls.version() or "?"
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        return failed(name, f"certificate not trusted: {exc.verify_message or exc}",
                      "is the clock right ('date'; a Pi has no RTC until NTP syncs)? for a "
                      "private CA set ca_file")
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        return failed(name, f"TLS handshake failed: {_describe(exc)}",
                      "a proxy may intercept TLS; check the url")
    figures: dict[str, Any] = dict(ms=round(ms, 1), version=version)
    detail = f"{version} handshake in {ms:.0f} ms"
    expires = cert.get("notAfter")
    if expires:
        days = (ssl.cert_time_to_seconds(str(expires)) - time.time()) / 86400.0
        figures["cert_days_left"] = round(days, 1)
        detail += f"; certificate valid {days:.0f} more days"
        if days < 14:
            return warned(name, detail, "the server certificate expires soon: tell the "
                          "endpoint's operator", **figures)
    return passed(name, detail, **figures)


def handshake(ctx: Context) -> dict[str, Any]:
    """Send ``start`` and wait for ready and stt.ready; figures in ms. Raises on refusal."""
    import websocket
    from . import protocol
    cfg = ctx.cfg
    sslopt: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED}
    if cfg.ca_file:
        sslopt["ca_certs"] = cfg.ca_file
    start = time.monotonic()
    ws = websocket.create_connection(cfg.url, timeout=cfg.connect_timeout, sslopt=sslopt,
                                     skip_utf8_validation=True)
    out: dict[str, Any] = {"connect_ms": (time.monotonic() - start) * 1000.0}
    try:
        session_id = cfg.session_id or str(uuid.uuid4())
        assert ctx.key is not None
        ws.send(protocol.start_message(private_key=ctx.key, session_id=session_id,
                                       agent_id=cfg.agent_id, lang=cfg.lang,
                                       key_field=cfg.key_field))
        sent = time.monotonic()
        deadline = sent + cfg.connect_timeout
        while True:
            ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                opcode, frame = ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                raise HandshakeError(f"no stt.ready within {cfg.connect_timeout:g} s") from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else 1005
                reason = frame.data[2:].decode("utf-8", "replace")
                raise HandshakeError(f"server closed during start ({code} {reason})".strip())
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            message = protocol.parse(frame.data)
            now_ms = (time.monotonic() - sent) * 1000.0
            if isinstance(message, protocol.ServerError):
                raise HandshakeError(f"server error: {message.message}", auth=message.is_auth)
            if isinstance(message, protocol.Ready):
                out["ready_ms"] = now_ms
                out["session_id"] = message.session_id or session_id
            elif isinstance(message, protocol.SttReady):
                out["stt_ready_ms"] = now_ms
                out.setdefault("session_id", session_id)
                return out
    finally:
        with contextlib.suppress(Exception):
            ws.close(timeout=1.0)


class HandshakeError(RuntimeError):
    def __init__(self, message: str, auth: bool = False) -> None:
        super().__init__(message)
        self.auth = auth


def check_handshake(ctx: Context) -> Result:
    name = "net.handshake"
    import websocket
    if ctx.key is None:
        return skipped(name, "no private key (see key)")
    if not ctx.cfg.agent_id:
        return failed(name, "agent_id is not set", "set agent_id in the config")
    try:
        ctx.resolve()
    except OSError:
        return skipped(name, "needs DNS (see net.dns)")
    try:
        figures = handshake(ctx)
    except HandshakeError as exc:
        hint = (f"the key from {ctx.key_source} is wrong or expired: put the right one in "
                f"{ctx.cfg.private_key_file} (install.sh --key-file FILE)" if exc.auth
                else "check agent_id and lang; the server said why")
        return failed(name, str(exc), hint)
    except websocket.WebSocketBadStatusException as exc:
        return failed(name, f"server refused the upgrade: HTTP {exc.status_code}",
                      "check the url's path (/voice-ws or /v1/voice-ws)")
    except Exception as exc:  # noqa: BLE001 - timeouts, resets, TLS, bad messages
        return failed(name, _describe(exc), "see net.tcp and net.tls")
    figures = {k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}
    return passed(name, f"start accepted: ready in {figures.get('ready_ms', '?')} ms, "
                  f"stt.ready in {figures['stt_ready_ms']} ms (connect "
                  f"{figures['connect_ms']} ms)", **figures)


# --- checks: service and Pi ----------------------------------------------------------------

def _run(argv: list[str], timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SYSTEMD_PAGER": "", "LC_ALL": "C"}, check=False)


def check_service(ctx: Context) -> Result:
    name = "service"
    if not os.path.isdir("/run/systemd/system"):
        return skipped(name, "systemd is not PID 1 here")
    if shutil.which("systemctl") is None:
        return skipped(name, "systemctl not found")
    active = _run(["systemctl", "is-active", UNIT]).stdout.strip() or "unknown"
    props = {}
    for line in _run(["systemctl", "show", UNIT, "--property=LoadState,SubState,NRestarts,"
                      "Result"]).stdout.splitlines():
        key, _, value = line.partition("=")
        props[key] = value
    if props.get("LoadState") == "not-found":
        return warned(name, f"{UNIT}.service is not installed", "run install.sh")
    restarts = int(props.get("NRestarts") or 0)
    errors = _journal_errors()
    figures = dict(active=active, sub_state=props.get("SubState", ""), restarts=restarts,
                   errors=errors)
    detail = f"{active} ({props.get('SubState', '?')}), restarted {restarts} time(s)"
    if errors:
        detail += "; last errors: " + " | ".join(errors[-3:])
    if active != "active":
        return failed(name, detail, f"journalctl -u {UNIT} -n 50; start it with "
                      f"sudo systemctl start {UNIT}", **figures)
    if restarts:
        return warned(name, detail, f"it crashed and restarted: journalctl -u {UNIT} -p err",
                      **figures)
    return passed(name, detail, **figures)


def _journal_errors() -> list[str]:
    if shutil.which("journalctl") is None:
        return []
    proc = _run(["journalctl", "-u", UNIT, "-p", "err", "-n", "5", "--no-pager", "-q",
                 "-o", "short-iso"])
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 and not lines:
        return [f"(journal not readable: {proc.stderr.strip()[:80] or 'no permission'})"]
    return lines[-5:]


def check_power(ctx: Context) -> Result:
    name = "pi.power"
    tool = shutil.which("vcgencmd")
    if tool is None:
        return skipped(name, "vcgencmd not found (not a Raspberry Pi OS image)")
    proc = _run([tool, "get_throttled"])
    text = proc.stdout.strip()
    if proc.returncode != 0 or "=" not in text:
        return skipped(name, "vcgencmd get_throttled failed: "
                       f"{(proc.stderr or text).strip()[:80]}",
                       "run as root, or add the user to group video")
    value = int(text.split("=", 1)[1], 16)
    flags = [label for bit, label in THROTTLE_BITS.items() if value & (1 << bit)]
    figures = dict(throttled=f"0x{value:x}", flags=flags)
    if value & UNDER_VOLTAGE_NOW:
        return failed(name, f"0x{value:x}: " + ", ".join(flags), "use the official 5 V "
                      "power supply (5.1 V, 3 A; 5 A on a Pi 5) and a short cable", **figures)
    if flags:
        return warned(name, f"0x{value:x}: " + ", ".join(flags), "under-voltage or heat "
                      "since boot: check the power supply and cooling", **figures)
    return passed(name, "0x0: no under-voltage or throttling since boot", **figures)


def check_temperature(ctx: Context) -> Result:
    name = "pi.temperature"
    path = Path("/sys/class/thermal/thermal_zone0/temp")
    try:
        celsius = int(path.read_text().strip()) / 1000.0
    except (OSError, ValueError) as exc:
        return skipped(name, f"{path} not readable ({exc.__class__.__name__})")
    detail = f"CPU {celsius:.1f} °C"
    if celsius >= 80.0:
        return failed(name, detail + ": throttling", "add a heatsink or fan; ventilate the "
                      "case", celsius=celsius)
    if celsius >= 70.0:
        return warned(name, detail + ": hot", "add a heatsink or fan", celsius=celsius)
    return passed(name, detail, celsius=celsius)


def check_disk(ctx: Context) -> Result:
    name = "pi.disk"
    usage = shutil.disk_usage("/")
    free_mb = usage.free / 1e6
    detail = f"/: {free_mb:.0f} MB free of {usage.total / 1e6:.0f} MB"
    figures = dict(free_mb=round(free_mb), total_mb=round(usage.total / 1e6))
    if free_mb < 50:
        return failed(name, detail, "free space: sudo journalctl --vacuum-size=50M; "
                      "sudo apt-get clean", **figures)
    if free_mb < 200:
        return warned(name, detail, "sudo journalctl --vacuum-size=50M; sudo apt-get clean",
                      **figures)
    return passed(name, detail, **figures)


def check_memory(ctx: Context) -> Result:
    name = "pi.memory"
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError as exc:
        return skipped(name, f"/proc/meminfo not readable ({exc.__class__.__name__})")
    values = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) / 1024.0         # kB -> MB (MiB)
    if "MemAvailable" not in values:
        return skipped(name, "MemAvailable not in /proc/meminfo")
    avail, total = values["MemAvailable"], values.get("MemTotal", 0.0)
    detail = f"{avail:.0f} MB available of {total:.0f} MB"
    figures = dict(available_mb=round(avail), total_mb=round(total))
    if avail < 40:
        return failed(name, detail, "something else uses the memory: top -o %MEM", **figures)
    if avail < 100:
        return warned(name, detail, "little memory left: top -o %MEM", **figures)
    return passed(name, detail, **figures)


CHECKS: list[tuple[str, Callable[[Context], Result]]] = [
    ("config", check_config),
    ("key", check_key),
    ("mic.device", check_mic_device),
    ("mic.level", check_mic_level),
    ("speaker", check_speaker),
    ("gpio.leds", check_leds),
    ("gpio.button", check_button),
    ("net.dns", check_dns),
    ("net.tcp", check_tcp),
    ("net.tls", check_tls),
    ("net.handshake", check_handshake),
    ("service", check_service),
    ("pi.power", check_power),
    ("pi.temperature", check_temperature),
    ("pi.disk", check_disk),
    ("pi.memory", check_memory),
]
NAMES = [name for name, _ in CHECKS]


# --- running and reporting -----------------------------------------------------------------

def run_check(ctx: Context, name: str, func: Callable[[Context], Result]) -> Result:
    try:
        result = func(ctx)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a check must never end the report
        result = failed(name, f"check crashed: {_describe(exc)}",
                        "please report this with the output of soca-diag --json")
    return _scrub(result, ctx.secrets())


def selected(only: Optional[str]) -> list[tuple[str, Callable[[Context], Result]]]:
    if not only:
        return list(CHECKS)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    chosen = [(n, f) for n, f in CHECKS
              if any(n == w or n.startswith(w.rstrip(".") + ".") for w in wanted)]
    return chosen


def run(args: argparse.Namespace, env: Optional[Mapping[str, str]] = None,
        on_result: Callable[[Result], None] = lambda r: None) -> list[Result]:
    ctx = Context(args, os.environ if env is None else env)
    results: list[Result] = []
    try:
        for name, func in selected(args.only):
            result = run_check(ctx, name, func)
            results.append(result)
            on_result(result)
    finally:
        ctx.close()
    return results


def _scrub(result: Result, secrets: list[str]) -> Result:
    def clean(value: Any) -> Any:
        if isinstance(value, str):
            for secret in secrets:
                value = value.replace(secret, "***")
            return value.replace("\n", " | ")
        if isinstance(value, float):
            return round(value, 2) if math.isfinite(value) else None
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value
    return Result(result.name, result.status, clean(result.detail), clean(result.hint),
                  clean(result.figures))


class TablePrinter:
    """Prints rows as they come, aligned: the names are known before the first check."""

    def __init__(self, names: list[str], out: TextIO) -> None:
        self.width = max([len(n) for n in names] + [5])
        self.out = out
        self.header = False

    def __call__(self, r: Result) -> None:
        if not self.header:
            print(f"{'CHECK':<{self.width}}  STATUS  DETAIL", file=self.out)
            self.header = True
        print(f"{r.name:<{self.width}}  {r.status:<6}  {r.detail}", file=self.out, flush=True)
        if r.hint:
            print(f"{'':<{self.width}}  {'':<6}  hint: {r.hint}", file=self.out, flush=True)


def summary(results: list[Result]) -> str:
    counts = {s: sum(1 for r in results if r.status == s) for s in (PASS, WARN, FAIL, SKIP)}
    return (f"{counts[PASS]} passed, {counts[WARN]} warning(s), {counts[FAIL]} failed, "
            f"{counts[SKIP]} skipped")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="soca-diag", description="Check the kiosk: config, key, microphone, speaker, "
        "GPIO, network and handshake, service, Pi health. Exit 1 when a check fails.",
        epilog="checks: " + ", ".join(NAMES) + ". Run as root (sudo) to read the key and the "
        "journal; stop the service to test the mic and speaker.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help=f"config file (default {config.DEFAULT_CONFIG_PATH} when it exists)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--no-interactive", action="store_true",
                   help="skip what needs a person (the button); no prompts, no pauses")
    p.add_argument("--record-seconds", type=_positive, default=3.0, metavar="S",
                   help="seconds recorded from the microphone (default 3)")
    p.add_argument("--gpio", choices=("auto", "mock", "off"),
                   help="GPIO mode (default: the config's)")
    p.add_argument("--url", help="voice-ws endpoint to test instead of the config's")
    p.add_argument("--only", metavar="NAMES", help="comma-separated checks or groups "
                   "(config, key, mic, speaker, gpio, net, service, pi)")
    return p


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError("must be above 0 and at most 60")
    return value


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.only and not selected(args.only):
        parser.error(f"--only {args.only!r} matches no check; checks: {', '.join(NAMES)}")
    names = [n for n, _ in selected(args.only)]
    printer: Callable[[Result], None] = (lambda r: None) if args.json \
        else TablePrinter(names, sys.stdout)
    try:
        results = run(args, on_result=printer)
    except KeyboardInterrupt:
        print("soca-diag: interrupted", file=sys.stderr)
        return 130
    ok = not any(r.status == FAIL for r in results)
    if args.json:
        doc = {"checks": [asdict(r) for r in results], "ok": ok}
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print(summary(results) + (": OK" if ok else ": FAILED"))
    return EXIT_OK if ok else EXIT_FAIL


# --- small helpers -------------------------------------------------------------------------

def _with_timeout(func: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run ``func`` on a daemon thread; raise TimeoutError if it has not returned in time."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="soca-diag", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{what}: no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _describe(exc: BaseException) -> str:
    """One line for a failure: OS errors as the system says them, others with their type."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    if isinstance(exc, OSError):
        return (str(exc) or exc.__class__.__name__)[:300]
    return f"{exc.__class__.__name__}: {exc}"[:300]


def _db(value: float) -> str:
    return f"{value:.1f} dBFS" if math.isfinite(value) else "-inf dBFS (digital silence)"


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


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _is_pi() -> bool:
    try:
        return b"Raspberry Pi" in Path("/proc/device-tree/model").read_bytes()
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
