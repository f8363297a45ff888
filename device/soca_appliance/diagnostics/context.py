"""What the checks share: the settings, the key, and devices opened once (:class:`Context`)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import sys
import threading
import time
from typing import Any, Mapping, Optional, TextIO
from urllib.parse import urlparse

from .. import config
from ..config import Config, ConfigError
from .result import describe, with_timeout


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
            self.cfg_error = describe(exc)
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
            self.key_error = describe(exc)
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
        from ..microphone import MicError, choose_format, find_input, open_pyaudio
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
            self._mic_error = str(exc) if isinstance(exc, MicError) else describe(exc)
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
            from ..indicators import make_panel
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
                self._dns = with_timeout(
                    lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                    self.cfg.connect_timeout, f"resolving {host}")
            except Exception as exc:  # noqa: BLE001
                self._dns_error = describe(exc)
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
            from ..quiet import quiet
            with contextlib.suppress(Exception), quiet():
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

