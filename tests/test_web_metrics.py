"""/metrics (parsed by prometheus_client), the mic level tap, the [web] configuration, and
`soca-appliance run` serving the screen and metrics against the simulator."""
from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import ASSETS, wait_for
from soca_appliance import config
from soca_appliance.events import EventLog, Redactor
from soca_appliance.web.level import LevelTap, MicMeter
from web_helpers import KEY, TOKEN, FakeApp, make_server, request, scrape


@pytest.fixture
def events() -> EventLog:
    return EventLog("json", stream=io.StringIO(), redactor=Redactor([KEY]))


@pytest.fixture
def app() -> FakeApp:
    return FakeApp()


# --- /metrics -----------------------------------------------------------------------------

def test_metrics_follow_status_and_events(app: FakeApp, events: EventLog) -> None:
    meter = MicMeter()
    server = make_server(app, events, meter=meter)
    try:
        m = scrape(server.port)
        assert m[("soca_build_info", (("version", "9.9.9"),))] == 1
        assert m[("soca_state", (("state", "ready"),))] == 1
        assert m[("soca_state", (("state", "speaking"),))] == 0
        assert m[("soca_connected", ())] == 1 and m[("soca_muted", ())] == 0
        for name, value in app.counters.items():          # the names ctl status shows
            assert m[(f"soca_{name}_total", ())] == value
        assert m[("soca_reconnects_total", ())] == 2
        assert m[("soca_mic_rms_dbfs", ())] == -math.inf     # no audio yet
        assert m[("soca_last_error_timestamp_seconds", ())] == 0
        assert m[("soca_uptime_seconds", ())] >= 0

        t = 0.5 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)
        meter.add((t * 32767).astype("<i2").tobytes())
        for source in ("button", "screen", "screen", "server", "ctl"):
            events.emit("barge", seq=1, source=source)
        events.emit("error", message="authentication refused: Invalid token")
        events.emit("error", message="speaker gone")
        events.emit("disconnected", code=1008, reason="x", retry_in=1.0)
        app.state, app.faults, app.muted = "error", ["auth"], True
        m = scrape(server.port)
        assert m[("soca_barges_total", (("source", "screen"),))] == 2
        assert m[("soca_barges_total", (("source", "button"),))] == 1
        assert m[("soca_barges_total", (("source", "ctl"),))] == 1
        assert m[("soca_auth_failures_total", ())] == 1
        assert m[("soca_errors_total", ())] == 2
        assert m[("soca_disconnects_total", ())] == 1
        assert time.time() - m[("soca_last_error_timestamp_seconds", ())] < 60
        assert m[("soca_state", (("state", "error"),))] == 1
        assert m[("soca_fault", (("fault", "auth"),))] == 1
        assert m[("soca_fault", (("fault", "mic"),))] == 0
        assert m[("soca_muted", ())] == 1
        # a 0.5 full-scale sine: RMS 0.5/sqrt(2) -> -9.03 dBFS, peak -6.02 dBFS
        assert m[("soca_mic_rms_dbfs", ())] == pytest.approx(-9.03, abs=0.05)
        assert m[("soca_mic_peak_dbfs", ())] == pytest.approx(-6.02, abs=0.05)
    finally:
        server.close()


