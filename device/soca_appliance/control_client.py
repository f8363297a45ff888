"""The control socket's client: :func:`request` and ``soca-appliance ctl`` (:func:`ctl_main`).

It owns the client side of the protocol in :mod:`.control`: connecting (and saying why
not: missing, refused, not permitted, path too long), sending one command, reading and
checking the one-line reply, finding the socket's path (``--control-socket``,
``$SOCA_CONTROL_SOCKET``, the config file's ``control_socket``, the default), and the
command's output and exit status (0 done, 1 refused, 2 cannot reach it).
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from .control import (COMMANDS, DEFAULT_PATH, ENV_PATH, MAX_PATH, ControlError,
                      ControlUnavailable, _strerror, _too_long, default_path, log)

MAX_REPLY = 64 * 1024

EXIT_OK, EXIT_REFUSED, EXIT_UNAVAILABLE = 0, 1, 2


def request(path: str, cmd: str, timeout: float = 2.0) -> dict:
    """Send one command, return the appliance's reply.

    Raises :class:`ControlUnavailable` when the socket is missing, refuses or is not
    accessible, :class:`ControlError` when no valid reply comes within ``timeout``.
    """
    path = str(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlUnavailable(f"socket {path} not found: is soca-appliance running? "
                                     f"(another path: --control-socket or {ENV_PATH})") from None
        except ConnectionRefusedError:
            raise ControlUnavailable(f"nothing listens on socket {path}: is soca-appliance "
                                     "running?") from None
        except PermissionError:
            raise ControlUnavailable(f"permission denied on socket {path}: run as root or as a "
                                     "member of the service's group") from None
        except socket.timeout:
            raise ControlUnavailable(f"socket {path} does not accept connections within "
                                     f"{timeout:g} s") from None
        except OSError as exc:
            if _too_long(path, exc):
                raise ControlUnavailable(f"socket path too long (UNIX sockets allow at most "
                                         f"{MAX_PATH} bytes): {path}") from None
            raise ControlUnavailable(f"cannot connect to socket {path}: "
                                     f"{_strerror(exc)}") from None
        try:
            sock.sendall(json.dumps({"cmd": cmd}).encode("utf-8") + b"\n")
            buf = b""
            while b"\n" not in buf and len(buf) <= MAX_REPLY:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = sock.recv(4096)
                if not data:
                    break
                buf += data
        except socket.timeout:
            raise ControlError(f"no answer on socket {path} within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"socket {path}: {_strerror(exc)}") from None
    finally:
        sock.close()
    line = buf.partition(b"\n")[0]
    try:
        reply = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlError(f"socket {path} gave no valid reply "
                           f"({len(buf)} bytes: {buf[:60]!r})") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ControlError(f"socket {path} gave an unexpected reply: {line[:60]!r}")
    return reply


def _configured_path(config_file: Optional[Path]) -> str:
    """The path the service uses: config file < environment; the default when unreadable."""
    from . import config
    try:
        return config.load(config_file).control_socket or default_path()
    except config.ConfigError as exc:
        if config_file is not None:
            raise
        log.debug("configuration not usable for ctl (%s); using the default path", exc)
        return default_path()


def ctl_main(argv: Optional[list[str]] = None) -> int:
    """``soca-appliance ctl [--control-socket PATH] {barge,mute,unmute,status}``."""
    parser = argparse.ArgumentParser(
        prog="soca-appliance ctl",
        description="Control the running appliance through its local socket: barge "
                    "(interrupt the agent, like a short button press), mute, unmute, status.",
        epilog="Exit status: 0 done, 1 the appliance refused, 2 cannot reach it.")
    parser.add_argument("--control-socket", metavar="PATH",
                        help=f"socket path (default: ${ENV_PATH}, the config file's "
                             f"control_socket, or {DEFAULT_PATH})")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="read control_socket from this config file")
    parser.add_argument("--timeout", type=float, default=2.0, help=argparse.SUPPRESS)
    parser.add_argument("cmd", choices=COMMANDS, metavar="{" + ",".join(COMMANDS) + "}")
    args = parser.parse_args(argv)
    if args.control_socket:
        path = args.control_socket
    else:
        from .config import ConfigError
        try:
            path = _configured_path(args.config)
        except ConfigError as exc:
            print(f"soca-appliance ctl: error: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    try:
        reply = request(path, args.cmd, timeout=args.timeout)
    except ControlError as exc:
        print(f"soca-appliance ctl: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.cmd == "status":
        print(json.dumps(reply, indent=2, ensure_ascii=False))
    else:
        print(json.dumps(reply, ensure_ascii=False))
    if not reply.get("ok"):
        print(f"soca-appliance ctl: error: {reply.get('error') or 'refused'}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK
