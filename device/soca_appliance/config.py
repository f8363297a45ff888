"""Configuration: the TOML file, ``SOCA_*`` environment overrides, command-line flags.

Owns the list of configuration keys (a public contract, documented in the README), their
types and defaults, validation with messages a technician can act on, and reading the
private key from the environment or a key file. No other module reads the environment or
files for settings: a :class:`Config` is built once and passed in.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlparse

from .protocol import FRAME_MS_ALLOWED

DEFAULT_CONFIG_PATH = Path("/etc/soca-appliance/config.toml")
DEFAULT_URL = "wss://api.soca.ai/voice-ws"
ENV_PREFIX = "SOCA_"
KEY_ENV = "SOCA_PRIVATE_KEY"
# The GPIO lines on the Pi's 40-pin header, by BCM number (GPIO17 is header pin 11). Pins are
# BCM integers: gpiozero also takes names ("GPIO17", "BOARD11", "J8:11"), the config does not.
GPIO_PINS = range(0, 28)


class ConfigError(ValueError):
    """The configuration cannot be used; the text says what to change."""


@dataclass(frozen=True)
class Leds:
    ready: Optional[int] = None
    listening: Optional[int] = None
    speaking: Optional[int] = None
    error: Optional[int] = None
    rgb: tuple[int, ...] = ()


@dataclass(frozen=True)
class Web:
    """``[web]``: the kiosk screen and /metrics (see README "Kiosk screen and metrics")."""
    listen: str = "127.0.0.1:8080"      # "" turns the server off
    token: str = ""                     # required to listen beyond loopback


@dataclass(frozen=True)
class Config:
    # service
    url: str = DEFAULT_URL
    agent_id: str = ""
    lang: str = "id"
    private_key_file: str = "/etc/soca-appliance/key"
    key_field: str = "private_key"
    session_id: str = ""
    allow_insecure: bool = False
    ca_file: str = ""
    # link
    ping_interval: float = 10.0
    ping_timeout: float = 5.0
    connect_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    auth_retry: float = 60.0
    # audio up
    frame_ms: int = 20
    mic: str = ""
    mic_gain: float = 1.0
    mic_rate: int = 0
    mic_channels: int = 0
    input: str = ""
    vad: bool = False
    vad_aggressiveness: int = 2
    duplex: str = "auto"
    # audio down
    mixer_buffer: int = 512
    progressive_playback: bool = True
    max_sentence_bytes: int = 1 << 20
    max_pending_sentences: int = 32
    sentence_timeout: float = 15.0
    speaker_idle_close: float = 5.0     # s of quiet, then the mixer closes (no canceller)
    # interface
    gpio: str = "auto"
    button_pin: int = 17
    long_press: float = 2.0
    button_mode: str = "barge"          # or "push_to_talk" (hold to talk; issue 14)
    ready_cue: bool = False             # say "ready" when first connected after boot
    leds: Leds = field(default_factory=Leds)
    web: Web = field(default_factory=Web)
    control_socket: str = "/run/soca-appliance/control.sock"
    log_format: str = "text"
    log_level: str = "info"


_CHOICES = {
    "lang": ("id", "en"),
    "duplex": ("auto", "aec", "half", "full"),
    "button_mode": ("barge", "push_to_talk"),
    "gpio": ("auto", "mock", "off"),
    "log_format": ("text", "json"),
    "log_level": ("debug", "info", "warning", "error"),
}
_TOP_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_LED_FIELDS = {f.name: f for f in dataclasses.fields(Leds)}
_WEB_FIELDS = {f.name: f for f in dataclasses.fields(Web)}


def known_keys() -> list[str]:
    keys = [name for name in _TOP_FIELDS if name not in ("leds", "web")]
    return (keys + [f"leds.{name}" for name in _LED_FIELDS]
            + [f"web.{name}" for name in _WEB_FIELDS])


def load(path: Optional[Path] = None, env: Optional[Mapping[str, str]] = None,
         overrides: Optional[Mapping[str, Any]] = None) -> Config:
    """Build the configuration: defaults < file < environment < command line.

    ``path`` None means the default path when it exists. ``overrides`` holds the
    command-line values (None values are ignored).
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    source = "defaults"
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        values.update(_flatten(_read_toml(Path(path)), str(path)))
        source = str(path)
    for key, value in _from_env(env).items():
        values[key] = value
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    return _build(values, source)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _flatten(data: dict[str, Any], where: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("leds", "web") and isinstance(value, dict):
            for sub, subval in value.items():
                flat[f"{key}.{sub}"] = subval
        else:
            flat[key] = value
    unknown = [k for k in flat if k not in known_keys()]
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}' in {where}; known keys: "
                          + ", ".join(known_keys()))
    return flat


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``SOCA_FRAME_MS=40`` sets ``frame_ms``; ``SOCA_LEDS_READY=5`` sets ``leds.ready``."""
    out: dict[str, Any] = {}
    for key in known_keys():
        name = ENV_PREFIX + key.replace(".", "_").upper()
        if name in env and name != KEY_ENV:
            out[key] = _parse_env(key, env[name])
    return out


def _parse_env(key: str, text: str) -> Any:
    kind = _field_type(key)
    try:
        if kind == "bool":
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind == "int" or kind == "Optional[int]":
            return None if text.strip() == "" and kind.startswith("Optional") else int(text)
        if kind == "float":
            return float(text)
        if kind.startswith("tuple"):
            return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"environment variable {ENV_PREFIX}{key.replace('.', '_').upper()}="
                          f"{text!r} is not a valid {kind}") from None
    return text


def _field_type(key: str) -> str:
    if key.startswith("leds."):
        return str(_LED_FIELDS[key[5:]].type)
    if key.startswith("web."):
        return str(_WEB_FIELDS[key[4:]].type)
    return str(_TOP_FIELDS[key].type)


def _check_type(key: str, value: Any, where: str) -> Any:
    kind = _field_type(key)
    ok: bool
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "Optional[int]":
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind.startswith("tuple"):
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        wanted = {"bool": "true or false", "int": "an integer", "float": "a number",
                  "Optional[int]": "a pin number"}.get(kind, "a list of pin numbers"
                                                       if kind.startswith("tuple") else "a string")
        raise ConfigError(f"key '{key}' in {where} must be {wanted}, got {value!r}")
    return value


def _build(values: dict[str, Any], where: str) -> Config:
    top: dict[str, Any] = {}
    leds: dict[str, Any] = {}
    web: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known_keys():
            raise ConfigError(f"unknown key '{key}'; known keys: " + ", ".join(known_keys()))
        value = _check_type(key, value, where)
        if key.startswith("leds."):
            leds[key[5:]] = value
        elif key.startswith("web."):
            web[key[4:]] = value
        else:
            top[key] = value
    cfg = Config(**top, leds=Leds(**leds), web=Web(**web))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    for f in dataclasses.fields(Config):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number; got {value}")
    for key, choices in _CHOICES.items():
        value = getattr(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
    if cfg.frame_ms not in FRAME_MS_ALLOWED:
        raise ConfigError(f"frame_ms must be 20, 40 or 50 (the protocol allows no other frame "
                          f"size); got {cfg.frame_ms}")
    if not 0 <= cfg.vad_aggressiveness <= 3:
        raise ConfigError(f"vad_aggressiveness must be 0..3; got {cfg.vad_aggressiveness}")
    if not 0.0 < cfg.mic_gain <= 64.0:
        raise ConfigError(f"mic_gain must be above 0 and at most 64; got {cfg.mic_gain}")
    if cfg.mic_rate and not 8000 <= cfg.mic_rate <= 192000:
        raise ConfigError(f"mic_rate must be 0 (automatic) or 8000..192000 Hz; got {cfg.mic_rate}")
    if cfg.mic_channels not in (0, 1, 2):
        raise ConfigError(f"mic_channels must be 0 (automatic), 1 or 2; got {cfg.mic_channels}")
    if cfg.ping_interval <= cfg.ping_timeout:
        raise ConfigError("ping_interval must be larger than ping_timeout")
    if _rgb_and_discrete(cfg):
        raise ConfigError("use either leds.rgb or the discrete leds.* pins, not both")
    if cfg.leds.rgb and len(cfg.leds.rgb) != 3:
        raise ConfigError(f"leds.rgb must list three pins [r, g, b]; got {list(cfg.leds.rgb)}")
    check_pins(cfg)
    if not cfg.key_field:
        raise ConfigError("key_field must not be empty")
    for name in ("ping_interval", "ping_timeout", "connect_timeout", "backoff_initial",
                 "backoff_max", "auth_retry", "sentence_timeout", "long_press"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be a positive number of seconds")
    if cfg.speaker_idle_close < 0:
        raise ConfigError("speaker_idle_close must be 0 (keep the mixer open) or a number "
                          f"of seconds; got {cfg.speaker_idle_close}")
    if cfg.mixer_buffer < 64 or cfg.mixer_buffer > 8192:
        raise ConfigError(f"mixer_buffer must be 64..8192 samples; got {cfg.mixer_buffer}")
    check_url(cfg.url, cfg.allow_insecure)
    check_web(cfg.web)


def pin_roles(cfg: Config) -> list[tuple[str, int]]:
    """Every configured pin with the key that sets it: ``[("button_pin", 17), ...]``."""
    roles = [("button_pin", cfg.button_pin)]
    for role in ("ready", "listening", "speaking", "error"):
        pin = getattr(cfg.leds, role)
        if pin is not None:
            roles.append((f"leds.{role}", pin))
    roles += [(f"leds.rgb[{i}]", pin) for i, pin in enumerate(cfg.leds.rgb)]
    return roles


def check_pins(cfg: Config) -> None:
    """Each pin is a header GPIO (BCM 0..27) and drives one thing only."""
    seen: dict[int, str] = {}
    for key, pin in pin_roles(cfg):
        if pin not in GPIO_PINS:
            raise ConfigError(f"{key} = {pin} is not a GPIO pin of the Pi's header: use a BCM "
                              f"number {GPIO_PINS[0]}..{GPIO_PINS[-1]} (GPIO17 is header pin 11)")
        if pin in seen:
            raise ConfigError(f"{seen[pin]} and {key} are both GPIO{pin}: each pin can drive "
                              "one LED or the button, not two")
        seen[pin] = key


def _rgb_and_discrete(cfg: Config) -> bool:
    discrete = (cfg.leds.ready, cfg.leds.listening, cfg.leds.speaking, cfg.leds.error)
    return bool(cfg.leds.rgb) and any(pin is not None for pin in discrete)



def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` or ``"[::1]:8080"`` -> (host, port); port 0 = any free port."""
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        number = int(port) if sep and port.isdigit() else -1
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ConfigError(f"web.listen must be an IP address and port such as "
                          f"\"127.0.0.1:8080\", \"0.0.0.0:8080\" or \"[::1]:8080\" (or \"\" for "
                          f"no screen); got {listen!r}")
    return host, number


