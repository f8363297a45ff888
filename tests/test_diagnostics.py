"""soca-diag run for real, as a subprocess: against the local simulator, a microphone made of
a raw file through ALSA's file plugin, SDL's dummy audio driver and gpiozero's mock pins.

Every test writes its own config file; the private key is given in the environment or in a
key file, and must never appear in what soca-diag prints.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pytest

from soca_appliance.diagnostics import NAMES, Context, build_parser, check_speaker
from soca_appliance.diagnostics import system as diag_system
from soca_appliance.diagnostics.audio import missing_library
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
        assert check["status"] in ("PASS", "WARN", "FAIL", "SKIP", "INFO")
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


# --- no library noise ------------------------------------------------------------------------

NOISE = ("ALSA lib", "Cannot connect to server socket", "jack", "PinFactoryFallback",
         "warnings.warn", "RuntimeWarning")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_no_native_library_noise(tmp_path: Path) -> None:
    """SDL's ALSA driver with no card, PortAudio probing, gpiozero with no pin factory set:
    every check that used to print a page of library noise runs, and nothing of it shows."""
    env = {"SDL_AUDIODRIVER": "alsa"}                    # GPIOZERO_PIN_FACTORY: unset (diag)
    for args in (["--json"], []):
        proc = diag(tmp_path, "--url", f"ws://127.0.0.1:{closed_port()}/voice-ws",
                    "--no-interactive", "--record-seconds", "0.2", *args, key=KEY, env=env)
        assert_clean(proc, KEY)
        for word in NOISE:
            assert word.lower() not in proc.stderr.lower(), proc.stderr
            assert word.lower() not in proc.stdout.lower(), proc.stdout
    checks = report(diag(tmp_path, "--only", "system.audio,speaker,gpio", "--json",
                         "--no-interactive", env=env))
    assert checks["system.audio"]["figures"]["sdl_audiodriver"] == "alsa"
    if not checks["system.audio"]["figures"]["alsa_cards"]:     # the noisy path really ran
        assert checks["speaker"]["status"] == "FAIL"
        assert "alsa" in checks["speaker"]["detail"].lower()


# --- speaker: pygame without its mixer ----------------------------------------------------

def context(tmp_path: Path, *args: str, **config_values: Any) -> Context:
    parsed = build_parser().parse_args(["--config", str(write_config(tmp_path, **config_values)),
                                        "--no-interactive", *args])
    return Context(parsed, {"SOCA_PRIVATE_KEY": KEY, "SDL_AUDIODRIVER": "dummy"})


# Run soca-diag with pygame.mixer's import failing the way it does when libgthread is missing:
# pygame's own __init__ then replaces the module with its MissingModule, as on a minimal root.
NO_MIXER = """
import importlib.abc, runpy, sys
class NoMixer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in ("pygame.mixer", "pygame.mixer_music"):
            raise ImportError("libgthread-2.0.so.0: cannot open shared object file: "
                              "No such file or directory")
        return None
