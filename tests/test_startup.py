"""Start-up connects first (issue 13): the real CLI in a child process, every feature on
(AEC policy, control socket, web page), against the simulator on 127.0.0.1. At the moment
the link reports ``stt.ready`` the audio side's heavy modules must not be loaded yet; the
conversation that follows still works (a sentence is played, the mic streams)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from conftest import ASSETS, wait_for
from soca_appliance.simulator import Simulator

KEY = "startup-test-" + os.urandom(6).hex()

# The real entry point, with one probe: what is imported when the link says it streams.
# (webrtcvad may be: a 100 kB extension the gate is built with, no numpy.)
LAUNCHER = """
import json, os, sys
from soca_appliance import appliance
connected = appliance.Appliance._connected
def probe(self, session_id):
    heavy = [m for m in ("pygame", "numpy", "soxr", "pywebrtc_audio") if m in sys.modules]
    with open(os.environ["STARTUP_PROBE"], "w") as out:
        json.dump(heavy, out)
    connected(self, session_id)
appliance.Appliance._connected = probe
from soca_appliance.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_stt_ready_comes_before_pygame_and_numpy_load(tmp_path: Path) -> None:
    probe = tmp_path / "probe.json"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'control_socket = "{tmp_path / "ctl.sock"}"\nduplex = "auto"\n'
                   '[web]\nlisten = "127.0.0.1:0"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCA_")}
    env.update(SOCA_PRIVATE_KEY=KEY, SDL_AUDIODRIVER="dummy", STARTUP_PROBE=str(probe))
    with Simulator(expected_key=KEY) as sim:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "run", "--url", sim.url, "--agent-id", "a",
             "--lang", "en", "--input", str(ASSETS / "demo-en.wav"), "--gpio", "mock",
             "--log-format", "json", "--config", str(cfg)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        events: list[dict] = []
        # A child that goes silent must not hang the suite: killed at the deadline, its
        # stdout ends and the assertion below says what was missing.
        watchdog = threading.Timer(30, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("{"):
                    events.append(json.loads(line))
                if any(e.get("event") == "sentence.play" for e in events):
                    break
        finally:
            watchdog.cancel()
            proc.terminate()
            proc.wait(10)
    assert any(e.get("event") == "sentence.play" for e in events), "no sentence within 30 s"
    names = [e.get("event") for e in events]
    assert "connected" in names and "audio.output" in names
    assert names.index("connected") < names.index("audio.output")   # link first
    wait_for(probe.exists, 5, "the probe's record")
    assert json.loads(probe.read_text()) == []                     # nothing heavy yet
