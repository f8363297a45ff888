"""soca-diag run for real, as a subprocess: against the local simulator, a microphone made of
a raw file through ALSA's file plugin, SDL's dummy audio driver and gpiozero's mock pins.

Every test writes its own config file; the private key is given in the environment or in a
key file, and must never appear in what soca-diag prints.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pytest

from soca_appliance.diagnostics import NAMES
from soca_appliance.simulator import Simulator

KEY = "diag-key-7f3a9c"
WRONG = "diag-wrong-0b1d"
RATE = 16000


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    server = Simulator(expected_key=KEY)
    server.start()
    yield server
    server.stop()


def write_config(tmp_path: Path, **values: Any) -> Path:
    settings: dict[str, Any] = {"agent_id": "agent-diag",
                                "private_key_file": str(tmp_path / "key")}
    settings.update(values)
    lines = []
    for key, value in settings.items():
        lines.append(f"{key} = {json.dumps(value)}")     # JSON scalars are valid TOML here
    lines += ["[leds]", "ready = 22", "listening = 23", "speaking = 24", "error = 25"]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def raw_mic(tmp_path: Path, pcm: np.ndarray) -> dict[str, str]:
    """An ALSA device 'testmic' that reads ``pcm`` (16 kHz mono) from a file."""
    raw = tmp_path / "mic.raw"
    # After the end of the file ALSA repeats its last 40 ms: pad with silence.
    padded = np.concatenate([pcm, np.zeros(RATE, dtype=np.int16)])
    raw.write_bytes(padded.astype("<i2").tobytes())
    conf = tmp_path / "asound.conf"
    conf.write_text(
        f'pcm.filecap {{ type file; slave.pcm "null"; file "/dev/null"; infile "{raw}"; '
        'format "raw" }\n'
        'pcm.testmic { type plug; slave { pcm "filecap"; format S16_LE; rate 16000; '
        'channels 1 } }\n', encoding="utf-8")
    return {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{conf}"}


def tone(dbfs_peak: float, seconds: float = 5.0, freq: float = 1000.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    amplitude = 32768.0 * 10 ** (dbfs_peak / 20.0)
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def diag(tmp_path: Path, *args: str, key: Optional[str] = None,
         env: Optional[dict[str, str]] = None, config: Optional[Path] = None,
         **config_values: Any) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("SOCA_") and k not in ("ALSA_CONFIG_PATH", "GPIOZERO_PIN_FACTORY")}
    clean.update(SDL_AUDIODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1")
    if key is not None:
        clean["SOCA_PRIVATE_KEY"] = key
    clean.update(env or {})
    path = config or write_config(tmp_path, **config_values)
    return subprocess.run([sys.executable, "-m", "soca_appliance.diagnostics",
                           "--config", str(path), *args],
                          env=clean, capture_output=True, text=True, timeout=60)


def report(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    doc = json.loads(proc.stdout)
    assert set(doc) == {"checks", "ok"}
    assert doc["ok"] == (proc.returncode == 0)
    assert doc["ok"] == all(c["status"] != "FAIL" for c in doc["checks"])
    for check in doc["checks"]:
        assert set(check) == {"name", "status", "detail", "hint", "figures"}
        assert check["status"] in ("PASS", "WARN", "FAIL", "SKIP")
    return {c["name"]: c for c in doc["checks"]}


def assert_clean(proc: subprocess.CompletedProcess[str], *secrets: str) -> None:
    for secret in secrets:
        assert secret not in proc.stdout and secret not in proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


# --- network and handshake -----------------------------------------------------------------

def test_handshake_passes_with_the_right_key(tmp_path: Path, sim: Simulator) -> None:
    proc = diag(tmp_path, "--only", "net", "--url", sim.url, "--json", key=KEY)
    assert_clean(proc, KEY)
    checks = report(proc)
    assert list(checks) == ["net.dns", "net.tcp", "net.tls", "net.handshake"]
    assert checks["net.dns"]["status"] == "PASS"
    assert checks["net.tcp"]["status"] == "PASS" and checks["net.tcp"]["figures"]["ms"] >= 0
    assert checks["net.tls"]["status"] == "SKIP"                   # ws:// to the simulator
    shake = checks["net.handshake"]
    assert shake["status"] == "PASS", shake
    assert 0 <= shake["figures"]["ready_ms"] <= shake["figures"]["stt_ready_ms"] < 5000
    assert proc.returncode == 0


def test_wrong_key_fails_with_the_servers_message(tmp_path: Path, sim: Simulator) -> None:
    proc = diag(tmp_path, "--only", "net.handshake", "--url", sim.url, "--json", key=WRONG)
    assert_clean(proc, WRONG)
    shake = report(proc)["net.handshake"]
    assert shake["status"] == "FAIL"
    assert "Invalid or expired token" in shake["detail"]
    assert "SOCA_PRIVATE_KEY" in shake["hint"]
    assert proc.returncode == 1


def test_key_file_is_used_and_never_printed(tmp_path: Path, sim: Simulator) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    proc = diag(tmp_path, "--only", "key,net.handshake", "--url", sim.url)
    assert_clean(proc, KEY)
    assert proc.returncode == 0, proc.stdout
    assert "not shown" in proc.stdout

    key_file.chmod(0o644)                                          # readable by everyone
    proc = diag(tmp_path, "--only", "key,net.handshake", "--url", sim.url, "--json")
    assert_clean(proc, KEY)
    checks = report(proc)
    assert checks["key"]["status"] == "FAIL"
    assert "readable by group or others" in checks["key"]["detail"]
    assert checks["net.handshake"]["status"] == "SKIP"
    assert proc.returncode == 1


def test_tcp_refused(tmp_path: Path) -> None:
    with socket.socket() as probe:                     # a free port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = diag(tmp_path, "--only", "net", "--url", f"ws://127.0.0.1:{port}", "--json", key=KEY)
    assert_clean(proc, KEY)
    checks = report(proc)
    assert checks["net.tcp"]["status"] == "FAIL"
    assert "refused" in checks["net.tcp"]["detail"]
    assert checks["net.handshake"]["status"] == "FAIL"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A loopback TLS listener with a self-signed certificate for 127.0.0.1 (5 days).

    An IP subjectAltName, not 'localhost': a minimal root (a container, a debootstrap) may
    have no /etc/hosts, and the test is about the certificate, not about name resolution.
    """
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "cert.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "5",
                    "-subj", "/CN=soca-diag-test", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], cert
    stop.set()
    thread.join(2)
    listener.close()


