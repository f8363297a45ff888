"""``soca-diag --echo-test`` end to end (issue 12): the real command plays the chime through
SDL's pulse driver into a PulseAudio null sink, the room process (soca_appliance/room.py)
puts it through a speaker, air and a mic into a second null sink, and the check records that
through PyAudio's pulse device. A loud room WARNs, a quiet one PASSes, and a missing device
is a SKIP line with the reason, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from room import have_room
from soca_appliance.room import RoomSettings
from soca_appliance.room_rig import PulseRig, RoomProcess


def _diag(cfg: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "soca_appliance.diagnostics", "--config",
                           str(cfg), "--only", "echo", "--no-interactive", *extra],
                          env=env, capture_output=True, text=True, timeout=90)


def _config(tmp_path: Path, mic: str) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'mic = "{mic}"\ngpio = "off"\n')
    return cfg


def _check(done: subprocess.CompletedProcess[str]) -> dict:
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    [check] = doc["checks"]
    assert check["name"] == "echo.path"
    return check


@pytest.mark.skipif(not have_room(), reason="needs pulseaudio, pacat, espeak-ng")
def test_echo_test_warns_on_a_loud_room_and_passes_a_quiet_one(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "pulse")
    found = {}
    with PulseRig() as rig:
        for label, gain in (("quiet", 0.3), ("loud", 8.0)):
            room = RoomProcess(rig, RoomSettings(echo_gain=gain))
            try:
                done = _diag(cfg, rig.env, "--echo-test", "--json")
            finally:
                room.close()
            found[label] = _check(done)
            assert done.returncode == 0, done.stdout      # a WARN is not a failure
        table = _diag(cfg, rig.env, "--echo-test")         # the human table, once
    quiet, loud = found["quiet"], found["loud"]
    assert quiet["status"] == "PASS", quiet
    # The room: 40 ms of air, 8 ms of band-limit filter, PulseAudio's two 60 ms streams
    # and SDL's buffer, so well above 48 ms and far below what AEC3 follows.
    assert 48 <= quiet["figures"]["delay_ms"] <= 450, quiet
    assert 5.0 <= quiet["figures"]["erl_db"] <= 20.0, quiet     # gain 0.3 is ~10 dB down
    assert loud["status"] == "WARN", loud
    assert "clips" in loud["detail"] or "louder" in loud["detail"], loud
    assert loud["hint"]
    assert "echo.path" in table.stdout and "Traceback" not in table.stdout + table.stderr


def test_echo_test_without_a_microphone_is_a_skip_with_the_reason(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "no-such-mic")
    env = {**__import__("os").environ, "SDL_AUDIODRIVER": "dummy",
           "PULSE_SERVER": f"unix:{tmp_path / 'none'}"}
    check = _check(_diag(cfg, env, "--echo-test", "--json"))
    assert check["status"] == "SKIP" and "no microphone" in check["detail"], check
    assert "no-such-mic" in check["detail"], check


def test_echo_test_is_opt_in_off_a_pi(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "no-such-mic")
    check = _check(_diag(cfg, {**__import__("os").environ, "SDL_AUDIODRIVER": "dummy"},
                         "--json"))
    assert check["status"] == "SKIP" and "--echo-test" in check["detail"], check
