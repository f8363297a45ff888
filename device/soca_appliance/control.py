"""The control socket's protocol and commands: the button, from a shell.

The appliance listens on a UNIX stream socket (default ``/run/soca-appliance/control.sock``,
mode 0660, so only root and the service's group can use it). The protocol is one request
per connection: the client sends one line of JSON, ``{"cmd": "barge"}`` (at most
:data:`MAX_REQUEST` bytes, within :data:`READ_TIMEOUT`), and gets one line of JSON back,
always with ``"ok"``; a refusal carries ``"error"``. Only the :data:`COMMANDS` exist:
anything else (another command, extra fields, malformed or oversized input) is refused
without reaching the appliance.

This module owns that contract: the commands, the limits, the socket's default path
(:func:`default_path`), the errors, :func:`parse_request` (what a valid request line is)
and :func:`make_handler` (the commands onto the very methods the GPIO button uses:
``Appliance.press``, ``set_muted``, ``status``). The transport lives next to it:
:class:`~.control_server.ControlServer` serves the socket, and
:func:`~.control_client.request` and :func:`~.control_client.ctl_main` (the
``soca-appliance ctl`` command) are the client; those names are importable from here too.
"""
from __future__ import annotations

import errno
import json
import logging
import os
from typing import Any, Callable, Optional

from .config import Config

log = logging.getLogger("soca.control")

COMMANDS = ("barge", "mute", "unmute", "status")
DEFAULT_PATH = Config.control_socket            # "/run/soca-appliance/control.sock"
ENV_PATH = "SOCA_CONTROL_SOCKET"
MAX_REQUEST = 1024                              # bytes in the request line, newline excluded
MAX_PATH = 107                                  # sun_path is 108 bytes with its NUL
READ_TIMEOUT = 1.0                              # a client has this long to send its line

Handler = Callable[[str], dict]

# The server's and the client's names, importable from here as before they moved out;
# loaded on first use, since those modules import this one.
_ELSEWHERE = {name: "control_server" for name in ("ControlServer", "SOCKET_MODE", "DIR_MODE")}
_ELSEWHERE.update({name: "control_client" for name in (
    "request", "ctl_main", "MAX_REPLY", "EXIT_OK", "EXIT_REFUSED", "EXIT_UNAVAILABLE")})


def __getattr__(name: str) -> Any:
    module = _ELSEWHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module
    return getattr(import_module(f".{module}", __package__), name)


class ControlError(RuntimeError):
    """The control socket cannot be served or reached; the text says why."""


class ControlUnavailable(ControlError):
    """Nobody to talk to: the socket is missing, refuses, or is not ours to use."""


def parse_request(line: bytes) -> tuple[str, Optional[str]]:
    """``(command, None)`` for a valid request line, else ``("", error message)``."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return "", "malformed request: not UTF-8"
    except (ValueError, RecursionError):
        return "", 'malformed JSON: send one line like {"cmd": "status"}'
    if not isinstance(obj, dict) or "cmd" not in obj:
        return "", 'malformed request: expected an object like {"cmd": "status"}'
    extra = sorted(k for k in obj if k != "cmd")
    if extra:
        return "", f"unexpected field(s): {', '.join(map(str, extra))[:100]}"
    cmd = obj["cmd"]
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        shown = repr(cmd)[:40]
        return "", f"unknown command {shown}; commands: {', '.join(COMMANDS)}"
    return cmd, None


def make_handler(app: Any) -> Handler:
    """The commands, on the same code path as the GPIO button."""
    def handle(cmd: str) -> dict:
        if cmd == "barge":
            return {"ok": True, "result": app.press(source="ctl")}
        if cmd == "mute":
            app.set_muted(True)
            return {"ok": True, "muted": True}
        if cmd == "unmute":
            app.set_muted(False)
            return {"ok": True, "muted": False}
        if cmd == "status":
            return {"ok": True, **app.status()}
        return {"ok": False, "error": f"unknown command {cmd!r}"}
    return handle


def default_path(env: Optional[dict[str, str]] = None) -> str:
    """``$SOCA_CONTROL_SOCKET``, else the built-in default."""
    env = os.environ if env is None else env
    return env.get(ENV_PATH) or DEFAULT_PATH


def _too_long(path: str, exc: OSError) -> bool:
    return len(os.fsencode(path)) > MAX_PATH or "too long" in str(exc).lower() \
        or exc.errno == errno.ENAMETOOLONG


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc) or exc.__class__.__name__