def test_tls_verifies_the_certificate(tmp_path: Path, tls_server: tuple[int, Path]) -> None:
    port, cert = tls_server
    url = f"wss://127.0.0.1:{port}/voice-ws"
    proc = diag(tmp_path, "--only", "net.tls", "--url", url, "--json", key=KEY)
    tls = report(proc)["net.tls"]
    assert tls["status"] == "FAIL" and "not trusted" in tls["detail"]
    assert "clock" in tls["hint"]

    proc = diag(tmp_path, "--only", "net.tls", "--url", url, "--json", key=KEY,
                ca_file=str(cert))
    tls = report(proc)["net.tls"]
    assert tls["status"] == "WARN", tls                       # valid, but expires in 5 days
    assert tls["figures"]["version"].startswith("TLS")
    assert 4 < tls["figures"]["cert_days_left"] <= 5
    assert tls["figures"]["ms"] >= 0


# --- microphone ----------------------------------------------------------------------------

def test_mic_level_of_a_tone(tmp_path: Path) -> None:
    env = raw_mic(tmp_path, tone(-20.0))
    proc = diag(tmp_path, "--only", "mic", "--json", "--no-interactive", env=env, mic="testmic")
    assert_clean(proc)
    checks = report(proc)
    device = checks["mic.device"]
    assert device["status"] == "PASS", device
    assert device["figures"]["device"] == "testmic"
    assert (device["figures"]["rate"], device["figures"]["channels"]) == (16000, 1)
    level = checks["mic.level"]
    assert level["status"] == "PASS", level
    assert level["figures"]["rms_dbfs"] == pytest.approx(-23.0, abs=1.0)   # sine: peak - 3 dB
    assert level["figures"]["peak_dbfs"] == pytest.approx(-20.0, abs=1.0)
    assert level["figures"]["clipped_share"] == 0
    assert level["figures"]["seconds"] == pytest.approx(3.0, abs=0.05)


def test_silent_mic_warns(tmp_path: Path) -> None:
    env = raw_mic(tmp_path, np.zeros(5 * RATE, dtype=np.int16))
    proc = diag(tmp_path, "--only", "mic.level", "--json", "--record-seconds", "1",
                "--no-interactive", env=env, mic="testmic")
    assert_clean(proc)
    level = report(proc)["mic.level"]
    assert level["status"] == "WARN" and "silent" in level["detail"]
    assert level["figures"]["rms_dbfs"] is None                  # -inf is not JSON
    assert "-inf dBFS" in level["detail"]
    assert proc.returncode == 0                                  # a WARN is not a failure


def test_clipping_mic_warns(tmp_path: Path) -> None:
    square = np.where(tone(0.0) >= 0, 32767, -32768).astype(np.int16)
    env = raw_mic(tmp_path, square)
    proc = diag(tmp_path, "--only", "mic.level", "--json", "--record-seconds", "1",
                "--no-interactive", env=env, mic="testmic")
    level = report(proc)["mic.level"]
    assert level["status"] == "WARN" and "clipping" in level["detail"]
    assert level["figures"]["clipped_share"] > 0.9
    assert "mic_gain" in level["hint"]


def test_missing_mic_fails_and_level_skips(tmp_path: Path) -> None:
    env = raw_mic(tmp_path, tone(-20.0))
    proc = diag(tmp_path, "--only", "mic", "--json", env=env, mic="no-such-mic")
    assert_clean(proc)
    checks = report(proc)
    assert checks["mic.device"]["status"] == "FAIL"
    assert "no input device matching 'no-such-mic'" in checks["mic.device"]["detail"]
    assert "testmic" in checks["mic.device"]["detail"]           # lists what there is
    assert checks["mic.level"]["status"] == "SKIP"
    assert proc.returncode == 1


