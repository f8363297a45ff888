"""The control socket (``ControlServer``), its client and ``soca-appliance ctl``.

A fake handler stands in for the appliance: these tests cover the socket, the request
format and the exit codes. The same commands against the real appliance (and the GPIO
button they must behave like) are in ``test_gpio.py``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from soca_appliance import control
from conftest import assert_never_wakes, wait_for
from soca_appliance.control import (COMMANDS, ControlError, ControlServer, ControlUnavailable,
                                    ctl_main, make_handler, request)


class FakeHandler:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_with: BaseException | None = None
        self.reply: Any = None

    def __call__(self, cmd: str) -> Any:
        self.calls.append(cmd)
        if self.fail_with is not None:
            raise self.fail_with
        if self.reply is not None:
            return self.reply
        if cmd == "status":
            return {"ok": True, "state": "ready", "connected": True, "seq": 3, "muted": False,
                    "counters": {"frames_sent": 10}}
        return {"ok": True, "cmd": cmd}


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "run" / "control.sock")


@pytest.fixture
def handler() -> FakeHandler:
    return FakeHandler()


@pytest.fixture
def server(sock_path: str, handler: FakeHandler) -> Iterator[ControlServer]:
    srv = ControlServer(sock_path, handler)
    srv.start()
    yield srv
    srv.close()


def raw(path: str, data: bytes, shut_wr: bool = False, timeout: float = 3.0) -> dict[str, Any]:
    """Send raw bytes, return the one JSON line that comes back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(data)
        if shut_wr:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        while b"\n" not in buf:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    assert buf.endswith(b"\n"), f"reply is not one line: {buf!r}"
    assert buf.count(b"\n") == 1
    return json.loads(buf)