sys.meta_path.insert(0, NoMixer())
sys.argv = ["soca-diag"] + sys.argv[1:]
runpy.run_module("soca_appliance.diagnostics", run_name="__main__")
"""


def test_speaker_names_the_missing_library(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SOCA_")}
    clean.update(SDL_AUDIODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1")
    proc = subprocess.run([sys.executable, "-c", NO_MIXER, "--config",
                           str(write_config(tmp_path)), "--only", "speaker", "--json"],
                          env=clean, capture_output=True, text=True, timeout=60)
    assert_clean(proc)
    assert "RuntimeWarning" not in proc.stderr and "NotImplementedError" not in proc.stderr
    speaker = report(proc)["speaker"]
    assert speaker["status"] == "FAIL"
    assert "libgthread-2.0.so.0" in speaker["detail"] and "crashed" not in speaker["detail"]
    assert speaker["hint"].startswith("sudo apt-get install libglib2.0-0")
    assert speaker["figures"]["apt_package"] == "libglib2.0-0"
    assert speaker["figures"]["missing_library"] == "libgthread-2.0.so.0"


def test_speaker_mixer_raising_not_implemented_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pygame

    def init(**_kwargs: Any) -> None:
        raise NotImplementedError("mixer module not available (ImportError: "
                                  "libpulse.so.0: cannot open shared object file)")
    monkeypatch.setattr(pygame.mixer, "init", init)
    result = check_speaker(context(tmp_path))
    assert result.status == "FAIL" and "libpulse.so.0" in result.detail
    assert "libpulse0" in result.hint


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a private mount namespace")
def test_speaker_without_libgthread_for_real(tmp_path: Path) -> None:
    """Hide the real libgthread from this one process tree (a bind mount in a private
    mount namespace): pygame's mixer then fails to load exactly as on a minimal root."""
    import ctypes.util
    found = [p for p in Path("/").glob("*lib*/**/libgthread-2.0.so.0")
             if "x86" in str(p) or "aarch64" in str(p) or "arm" in str(p)]
    if not found or ctypes.util.find_library("gthread-2.0") is None:
        pytest.skip("libgthread-2.0 is not installed here")
    empty = tmp_path / "empty.so"
    empty.write_bytes(b"")
    target = os.path.realpath(found[0])
    config = write_config(tmp_path)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SOCA_")}
    clean.update(SDL_AUDIODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1")
    script = (f"mount --bind {empty} {target} || exit 77; exec {sys.executable} -m "
              f"soca_appliance.diagnostics --config {config} --only speaker --json")
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], env=clean,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode == 77:
        pytest.skip(f"bind mount refused here: {proc.stderr.strip()}")
    assert_clean(proc)
    speaker = report(proc)["speaker"]
    assert speaker["status"] == "FAIL"
    assert "libgthread-2.0.so.0" in speaker["detail"], speaker
    assert speaker["figures"]["apt_package"] == "libglib2.0-0"


@pytest.mark.parametrize("reason, expected", [
    ("ImportError: libgthread-2.0.so.0: cannot open shared object file: No such file",
     ("libgthread-2.0.so.0", "libglib2.0-0")),
    ("ImportError: /lib/aarch64-linux-gnu/libglib-2.0.so.0: file too short",
     ("libglib-2.0.so.0", "libglib2.0-0")),
    ("ImportError: libfoo.so.3: cannot open shared object file", ("libfoo.so.3", "")),
    ("ImportError: No module named 'pygame.mixer'", ("", "")),
])
def test_missing_library(reason: str, expected: tuple[str, str]) -> None:
    assert missing_library(reason) == expected


# --- the system group ----------------------------------------------------------------------

def test_system_group_in_a_real_run(tmp_path: Path) -> None:
    proc = diag(tmp_path, "--only", "system", "--json", env={"SDL_AUDIODRIVER": "dummy"})
    assert_clean(proc)
    checks = report(proc)
    assert list(checks) == ["system.board", "system.os", "system.audio", "system.gpio",
                            "system.echo", "system.install"]
    assert {c["status"] for c in checks.values()} <= {"INFO", "WARN"}
    assert proc.returncode == 0                                 # facts never fail a run
    board = checks["system.board"]["figures"]
    model = Path("/proc/device-tree/model")
    assert board["raspberry_pi"] == (model.exists() and b"Raspberry Pi" in model.read_bytes())
    assert board["machine"] == platform.machine()
    osf = checks["system.os"]["figures"]
    assert osf["pretty_name"] == platform.freedesktop_os_release()["PRETTY_NAME"]
    assert osf["userland_bits"] == struct.calcsize("P") * 8
    assert f"{osf['userland_bits']}-bit userland" in checks["system.os"]["detail"]
    assert checks["system.audio"]["figures"]["sdl_audiodriver"] == "dummy"
    assert "SDL_AUDIODRIVER=dummy" in checks["system.audio"]["detail"]
    assert checks["system.echo"]["figures"]["policy"] in ("aec", "half", "full")

    text = diag(tmp_path, "--only", "system.os", env={"SDL_AUDIODRIVER": "dummy"})
    assert text.stdout.splitlines()[1].split()[:2] == ["system.os", "INFO"]
    assert text.stdout.splitlines()[-1] == "0 passed, 0 warning(s), 0 failed, 0 skipped, " \
        "1 info: OK"