def test_prometheus_client_loads_on_first_scrape_only() -> None:
    code = """
import io, sys
from soca_appliance.events import EventLog
from soca_appliance.web import serve
from web_helpers import request
class App:
    def status(self): return {"state": "ready", "counters": {}}
srv = serve("127.0.0.1", 0, "", "en", "1", App(), EventLog("json", stream=io.StringIO()))
assert request(srv.port, "GET", "/api/status")[0] == 200
before = "prometheus_client" in sys.modules
assert request(srv.port, "GET", "/metrics")[0] == 200
print(before, "prometheus_client" in sys.modules)
srv.close()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parent)
    assert proc.stdout.split() == ["False", "True"], proc.stderr


# --- the mic level ------------------------------------------------------------------------

def test_meter_window_and_silence() -> None:
    now = [1000.0]
    meter = MicMeter(window=60, clock=lambda: now[0])
    assert meter.levels() == (-math.inf, -math.inf)
    meter.add(bytes(640))
    assert meter.levels()[0] == -math.inf                 # digital silence
    loud = (np.full(320, 16384)).astype("<i2").tobytes()  # half scale: -6.02 dBFS
    meter.add(loud)
    rms, peak = meter.levels()
    assert rms == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.01)
    assert peak == pytest.approx(-6.02, abs=0.01)
    now[0] += 61                                          # a minute later, all forgotten
    assert meter.levels() == (-math.inf, -math.inf)
    meter.add(b"\x01")                                    # an odd byte: nothing to measure
    assert meter.frames == 2


def test_meter_measures_per_second_the_same_as_per_frame() -> None:
    """Frames are measured a second at a time: the levels read mid-second, across seconds
    and odd-length frames are those of every sample, exactly."""
    rng = np.random.default_rng(3)
    now = [500.0]
    meter = MicMeter(window=60, clock=lambda: now[0])
    frames = [rng.integers(-20000, 20000, 320).astype("<i2") for _ in range(120)]
    seen: list[np.ndarray] = []
    for i, frame in enumerate(frames):
        meter.add(frame.tobytes() + (b"\x07" if i % 7 == 0 else b""))   # a stray odd byte
        seen.append(frame)
        now[0] += 0.02
        if i % 33 == 0:                                   # read mid-second, then go on
            wide = np.concatenate(seen).astype(np.float64)
            rms, peak = meter.levels()
            assert rms == pytest.approx(20 * math.log10(math.sqrt(np.mean(wide ** 2))
                                                        / 32768), abs=1e-9)
            assert peak == pytest.approx(20 * math.log10(np.max(np.abs(wide)) / 32768),
                                         abs=1e-9)
    assert meter.frames == 120


def test_meter_loses_no_frame_to_a_reader_emptying_its_queue() -> None:
    """The capture thread appends without a lock while /metrics reads (and so measures)
    the queue: every sample is still counted once, whichever batch it fell in."""
    import threading
    meter = MicMeter(window=60)
    frames = [np.full(320, 100 * (i % 50 + 1), dtype="<i2").tobytes() for i in range(3000)]
    done = threading.Event()
    read = threading.Event()

    def capture() -> None:
        for i, pcm in enumerate(frames):
            meter.add(pcm)
            if i % 100 == 37:
                # A read comes in here at least (mid-batch: the meter measures 50 at a
                # time); the writer could otherwise finish in one of the GIL's 5 ms turns.
                read.clear()
                read.wait(5.0)
        done.set()

    reads = 0
    writer = threading.Thread(target=capture)
    writer.start()
    while not done.is_set():
        meter.levels()
        reads += 1
        read.set()
    writer.join()
    rms, peak = meter.levels()
    wide = np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float64)
    assert meter.frames == len(frames) and reads >= 30
    assert rms == pytest.approx(20 * math.log10(math.sqrt(np.mean(wide ** 2)) / 32768),
                                abs=1e-9)
    assert peak == pytest.approx(20 * math.log10(5000 / 32768), abs=1e-9)


def test_level_tap_is_the_source_plus_a_meter() -> None:
    class Source:
        name = "fake"
        on_error = None

        def __init__(self) -> None:
            self.stopped = False

        def start(self, on_frame: Any) -> None:
            from soca_appliance.framing import Frame
            on_frame(Frame((np.full(320, 1000)).astype("<i2").tobytes(), 0.0, 0))

        def stop(self, timeout: float = 1.0) -> None:
            self.stopped = True

    inner = Source()
    tap = LevelTap(inner)
    got: list[Any] = []
    tap.start(got.append)
    assert len(got) == 1 and tap.meter.frames == 1
    assert hasattr(tap, "on_error") and tap.name == "fake"
    tap.on_error = print                                  # the appliance sets these
    assert inner.on_error is print
    tap.stop(0.1)
    assert inner.stopped
    assert tap.meter.levels()[0] == pytest.approx(20 * math.log10(1000 / 32768), abs=0.01)


# --- configuration ------------------------------------------------------------------------

def test_web_config_from_file_and_env(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[web]\nlisten = "0.0.0.0:9000"\ntoken = "{TOKEN}"\n')
    cfg = config.load(path, env={})
    assert (cfg.web.listen, cfg.web.token) == ("0.0.0.0:9000", TOKEN)
    assert config.load(path, env={"SOCA_WEB_LISTEN": ""}).web.listen == ""
    assert config.load(None, env={}).web == config.Web("127.0.0.1:8080", "")
    assert config.parse_listen("[::1]:8080") == ("::1", 8080)


@pytest.mark.parametrize("toml, message", [
    ('[web]\nlisten = "0.0.0.0:8080"\n', "set web.token"),
    ('[web]\nlisten = "[::]:8080"\n', "set web.token"),
    ('[web]\nlisten = "192.0.2.2:8080"\n', "set web.token"),
    ('[web]\nlisten = "localhost:8080"\n', "must be an IP address and port"),
    ('[web]\nlisten = "127.0.0.1"\n', "must be an IP address and port"),
    ('[web]\nlisten = "127.0.0.1:70000"\n', "must be an IP address and port"),
    ('[web]\ntoken = "short"\n', "at least 16"),
    ('[web]\ntoken = "has space in it 0123"\n', "at least 16"),
    ('[web]\nlisten = 8080\n', "must be a string"),
    ('[web]\nport = 8080\n', "unknown key 'web.port'"),
])
def test_bad_web_config_names_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(config.ConfigError, match=message.replace(".", r"\.")):
        config.load(path, env={})


# --- the real thing: `soca-appliance run` serves the screen and metrics ------------------

def test_run_serves_screen_and_metrics_and_stops_cleanly(tmp_path: Path) -> None:
    from soca_appliance.simulator import Simulator
    cfg = tmp_path / "config.toml"
    cfg.write_text("# defaults\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCA_")}
    env.update(SDL_AUDIODRIVER="dummy", SOCA_PRIVATE_KEY=KEY, PYTHONUNBUFFERED="1")
    out = (tmp_path / "out.jsonl").open("w+")
    with Simulator(expected_key=KEY) as sim:
        proc = subprocess.Popen(
            [sys.executable, "-m", "soca_appliance", "run", "--config", str(cfg), "--url",
             sim.url, "--agent-id", "a1", "--lang", "en", "--input",
             str(ASSETS / "demo-en.wav"), "--gpio", "off", "--control-socket", "",
             "--web-listen", "127.0.0.1:0", "--log-format", "json"],
            stdout=out, stderr=subprocess.PIPE, env=env)
        try:
            def url() -> str:
                out.seek(0)
                for line in out.read().splitlines():
                    event = json.loads(line)
                    if "screen and metrics on" in event.get("message", ""):
                        return event["message"].rsplit(" ", 1)[1]
                return ""
            port = int(wait_for(url, 20, "the screen's address").rstrip("/").rsplit(":", 1)[1])
            wait_for(lambda: scrape(port).get(("soca_connected", ())) == 1, 20,
                     "soca_connected 1")
            wait_for(lambda: scrape(port)[("soca_mic_rms_dbfs", ())] > -60, 10,
                     "the demo speech in the mic level")
            status, _, body = request(port, "GET", "/")
            assert status == 200 and KEY.encode() not in body
        finally:
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=10)
            took = time.monotonic() - started
        stderr = proc.stderr.read().decode()
    assert code == 0 and "Traceback" not in stderr, stderr
    assert took < 2.0, f"shutdown took {took:.2f} s"
    out.seek(0)
    assert KEY not in out.read()
