"""The control socket's server: :class:`ControlServer`, the UNIX socket and its thread.

It owns the transport: the socket's directory (0750) and the socket (0660), removing a
stale socket left by a crash (never a live one, nor another file), accepting one
connection at a time on a daemon thread that sleeps in ``select`` until a client or
:meth:`ControlServer.close` wakes it, reading the request line within the time limit,
calling the handler and writing its reply. What a request may be, the commands, the
limits and the errors are the protocol's, in :mod:`.control`.
"""
from __future__ import annotations

import json
import os
import selectors
import socket
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .control import (MAX_PATH, MAX_REQUEST, READ_TIMEOUT, ControlError, Handler, _strerror,
                      _too_long, log, parse_request)

SOCKET_MODE = 0o660
DIR_MODE = 0o750
_POLL = 0.1


class ControlServer:
    """Serves the control socket on one daemon thread. See the module docstring."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = str(path)
        self.handler = handler
        self.requests = 0
        self.refused = 0
        self._sock: Optional[socket.socket] = None
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._inode: Optional[tuple[int, int]] = None

    # --- life cycle --------------------------------------------------------------

    def start(self) -> None:
        """Bind and listen; raise :class:`ControlError` when that is not possible."""
        if self._thread is not None:
            raise ControlError("control socket already started")
        if not self.path:
            raise ControlError("control socket path is empty")
        if len(os.fsencode(self.path)) > MAX_PATH:
            raise ControlError(self._bind_failure(OSError("AF_UNIX path too long")))
        self._make_parent()
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
        except OSError as exc:
            sock.close()
            raise ControlError(self._bind_failure(exc)) from None
        try:
            # The parent is 0750, so nobody outside the group reaches the socket during
            # the instant between bind and chmod.
            os.chmod(self.path, SOCKET_MODE)
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            sock.listen(8)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            self._unlink()
            raise ControlError(f"control socket {self.path}: {_strerror(exc)}") from None
        self._sock = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        log.info("control socket listening on %s", self.path)

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread (within ``timeout``) and remove the socket file."""
        self._stop.set()
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("control thread did not stop within %.1f s", timeout)
        self._thread = None
        for s in (self._sock, self._wake_r, self._wake_w):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._sock = self._wake_r = self._wake_w = None
        self._unlink()

    def __enter__(self) -> "ControlServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- binding -----------------------------------------------------------------

    def _make_parent(self) -> None:
        parent = Path(self.path).parent
        if parent.is_dir():
            return
        try:
            parent.mkdir(parents=True, mode=DIR_MODE)
            os.chmod(parent, DIR_MODE)          # mkdir's mode is filtered by the umask
        except FileExistsError:
            if not parent.is_dir():
                raise ControlError(f"cannot create the control socket in {parent}: it exists "
                                   "and is not a directory") from None
        except OSError as exc:
            raise ControlError(f"cannot create directory {parent} for the control socket: "
                               f"{_strerror(exc)} (under systemd, RuntimeDirectory="
                               "soca-appliance creates it)") from None

    def _remove_stale(self) -> None:
        """A socket file left by a crash is removed; a live one or any other file is not."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ControlError(f"control socket {self.path}: {_strerror(exc)}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"control socket path {self.path} exists and is not a socket; "
                               "remove it or choose another path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            pass                                # nobody listens: stale
        except socket.timeout:
            raise ControlError(f"control socket {self.path} is in use (a listener that does "
                               "not answer); is another soca-appliance running?") from None
        except OSError as exc:
            raise ControlError(f"control socket {self.path}: {_strerror(exc)}") from None
        else:
            raise ControlError(f"control socket {self.path} is in use: is another "
                               "soca-appliance running?")
        finally:
            probe.close()
        try:
            os.unlink(self.path)
            log.info("removed stale control socket %s", self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ControlError(f"cannot remove stale control socket {self.path}: "
                               f"{_strerror(exc)}") from None

    def _bind_failure(self, exc: OSError) -> str:
        if _too_long(self.path, exc):
            return (f"control socket path is too long ({len(os.fsencode(self.path))} bytes; "
                    f"UNIX sockets allow at most {MAX_PATH}): {self.path}")
        if isinstance(exc, PermissionError):
            return (f"cannot create control socket {self.path}: permission denied (the "
                    f"service user needs write access to {Path(self.path).parent})")
        return f"cannot create control socket {self.path}: {_strerror(exc)}"

    def _unlink(self) -> None:
        # Only our own socket: a newer instance may have replaced it in the meantime.
        if self._inode is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
        self._inode = None

    # --- serving -----------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None and self._wake_r is not None
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                # No timeout: close() wakes the selector through the pipe, so an idle
                # kiosk's control thread never runs (it woke twice a second before).
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r or self._stop.is_set():
                        return
                    try:
                        conn, _addr = self._sock.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        log.warning("control socket accept failed: %s", _strerror(exc))
                        time.sleep(_POLL)       # e.g. EMFILE: do not spin
                        continue
                    try:
                        self._one(conn)
                    except Exception:  # noqa: BLE001 - a client must never stop the thread
                        log.exception("control request failed")
                    finally:
                        conn.close()
        finally:
            sel.close()

    def _one(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        peer = _peer(conn)
        line, problem = self._read_line(conn)
        if problem is None:
            cmd, problem = parse_request(line)
        if problem is not None:
            self.refused += 1
            if problem:                         # "" = the client left or we are stopping
                log.info("control request refused (%s): %s", peer, problem)
                self._reply(conn, {"ok": False, "error": problem})
            return
        self.requests += 1
        log.info("control: %s (%s)", cmd, peer)
        self._reply(conn, self._call(cmd))

    def _read_line(self, conn: socket.socket) -> tuple[bytes, Optional[str]]:
        deadline = time.monotonic() + READ_TIMEOUT
        buf = b""
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return buf, f"no complete request within {READ_TIMEOUT:g} s"
            conn.settimeout(min(remaining, _POLL))
            try:
                data = conn.recv(MAX_REQUEST + 1 - len(buf))
            except socket.timeout:
                continue
            except OSError:
                return buf, ""
            if not data:                        # EOF: a request without its newline is fine
                return (buf, None) if buf.strip() else (buf, "empty request")
            buf += data
            if b"\n" in buf:
                line, _, _rest = buf.partition(b"\n")
                return line, None
            if len(buf) > MAX_REQUEST:
                return buf, f"request too long (at most {MAX_REQUEST} bytes)"
        return buf, ""

    def _call(self, cmd: str) -> dict[str, Any]:
        try:
            reply = self.handler(cmd)
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged here
            log.exception("control command %s failed", cmd)
            return {"ok": False, "error": f"{cmd} failed: {exc.__class__.__name__}: {exc}"}
        if not isinstance(reply, dict):
            log.error("control handler returned %r for %s", type(reply).__name__, cmd)
            return {"ok": False, "error": f"{cmd} failed: bad reply from the appliance"}
        if "ok" not in reply:
            reply = {"ok": True, **reply}
        return reply

    def _reply(self, conn: socket.socket, reply: dict[str, Any]) -> None:
        try:
            data = json.dumps(reply, default=str, ensure_ascii=False) + "\n"
        except (TypeError, ValueError) as exc:
            data = json.dumps({"ok": False, "error": f"reply not serialisable: {exc}"}) + "\n"
        conn.settimeout(READ_TIMEOUT)
        try:
            conn.sendall(data.encode("utf-8"))
        except OSError as exc:
            log.debug("control reply not delivered: %s", exc)


def _peer(conn: socket.socket) -> str:
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return "peer unknown"
    try:
        pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, opt,
                                                              struct.calcsize("3i")))
    except OSError:
        return "peer unknown"
    return f"uid {uid}, pid {pid}"