def check_web(web: Web) -> None:
    if web.token and (len(web.token) < 16 or not all(33 <= ord(c) < 127 and c not in "\";,"
                                                      for c in web.token)):
        raise ConfigError("web.token must be at least 16 printable ASCII characters without "
                          "spaces, quotes, ';' or ',' (e.g. the output of openssl rand -hex 16)")
    if not web.listen:
        return
    host, _port = parse_listen(web.listen)
    if not is_loopback(host) and not web.token:
        raise ConfigError(f"web.listen = {web.listen!r} reaches beyond this machine: set "
                          "web.token too (e.g. openssl rand -hex 16), or listen on 127.0.0.1")


def check_url(url: str, allow_insecure: bool) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        raise ConfigError(f"url must be a ws:// or wss:// address with a host; got {url!r}")
    if parsed.scheme == "ws" and not allow_insecure and not is_loopback(parsed.hostname):
        raise ConfigError(f"url {url!r} is unencrypted ws:// to a non-loopback host; use "
                          "wss://, or set allow_insecure = true if you really mean it")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_private_key(cfg: Config, env: Optional[Mapping[str, str]] = None) -> str:
    """The private key from ``SOCA_PRIVATE_KEY`` or the key file.

    A key file readable by group or others is refused: the key would leak to every user.
    """
    env = os.environ if env is None else env
    if env.get(KEY_ENV, "").strip():
        return env[KEY_ENV].strip()
    path = Path(cfg.private_key_file)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"no private key: set {KEY_ENV} or write it to {path} "
                          "(mode 0600, owned by the service user)") from None
    except PermissionError:
        raise ConfigError(f"key file {path} is not accessible by this user") from None
    except NotADirectoryError:
        raise ConfigError(f"key file {path}: a part of the path is not a directory") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"key file {path} is not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"key file {path} is readable by group or others (mode "
                          f"{stat.S_IMODE(mode):04o}); fix it with: chmod 600 {path}")
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"key file {path} cannot be read: {exc.__class__.__name__}") from None
    if not key:
        raise ConfigError(f"key file {path} is empty")
    return key
