"""The command line as a user runs it: a real process, real signals, real exit codes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soca_appliance.simulator import Simulator

from conftest import ASSETS, wait_for

KEY = "sk-cli-secret-9f8e7d6c"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCA_")}
    env.update(SDL_AUDIODRIVER="dummy", PYTHONUNBUFFERED="1", **extra)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "soca_appliance", *args]


def test_run_streams_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    with Simulator(expected_key=KEY) as sim:
        out = (tmp_path / "out.jsonl").open("w+")
        proc = subprocess.Popen(
            _cli("run", "--url", sim.url, "--agent-id", "a1", "--lang", "en",
                 "--input", str(ASSETS / "demo-en.wav"), "--gpio", "mock",
                 "--log-format", "json", "--config", str(_empty_config(tmp_path)),
                 "--control-socket", str(tmp_path / "control.sock")),
            stdout=out, stderr=subprocess.PIPE, env=_env(SOCA_PRIVATE_KEY=KEY))
        try:
            wait_for(lambda: sim.stats()["frames_received"] > 25, timeout=20)
        finally:
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=10)
            took = time.monotonic() - started
        stderr = proc.stderr.read().decode()
    assert code == 0, stderr
    assert took < 2.0, f"shutdown took {took:.2f} s"
    assert "Traceback" not in stderr
    out.seek(0)
    text = out.read()
    assert KEY not in text and KEY not in stderr
    events = [json.loads(line) for line in text.splitlines()]
    assert all("ts" in e and "event" in e for e in events)
    names = [e["event"] for e in events]
    assert "connected" in names
    assert events[-1] == {**events[-1], "event": "state", "state": "stopped"}


def _empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text("# defaults\n")
    return path


@pytest.mark.parametrize("toml, message", [
    ("frame_ms = 30\n", "frame_ms must be 20, 40 or 50"),
    ("lang = 'fr'\n", "lang must be one of id, en"),
    ("no_such_key = 1\n", "unknown key 'no_such_key'"),
    ("vad = 'yes'\n", "must be true or false"),
    ("url = 'ws://example.com/voice-ws'\n", "allow_insecure"),
    ("this is = not toml\n", "not valid TOML"),
])
def test_bad_config_is_one_clear_line(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(toml)
    proc = subprocess.run(_cli("run", "--config", str(path)), capture_output=True, text=True,
                          env=_env(SOCA_PRIVATE_KEY=KEY), timeout=30)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stderr.startswith("soca-appliance: error: ")
    assert "Traceback" not in proc.stderr


def test_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    key.chmod(0o644)
    path = tmp_path / "config.toml"
    path.write_text(f"private_key_file = '{key}'\nagent_id = 'a'\n")
    proc = subprocess.run(_cli("run", "--config", str(path)), capture_output=True, text=True,
                          env=_env(), timeout=30)
    assert proc.returncode == 2
    assert f"chmod 600 {key}" in proc.stderr
    assert KEY not in proc.stderr


def test_missing_input_file_is_reported(tmp_path: Path) -> None:
    proc = subprocess.run(_cli("run", "--config", str(_empty_config(tmp_path)), "--agent-id",
                               "a", "--input", str(tmp_path / "nope.wav")),
                          capture_output=True, text=True, env=_env(SOCA_PRIVATE_KEY=KEY),
                          timeout=30)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


def test_ctl_talks_to_a_running_appliance(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    with Simulator(expected_key=KEY) as sim:
        proc = subprocess.Popen(
            _cli("run", "--url", sim.url, "--agent-id", "a1", "--input",
                 str(ASSETS / "chime.wav"), "--gpio", "off", "--config",
                 str(_empty_config(tmp_path)), "--control-socket", str(sock)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(SOCA_PRIVATE_KEY=KEY))
        try:
            wait_for(sock.exists, timeout=20)
            assert oct(sock.stat().st_mode & 0o777) == oct(0o660)
            wait_for(lambda: sim.stats()["starts_ok"] == 1, timeout=20)
            mute = subprocess.run(_cli("ctl", "--control-socket", str(sock), "mute"),
                                  capture_output=True, text=True, env=_env(), timeout=30)
            assert mute.returncode == 0 and json.loads(mute.stdout)["ok"] is True

            def status() -> dict:
                done = subprocess.run(_cli("ctl", "--control-socket", str(sock), "status"),
                                      capture_output=True, text=True, env=_env(), timeout=30)
                return json.loads(done.stdout)

            # The simulator counts the start before the appliance has read stt.ready.
            wait_for(lambda: status()["connected"], timeout=20, what="connected in ctl status",
                     interval=0.2)
            report = status()
            assert report["muted"] is True and report["connected"] is True
            assert report["state"] == "ready" and "frames_sent" in report["counters"]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
    assert not sock.exists()
    gone = subprocess.run(_cli("ctl", "--control-socket", str(sock), "status"),
                          capture_output=True, text=True, env=_env(), timeout=30)
    assert gone.returncode == 2 and "error" in gone.stderr


def test_demo_holds_a_whole_conversation() -> None:
    proc = subprocess.run(_cli("demo", "--log-format", "json", "--timeout", "60"),
                          capture_output=True, text=True, env=_env(), timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    finals = [e["text"] for e in events if e["event"] == "transcript" and e["final"]]
    manifest = json.loads((ASSETS / "manifest.json").read_text())["en"]
    assert finals == [turn["you"] for turn in manifest]
    played = [e["text"] for e in events if e["event"] == "sentence.play"]
    assert played == [s["text"] for turn in manifest for s in turn["agent"]]
    assert [e["seq"] for e in events if e["event"] == "answer"] == [1, 2]
    assert "Traceback" not in proc.stderr
