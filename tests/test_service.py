"""systemd notify protocol: READY, a watchdog fed only while healthy, STOPPING."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from soca_appliance.service import Notifier
from soca_appliance.simulator import Simulator

from conftest import ASSETS

KEY = "sk-service-test-key"


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    return sock


def test_watchdog_is_fed_only_while_healthy(tmp_path: Path) -> None:
    sock = _listen(tmp_path / "notify")
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2"})
    notifier.tick(healthy=False)
    notifier.tick(healthy=True, status="ready")
    assert sock.recv(256) == b"WATCHDOG=1\nSTATUS=ready"
    sock.settimeout(0.2)
    notifier.tick(healthy=False)
    try:
        extra = sock.recv(256)
    except socket.timeout:
        extra = b""
    assert extra == b""


def test_no_notify_socket_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.send("READY=1") is False


def test_run_reports_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    sock = _listen(tmp_path / "notify")
    config = tmp_path / "config.toml"
    config.write_text("agent_id = 'a'\nlang = 'en'\ngpio = 'off'\ncontrol_socket = ''\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCA_")}
    env.update(SDL_AUDIODRIVER="dummy", SOCA_PRIVATE_KEY=KEY,
               NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="1000000")
    with Simulator(expected_key=KEY) as sim:
        proc = subprocess.Popen([sys.executable, "-m", "soca_appliance", "run", "--config",
                                 str(config), "--url", sim.url, "--input",
                                 str(ASSETS / "demo-en.wav")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            messages = [sock.recv(256).decode() for _ in range(3)]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        tail = sock.recv(256).decode()
        while not tail.startswith("STOPPING"):
            tail = sock.recv(256).decode()
    assert messages[0].startswith("READY=1")
    assert all(m.startswith("WATCHDOG=1") for m in messages[1:])
    assert tail == "STOPPING=1"