def test_system_board_on_a_pi_and_off_it(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.5\0")
    monkeypatch.setattr(diag_system, "MODEL_PATH", str(model))
    result = diag_system.check_board(context(tmp_path))
    assert (result.status, result.detail) == ("INFO", "Raspberry Pi 4 Model B Rev 1.5")
    assert result.figures["raspberry_pi"] is True
    model.write_bytes(b"QEMU Virtual Machine\0")
    result = diag_system.check_board(context(tmp_path))
    assert result.detail.startswith("not a Raspberry Pi (QEMU Virtual Machine;")
    monkeypatch.setattr(diag_system, "MODEL_PATH", str(tmp_path / "absent"))
    result = diag_system.check_board(context(tmp_path))
    assert result.detail.startswith("not a Raspberry Pi (no device-tree model;")
    assert result.figures["raspberry_pi"] is False


def test_system_os_reads_os_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = tmp_path / "os-release"
    release.write_text('PRETTY_NAME="Raspbian GNU/Linux 12 (bookworm)"\nNAME="Raspbian '
                       'GNU/Linux"\nID=raspbian\nVERSION_CODENAME=bookworm\n# a comment\n')
    monkeypatch.setattr(diag_system, "OS_RELEASE_PATHS", (str(tmp_path / "no"), str(release)))
    result = diag_system.check_os(context(tmp_path))
    assert result.detail.startswith("Raspbian GNU/Linux 12 (bookworm), ")
    assert result.figures["id"] == "raspbian" and result.figures["version_codename"] == "bookworm"
    assert result.figures["userland_bits"] == struct.calcsize("P") * 8


def test_alsa_card_list_of_a_pi(tmp_path: Path) -> None:
    cards = tmp_path / "cards"
    cards.write_text(
        " 0 [Headphones     ]: bcm2835_headpho - bcm2835 Headphones\n"
        "                      bcm2835 Headphones\n"
        " 1 [Device         ]: USB-Audio - USB PnP Sound Device\n"
        "                      C-Media Electronics Inc. USB PnP Sound Device at usb-0000:01\n")
    assert diag_system.alsa_cards(str(cards)) == [
        {"index": 0, "id": "Headphones", "name": "bcm2835 Headphones"},
        {"index": 1, "id": "Device", "name": "USB PnP Sound Device"}]
    cards.write_text("--- no soundcards ---\n")
    assert diag_system.alsa_cards(str(cards)) == []
    assert diag_system.alsa_cards(str(tmp_path / "absent")) == []


@pytest.mark.parametrize("args, env, factory, words", [
    (["--gpio", "off"], {}, "", "gpio = off"),
    (["--gpio", "mock"], {}, "mock", "MockFactory"),
    (["--gpio", "auto"], {"GPIOZERO_PIN_FACTORY": "mock"}, "mock", "GPIOZERO_PIN_FACTORY=mock"),
])
def test_system_gpio_factory(tmp_path: Path, args: list[str], env: dict[str, str],
                             factory: str, words: str) -> None:
    checks = report(diag(tmp_path, "--only", "system.gpio", "--json", *args, env=env))
    gpio = checks["system.gpio"]
    assert gpio["status"] == "INFO" and gpio["figures"]["factory"] == factory
    assert words in gpio["detail"]


def test_system_gpio_factory_off_a_pi_names_what_gpiozero_tried(tmp_path: Path) -> None:
    if Path("/proc/device-tree/model").exists():
        pytest.skip("a device-tree machine: gpiozero may find a pin factory here")
    gpio = report(diag(tmp_path, "--only", "system.gpio", "--json"))["system.gpio"]
    assert gpio["status"] == "INFO" and gpio["figures"]["factory"] == ""
    assert "lgpio" in gpio["detail"] and "normal off a Pi" in gpio["detail"]
    assert any("lgpio" in line for line in gpio["figures"]["skipped"])


@pytest.mark.parametrize("duplex, canceller, status, policy, words", [
    ("half", "json", "INFO", "half", "no echo canceller used"),
    ("full", "json", "INFO", "full", "no echo canceller used"),
    ("auto", "json", "INFO", "aec", "aec (canceller importable: json"),
    ("auto", "no_such_canceller_mod", "INFO", "half",
     "half (no canceller: no_such_canceller_mod is not installed"),
    ("aec", "no_such_canceller_mod", "WARN", "half", "half (no canceller:"),
])
def test_system_echo_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, duplex: str,
                            canceller: str, status: str, policy: str, words: str) -> None:
    monkeypatch.setattr(diag_system, "ECHO_MODULE", "json")      # an echo module exists
    monkeypatch.setattr(diag_system, "CANCELLER_MODULE", canceller)
    ctx = context(tmp_path)
    ctx.cfg = dataclasses.replace(ctx.cfg, duplex=duplex)       # auto/aec may be newer keys
    result = diag_system.check_echo(ctx)
    assert (result.status, result.figures["policy"]) == (status, policy)
    assert words in result.detail and f"duplex = {duplex}" in result.detail