# --- speaker and GPIO ----------------------------------------------------------------------

def test_speaker_plays_the_chime_on_sdl_dummy(tmp_path: Path) -> None:
    proc = diag(tmp_path, "--only", "speaker", "--json", "--no-interactive")
    speaker = report(proc)["speaker"]
    assert speaker["status"] == "PASS", speaker
    assert speaker["figures"]["driver"] == "dummy"
    assert speaker["figures"]["chime_ms"] > 50
    assert speaker["figures"]["played_ms"] >= speaker["figures"]["chime_ms"] * 0.8


def test_gpio_mock(tmp_path: Path) -> None:
    proc = diag(tmp_path, "--only", "gpio", "--gpio", "mock", "--json", "--no-interactive")
    checks = report(proc)
    leds = checks["gpio.leds"]
    assert leds["status"] == "PASS", leds
    assert "ready=GPIO22" in leds["detail"] and "error=GPIO25" in leds["detail"]
    assert leds["figures"]["states"] == ["connecting", "ready", "listening", "thinking",
                                         "speaking", "error"]
    assert checks["gpio.button"]["status"] == "SKIP"            # nobody to press it

    proc = diag(tmp_path, "--only", "gpio.button", "--gpio", "mock", "--json")
    button = report(proc)["gpio.button"]
    assert button["status"] == "PASS" and "GPIO17" in button["detail"]


def test_gpio_off_skips(tmp_path: Path) -> None:
    proc = diag(tmp_path, "--only", "gpio", "--json", gpio="off")
    assert {c["status"] for c in report(proc).values()} == {"SKIP"}


@pytest.mark.parametrize("value,status,words", [
    ("0x0", "PASS", "no under-voltage"),
    ("0x50000", "WARN", "under-voltage since boot, throttled since boot"),
    ("0x50005", "FAIL", "under-voltage now"),
])
def test_throttled_flags_are_decoded(tmp_path: Path, value: str, status: str,
                                     words: str) -> None:
    fake = tmp_path / "bin" / "vcgencmd"                 # stands in for the Pi's tool
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho throttled={value}\n")
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:{os.environ['PATH']}"}
    power = report(diag(tmp_path, "--only", "pi.power", "--json", env=env))["pi.power"]
    assert power["status"] == status and words in power["detail"]
    assert power["figures"]["throttled"] == value


# --- the whole run -------------------------------------------------------------------------

def test_full_run_prints_an_aligned_table(tmp_path: Path, sim: Simulator) -> None:
    env = raw_mic(tmp_path, tone(-20.0))
    proc = diag(tmp_path, "--url", sim.url, "--gpio", "mock", "--no-interactive",
                "--record-seconds", "1", key=KEY, env=env, mic="testmic")
    assert_clean(proc, KEY)
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"]
    column = lines[0].index("STATUS")
    rows = [line for line in lines[1:-1] if not line.lstrip().startswith("hint:")]
    assert [row.split()[0] for row in rows] == NAMES              # every check, in order
    statuses = {row.split()[0]: row[column:column + 4] for row in rows}
    for name in ("config", "key", "mic.device", "mic.level", "speaker", "gpio.leds",
                 "net.dns", "net.tcp", "net.handshake"):
        assert statuses[name] == "PASS", proc.stdout
    hints = [line for line in lines if line.lstrip().startswith("hint:")]
    assert all(line.index("hint:") == lines[0].index("DETAIL") for line in hints)
    failed = any(status == "FAIL" for status in statuses.values())
    assert proc.returncode == (1 if failed else 0)
    assert lines[-1].endswith("FAILED" if failed else "OK")


def test_bad_config_is_reported_not_raised(tmp_path: Path) -> None:
    proc = diag(tmp_path, "--only", "config,key,pi", "--json", key=KEY, frame_ms=30)
    assert_clean(proc, KEY)
    checks = report(proc)
    assert checks["config"]["status"] == "FAIL"
    assert "frame_ms must be 20, 40 or 50" in checks["config"]["detail"]
    assert checks["key"]["status"] == "PASS"                    # the rest still runs
    assert "pi.disk" in checks and proc.returncode == 1


def test_placeholder_agent_id_fails(tmp_path: Path) -> None:
    proc = diag(tmp_path, "--only", "config", "--json", agent_id="your-agent-id")
    config = report(proc)["config"]
    assert config["status"] == "FAIL" and "your-agent-id" in config["detail"]


def test_only_rejects_unknown_names(tmp_path: Path) -> None:
    proc = diag(tmp_path, "--only", "nothing")
    assert proc.returncode == 2 and "matches no check" in proc.stderr


def test_wrapper_script_runs_the_checkout(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parent.parent / "scripts" / "soca-diag"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCA_")}
    env.update(SOCA_PREFIX=str(tmp_path / "none"), PYTHON=sys.executable)
    proc = subprocess.run([str(script), "--version"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("soca-diag ")