def stale_socket(path: str) -> None:
    """A socket file with nobody behind it, as a crashed appliance leaves it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


# --- good requests -------------------------------------------------------------------------

def test_commands_constant() -> None:
    assert COMMANDS == ("barge", "mute", "unmute", "status")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_each_command_reaches_the_handler(server: ControlServer, sock_path: str,
                                          handler: FakeHandler, cmd: str) -> None:
    reply = request(sock_path, cmd)
    assert reply["ok"] is True
    assert handler.calls == [cmd]
    if cmd == "status":
        assert reply["state"] == "ready" and reply["seq"] == 3
    else:
        assert reply == {"ok": True, "cmd": cmd}


def test_request_without_newline_is_accepted_at_eof(server: ControlServer, sock_path: str,
                                                    handler: FakeHandler) -> None:
    assert raw(sock_path, b'{"cmd": "mute"}', shut_wr=True)["ok"] is True
    assert handler.calls == ["mute"]


def test_line_of_exactly_the_limit_is_accepted(server: ControlServer, sock_path: str,
                                               handler: FakeHandler) -> None:
    line = b'{"cmd": "status"}'
    line += b" " * (control.MAX_REQUEST - len(line))
    assert len(line) == control.MAX_REQUEST
    assert raw(sock_path, line + b"\n")["ok"] is True
    assert handler.calls == ["status"]


def test_many_clients_in_parallel(server: ControlServer, sock_path: str,
                                  handler: FakeHandler) -> None:
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            reply = request(sock_path, "status", timeout=5.0)
            with lock:
                results.append(reply)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 20 and all(r["ok"] for r in results)
    assert handler.calls == ["status"] * 20
    assert server.requests == 20


def test_handler_reply_without_ok_is_completed(server: ControlServer, sock_path: str,
                                               handler: FakeHandler) -> None:
    handler.reply = {"state": "ready"}
    assert request(sock_path, "status") == {"ok": True, "state": "ready"}


# --- bad requests ----------------------------------------------------------------------------

@pytest.mark.parametrize("data, words", [
    (b"{not json\n", "malformed JSON"),
    (b"barge\n", "malformed JSON"),
    (b"\xff\xfe\n", "not UTF-8"),
    (b'["barge"]\n', "expected an object"),
    (b'{"command": "barge"}\n', "expected an object"),
    (b'{"cmd": "reboot"}\n', "unknown command 'reboot'"),
    (b'{"cmd": "BARGE"}\n', "unknown command"),
    (b'{"cmd": 1}\n', "unknown command 1"),
    (b'{"cmd": ["barge"]}\n', "unknown command"),
    (b'{"cmd": "barge", "force": true}\n', "unexpected field(s): force"),
    (b"\n", "malformed JSON"),
])
def test_bad_requests_are_refused(server: ControlServer, sock_path: str, handler: FakeHandler,
                                  data: bytes, words: str) -> None:
    reply = raw(sock_path, data)
    assert reply["ok"] is False
    assert words in reply["error"]
    assert handler.calls == []          # nothing but the four commands reaches the appliance
    assert server.refused == 1


def test_unknown_command_through_the_client(server: ControlServer, sock_path: str,
                                            handler: FakeHandler) -> None:
    reply = request(sock_path, "shutdown")
    assert reply["ok"] is False and "commands: barge, mute, unmute, status" in reply["error"]
    assert handler.calls == []


def test_oversize_line_is_refused(server: ControlServer, sock_path: str,
                                  handler: FakeHandler) -> None:
    reply = raw(sock_path, b"x" * 5000)
    assert reply["ok"] is False and "too long" in reply["error"]
    # a valid command padded over the limit is still too long
    line = b'{"cmd": "barge"}' + b" " * control.MAX_REQUEST + b"\n"
    reply = raw(sock_path, line)
    assert reply["ok"] is False and "too long" in reply["error"]
    assert handler.calls == []
    assert request(sock_path, "barge")["ok"] is True      # the server is still there


def test_silent_client_times_out_and_does_not_block_the_server(
        server: ControlServer, sock_path: str, handler: FakeHandler) -> None:
    reply = raw(sock_path, b'{"cmd": "bar', timeout=5.0)   # never finishes its line
    assert reply["ok"] is False and "within 1 s" in reply["error"]
    assert handler.calls == []
    assert request(sock_path, "status")["ok"] is True


def test_client_that_leaves_at_once(server: ControlServer, sock_path: str,
                                    handler: FakeHandler) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
    assert request(sock_path, "status")["ok"] is True
    assert handler.calls == ["status"]


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_handler_exception_is_reported_not_fatal(server: ControlServer, sock_path: str,
                                                 handler: FakeHandler) -> None:
    # A handler on the logger itself: other tests may stop "soca" propagating to root.
    logs = ListHandler()
    logger = logging.getLogger("soca.control")
    logger.addHandler(logs)
    try:
        handler.fail_with = RuntimeError("player exploded")
        reply = request(sock_path, "barge")
    finally:
        logger.removeHandler(logs)
    assert reply["ok"] is False
    assert "barge failed" in reply["error"] and "player exploded" in reply["error"]
    assert any(r.levelno >= logging.ERROR and "barge" in r.getMessage() and r.exc_info
               for r in logs.records)
    assert server.running
    handler.fail_with = None
    assert request(sock_path, "barge")["ok"] is True


def test_handler_returning_garbage(server: ControlServer, sock_path: str,
                                   handler: FakeHandler) -> None:
    handler.reply = ["not", "a", "dict"]
    reply = request(sock_path, "status")
    assert reply["ok"] is False and "bad reply" in reply["error"]


# --- the socket file -----------------------------------------------------------------------

def test_socket_mode_and_parent_dir(server: ControlServer, sock_path: str) -> None:
    st = os.lstat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(os.stat(Path(sock_path).parent).st_mode) == 0o750


def test_existing_parent_dir_is_left_alone(tmp_path: Path, handler: FakeHandler) -> None:
    os.chmod(tmp_path, 0o755)
    with ControlServer(str(tmp_path / "c.sock"), handler):
        assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o755


def test_stale_socket_file_is_replaced(sock_path: str, handler: FakeHandler) -> None:
    stale_socket(sock_path)
    os.chmod(sock_path, 0o600)
    os.link(sock_path, sock_path + ".old")      # keeps the old inode's number taken
    old = os.lstat(sock_path).st_ino
    with ControlServer(sock_path, handler):
        st = os.lstat(sock_path)
        assert st.st_ino != old and stat.S_IMODE(st.st_mode) == 0o660
        assert request(sock_path, "status")["ok"] is True


def test_live_socket_is_not_stolen(server: ControlServer, sock_path: str,
                                   handler: FakeHandler) -> None:
    second = ControlServer(sock_path, FakeHandler())
    with pytest.raises(ControlError, match="in use"):
        second.start()
    second.close()                      # harmless, and must not remove the first one's socket
    assert request(sock_path, "mute")["ok"] is True
    assert handler.calls == ["mute"]


def test_other_file_at_the_path_is_not_removed(tmp_path: Path, handler: FakeHandler) -> None:
    path = tmp_path / "c.sock"
    path.write_text("precious")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(str(path), handler).start()
    assert path.read_text() == "precious"


def test_close_unlinks_and_stops_the_thread(sock_path: str, handler: FakeHandler) -> None:
    srv = ControlServer(sock_path, handler)
    srv.start()
    thread = srv._thread
    assert thread is not None and thread.is_alive()
    # a client that connected and says nothing must not hold close() up
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(sock_path)
        idle.sendall(b'{"cmd"')
        time.sleep(0.05)                # let the server pick the connection up
        started = time.monotonic()
        srv.close()
        assert time.monotonic() - started < 1.0
    assert not thread.is_alive()
    assert not os.path.exists(sock_path)
    srv.close()                         # twice is fine


def test_close_leaves_a_newer_socket_alone(sock_path: str, handler: FakeHandler) -> None:
    srv = ControlServer(sock_path, handler)
    srv.start()
    os.unlink(sock_path)
    stale_socket(sock_path)             # someone else's socket now lives at the path
    srv.close()
    assert os.path.exists(sock_path)


def test_path_too_long(tmp_path: Path, handler: FakeHandler) -> None:
    path = tmp_path / ("d" * 60) / ("s" * 60 + ".sock")
    with pytest.raises(ControlError, match="too long"):
        ControlServer(str(path), handler).start()


def test_empty_path(handler: FakeHandler) -> None:
    with pytest.raises(ControlError, match="empty"):
        ControlServer("", handler).start()


def test_parent_is_a_file(tmp_path: Path, handler: FakeHandler) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ControlError, match="cannot create"):
        ControlServer(str(tmp_path / "f" / "c.sock"), handler).start()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_permission_denied(tmp_path: Path, handler: FakeHandler) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ControlError, match="permission denied"):
            ControlServer(str(locked / "c.sock"), handler).start()
        with pytest.raises(ControlError, match="Permission denied|permission denied"):
            ControlServer(str(locked / "sub" / "c.sock"), handler).start()
    finally:
        locked.chmod(0o700)


# --- the handler on the appliance's methods ------------------------------------------------

class FakeApp:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.muted = False

    def press(self, source: str = "button") -> str:
        self.calls.append(("press", source))
        return "barged"

    def set_muted(self, muted: bool) -> None:
        self.calls.append(("set_muted", muted))
        self.muted = muted

    def status(self) -> dict[str, Any]:
        return {"state": "speaking", "connected": True, "seq": 2, "muted": self.muted,
                "counters": {"barges_button": 0}}


def test_make_handler_maps_onto_the_button_code_path() -> None:
    app = FakeApp()
    handle = make_handler(app)
    assert handle("barge") == {"ok": True, "result": "barged"}
    assert handle("mute") == {"ok": True, "muted": True}
    assert handle("status")["muted"] is True
    assert handle("unmute") == {"ok": True, "muted": False}
    assert handle("status") == {"ok": True, "state": "speaking", "connected": True, "seq": 2,
                                "muted": False, "counters": {"barges_button": 0}}
    assert handle("reboot")["ok"] is False
    assert app.calls == [("press", "ctl"), ("set_muted", True), ("set_muted", False)]


def test_make_handler_through_the_socket(sock_path: str) -> None:
    app = FakeApp()
    with ControlServer(sock_path, make_handler(app)):
        assert request(sock_path, "barge") == {"ok": True, "result": "barged"}
        assert request(sock_path, "status")["state"] == "speaking"
    assert app.calls == [("press", "ctl")]


# --- the client and soca-appliance ctl -----------------------------------------------------

def run_ctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = ctl_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ctl_ok(server: ControlServer, sock_path: str, handler: FakeHandler,
                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_ctl(capsys, "--control-socket", sock_path, "barge")
    assert code == 0 and err == ""
    assert out.count("\n") == 1 and json.loads(out) == {"ok": True, "cmd": "barge"}
    assert handler.calls == ["barge"]


def test_ctl_status_is_pretty(server: ControlServer, sock_path: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_ctl(capsys, "--control-socket", sock_path, "status")
    assert code == 0
    assert out.count("\n") > 3                  # indented, for people
    status = json.loads(out)
    for key in ("state", "connected", "seq", "muted", "counters"):
        assert key in status


def test_ctl_not_ok_exits_1(server: ControlServer, sock_path: str, handler: FakeHandler,
                            capsys: pytest.CaptureFixture[str]) -> None:
    handler.reply = {"ok": False, "error": "not now"}
    code, out, err = run_ctl(capsys, "--control-socket", sock_path, "mute")
    assert code == 1
    assert json.loads(out)["ok"] is False
    assert "not now" in err


def test_ctl_no_socket_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "nothing.sock")
    code, out, err = run_ctl(capsys, "--control-socket", path, "status")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "is soca-appliance running?" in err and path in err and "not found" in err


def test_ctl_refused_exits_2(sock_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    stale_socket(sock_path)
    code, _, err = run_ctl(capsys, "--control-socket", sock_path, "barge")
    assert code == 2 and "nothing listens" in err and "is soca-appliance running?" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_ctl_permission_denied_exits_2(server: ControlServer, sock_path: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    os.chmod(sock_path, 0o000)
    code, _, err = run_ctl(capsys, "--control-socket", sock_path, "status")
    assert code == 2 and "permission denied" in err


def test_ctl_no_answer_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "mute.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)                  # accepts (in the backlog) but never answers
    try:
        with pytest.raises(ControlError, match="no answer"):
            request(path, "status", timeout=0.3)
        code, _, err = run_ctl(capsys, "--control-socket", path, "--timeout", "0.3", "status")
        assert code == 2 and "no answer" in err
    finally:
        listener.close()


def test_client_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(ControlUnavailable, match="not found"):
        request(str(tmp_path / "x.sock"), "status")
    (tmp_path / "file").write_text("")
    with pytest.raises(ControlUnavailable):
        request(str(tmp_path / "file"), "status")


def test_ctl_rejects_unknown_command_locally(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ctl_main(["--control-socket", "/nonexistent/c.sock", "reboot"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_ctl_honours_env(server: ControlServer, sock_path: str, handler: FakeHandler,
                         monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SOCA_CONTROL_SOCKET", sock_path)
    code, out, _ = run_ctl(capsys, "unmute")
    assert code == 0 and json.loads(out)["ok"] is True
    assert handler.calls == ["unmute"]


def test_ctl_reads_the_config_file(server: ControlServer, sock_path: str, tmp_path: Path,
                                   handler: FakeHandler, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SOCA_CONTROL_SOCKET", raising=False)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'control_socket = "{sock_path}"\n')
    code, _, _ = run_ctl(capsys, "--config", str(cfg), "status")
    assert code == 0 and handler.calls == ["status"]


def test_default_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from soca_appliance.config import Config
    assert control.DEFAULT_PATH == Config().control_socket == "/run/soca-appliance/control.sock"
    assert control.default_path({}) == control.DEFAULT_PATH
    assert control.default_path({"SOCA_CONTROL_SOCKET": "/tmp/x.sock"}) == "/tmp/x.sock"


def test_an_idle_control_thread_never_wakes(server: ControlServer) -> None:
    """It waits on the socket and the wake-up pipe only (it polled every 0.5 s)."""
    thread = server._thread
    assert thread is not None and thread.is_alive()
    assert_never_wakes(thread)
    server.close()
    assert not thread.is_alive()                # and close() still stops it at once


def test_the_server_and_client_names_are_importable_from_control() -> None:
    """They moved to control_server.py and control_client.py; ``control`` still has them."""
    from soca_appliance import control_client, control_server
    assert control.ControlServer is control_server.ControlServer is ControlServer
    assert control.request is control_client.request is request
    assert control.ctl_main is control_client.ctl_main is ctl_main
    assert (control.EXIT_OK, control.EXIT_REFUSED, control.EXIT_UNAVAILABLE) == (0, 1, 2)
    assert control.MAX_REPLY == 64 * 1024
    assert (control.SOCKET_MODE, control.DIR_MODE) == (0o660, 0o750)
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        control.nonesuch  # noqa: B018