def test_system_echo_without_an_echo_module(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diag_system, "ECHO_MODULE", "soca_appliance.no_such_module")
    ctx = context(tmp_path)
    ctx.cfg = dataclasses.replace(ctx.cfg, duplex="auto")
    result = diag_system.check_echo(ctx)
    assert result.detail == "duplex = auto (this version has no echo canceller)"


def test_system_install_reads_install_sh_marker(tmp_path: Path) -> None:
    prefix = tmp_path / "opt"
    prefix.mkdir()
    (prefix / "INSTALL_PATH").write_text(
        "# Where soca-appliance's Python dependencies came from (written by install.sh).\n"
        "path=debian-packages\nreason=armhf: PyPI has no wheels there\narch=armhf\n"
        "python=3.11.2 /usr/bin/python3\ndate=2026-12-02T07:00:00Z\n"
        "numpy=debian-packages 1.24.2 python3-numpy\npygame=debian-packages 2.1.2 "
        "python3-pygame\npyaudio=debian-packages 0.2.13 python3-pyaudio\n"
        "soxr=source 0.3.7 built here\nwebsocket-client=wheels 1.9.2\n"
        "soca-appliance=source 0.1.0 this checkout\n")
    install = report(diag(tmp_path, "--only", "system.install", "--json",
                          env={"SOCA_PREFIX": str(prefix)}))["system.install"]
    assert install["status"] == "INFO"
    figures = install["figures"]
    assert (figures["path"], figures["arch"]) == ("debian-packages", "armhf")
    assert figures["packages"]["pygame"] == "debian-packages 2.1.2 python3-pygame"
    assert install["detail"].startswith("debian-packages (install.sh, ")
    assert "armhf: PyPI has no wheels there" in install["detail"]
    assert "debian-packages: numpy, pyaudio, pygame" in install["detail"]
    assert "source: soca-appliance, soxr" in install["detail"] and "1 wheels" in install["detail"]


def test_system_install_without_a_marker_looks_at_the_venv(tmp_path: Path) -> None:
    if (Path(diag_system.DEFAULT_PREFIX) / "INSTALL_PATH").exists() or \
            (Path(sys.prefix) / "INSTALL_PATH").exists():
        pytest.skip("this machine has an install.sh install")
    install = report(diag(tmp_path, "--only", "system.install", "--json",
                          env={"SOCA_PREFIX": str(tmp_path / "none")}))["system.install"]
    figures = install["figures"]
    assert install["detail"].startswith("no INSTALL_PATH file")
    assert figures["venv"] == (sys.prefix != sys.base_prefix)
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    if figures["venv"]:
        assert figures["system_site_packages"] == (
            "include-system-site-packages = true" in cfg.read_text().lower())
    pygame_dir = Path(__import__("pygame").__file__).parent
    expected = ("from Debian (dist-packages)" if "dist-packages" in str(pygame_dir) else
                "in the venv (site-packages)" if str(pygame_dir).startswith(sys.prefix) else
                None)
    if expected:
        assert figures["packages"]["pygame"] == expected
