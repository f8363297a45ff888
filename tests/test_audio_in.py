"""The audio edges: a real PyAudio capture through ALSA's file plugin (no sound card),
resampling, device loss, VAD gating on the wire, and the half/full duplex echo policy."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from soca_appliance import config
from soca_appliance import microphone as mic_mod
from soca_appliance.appliance import Appliance
from soca_appliance.events import EventLog
from soca_appliance.framing import Frame
from soca_appliance.link import Link, LinkSettings
from soca_appliance.microphone import Microphone
from soca_appliance.wavsource import WavSource

from conftest import ASSETS, wait_for
from servers import RecordingServer
from test_appliance import sentence_messages

RATE = 16000


def tone(freq: float, seconds: float, rate: int, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def pcm16(x: np.ndarray) -> bytes:
    return np.clip(np.rint(x * 32767), -32768, 32767).astype("<i2").tobytes()


@pytest.fixture
def alsa_mic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Returns make(raw_bytes, rate, channels) -> device name, through ALSA's file plugin."""
    def make(raw: bytes, rate: int, channels: int) -> str:
        infile = tmp_path / f"in-{rate}-{channels}.raw"
        # After the end of the file the plugin repeats its last 40 ms: end on silence.
        infile.write_bytes(raw + bytes(rate * channels * 2))
        conf = tmp_path / "asound.conf"
        conf.write_text(
            f'pcm.filecap {{ type file; slave.pcm "null"; file "/dev/null"; '
            f'infile "{infile}"; format "raw" }}\n'
            f'pcm.testmic {{ type plug; slave {{ pcm "filecap"; format S16_LE; '
            f'rate {rate}; channels {channels} }} }}\n')
        monkeypatch.setenv("ALSA_CONFIG_PATH", f"/usr/share/alsa/alsa.conf:{conf}")
        return "testmic"
    return make


def capture_through_link(device: str, seconds: float, rate: int = 0, channels: int = 0) -> bytes:
    """Mic -> link -> a real websocket server; returns the PCM the server received."""
    with RecordingServer() as server:
        link = Link(LinkSettings(url=server.url, agent_id="a", lang="en", private_key="k",
                                 queue_frames=100000))
        link.start()
        wait_for(lambda: link.streaming)
        mic = Microphone(device, rate=rate, channels=channels)
        mic.start(link.send_audio)
        try:
            wanted = int(seconds * RATE * 2)
            wait_for(lambda: sum(len(f) for _, f in server.frames()) >= wanted, timeout=20)
        finally:
            mic.stop()
            link.close()
        assert all(len(f) == 640 for _, f in server.frames())
        assert link.stats.frames_dropped_full == 0
        return b"".join(f for _, f in server.frames())


def test_pyaudio_16k_mono_reaches_the_socket_byte_exact(alsa_mic) -> None:
    rng = np.random.default_rng(1)
    original = pcm16(rng.uniform(-0.5, 0.5, RATE))        # 1 s of noise: any slip shows
    device = alsa_mic(original, RATE, 1)
    received = capture_through_link(device, 1.2)
    assert received[:len(original)] == original


@pytest.mark.parametrize("channels", [1, 2])
def test_pyaudio_48k_is_resampled_with_anti_alias(alsa_mic, channels: int) -> None:
    rate = 48000
    low = tone(1000, 1.0, rate)
    high = tone(12000, 1.0, rate)
    signal = np.concatenate([low, np.zeros(rate // 2), high])
    interleaved = np.repeat(signal, channels)
    device = alsa_mic(pcm16(interleaved), rate, channels)
    received = np.frombuffer(capture_through_link(device, 2.5, rate, channels), "<i2") / 32768.0
    part1 = received[int(0.2 * RATE):int(0.8 * RATE)]
    spectrum = np.abs(np.fft.rfft(part1 * np.hanning(len(part1))))
    peak_hz = np.argmax(spectrum) * RATE / len(part1)
    assert abs(peak_hz - 1000) < 10
    rms_low = np.sqrt(np.mean(part1 ** 2))
    assert abs(20 * np.log10(rms_low / (0.3 / np.sqrt(2)))) < 0.5     # level kept
    part3 = received[int(1.7 * RATE):int(2.3 * RATE)]
    rms_high = np.sqrt(np.mean(part3 ** 2)) + 1e-12
    assert 20 * np.log10(rms_high / (0.3 / np.sqrt(2))) <= -40.0


class _FlakyPyAudio:
    """The real PyAudio, except that the first stream it opens misbehaves after 10
    callbacks: ``mode`` "abort" ends it as a host error does (the USB mic was pulled),
    "stall" keeps it open but delivers nothing more (a mic whose reads block on unplug)."""

    def __init__(self, real: Any, mode: str) -> None:
        self.pa, self.mode, self.streams = real, mode, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pa, name)

    def open(self, **kwargs: Any) -> Any:
        self.streams += 1
        callback = kwargs["stream_callback"]
        if self.streams == 1:
            calls = {"n": 0}

            def flaky(data: bytes, count: int, info: Any, status: int) -> tuple[None, int]:
                calls["n"] += 1
                if calls["n"] <= 10:
                    return callback(data, count, info, status)
                if self.mode == "abort":
                    return None, 2                  # paAbort: the stream ends
                time.sleep(0.005)                   # nothing comes from the device
                return None, 0
            kwargs["stream_callback"] = flaky
        return self.pa.open(**kwargs)


@pytest.mark.parametrize("mode", ["abort", "stall"])
def test_device_loss_reopens_and_streaming_resumes(alsa_mic, monkeypatch, mode: str) -> None:
    device = alsa_mic(pcm16(tone(500, 2.0, RATE)), RATE, 1)
    real_open = mic_mod.open_pyaudio
    made: list[_FlakyPyAudio] = []

    def counting_open() -> Any:
        made.append(_FlakyPyAudio(real_open(), mode))
        return made[-1]

    monkeypatch.setattr(mic_mod, "open_pyaudio", counting_open)
    errors: list[str] = []
    recovered = threading.Event()
    frames: list[Frame] = []
    mic = Microphone(device, on_error=errors.append, on_recover=recovered.set,
                     retry_initial=0.05, stall_s=0.5)
    mic.start(frames.append)
    try:
        assert recovered.wait(5)
        count = len(frames)
        wait_for(lambda: len(frames) > count + 20, what="frames after the reopen")
    finally:
        mic.stop()
    assert len(errors) == 1, errors
    assert ("stalled" if mode == "stall" else "stream stopped") in errors[0]
    assert mic.reopens == 1 and mic.stalls == (mode == "stall")
    # The devices did not change: the same PyAudio instance, a second stream.
    assert len(made) == 1 and made[0].streams == 2


def test_missing_mic_is_reported_once_and_retried(alsa_mic) -> None:
    alsa_mic(pcm16(tone(500, 0.5, RATE)), RATE, 1)
    errors: list[str] = []
    mic = Microphone("no-such-usb-mic", on_error=errors.append, retry_initial=0.02,
                     retry_max=0.05)
    mic.start(lambda frame: None)
    try:
        wait_for(lambda: mic.reopens >= 3)
    finally:
        mic.stop()
    assert len(errors) == 1
    assert "no input device matching 'no-such-usb-mic'" in errors[0]
    assert "testmic" in errors[0]           # it says which inputs exist


# --- the appliance on the wire ---------------------------------------------------------

def _app(server: RecordingServer, wav: Path, **overrides: Any) -> tuple[Appliance, list]:
    values = dict(url=server.url, agent_id="a", lang="en", gpio="off", log_format="json")
    values.update(overrides)
    cfg = config.load(None, env={}, overrides=values)
    events = EventLog("json", stream=io.StringIO())
    records: list[dict[str, Any]] = []
    events.subscribe(records.append)
    return Appliance(cfg, events, WavSource(wav), "k"), records


def _write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(pcm16(samples))
    return path


def _speech(text: str, tmp_path: Path) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    out = tmp_path / "say.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(out), text], check=True)
    with wave.open(str(out)) as wav:
        rate = wav.getframerate()
        x = np.frombuffer(wav.readframes(wav.getnframes()), "<i2") / 32768.0
    return soxr.resample(x, rate, RATE)


@pytest.mark.parametrize("duplex", ["half", "full"])
def test_duplex_policy(tmp_path: Path, duplex: str) -> None:
    wav = _write_wav(tmp_path / "hum.wav", tone(300, 12.0, RATE, 0.2))    # never silent
    mp3 = (ASSETS / "answer-en-1-2.mp3").read_bytes()
    with RecordingServer() as server:
        app, records = _app(server, wav, duplex=duplex)
        app.start()
        try:
            wait_for(lambda: len(server.frames()) > 10)
            for msg in sentence_messages(1, 1, mp3, "echo test"):
                server.send(msg)
            server.send({"stepType": "final_answer", "seq": 1, "isFinal": True,
                         "fullResponse": {"answers": [{"output": "echo test"}]}})
            wait_for(lambda: any(r["event"] == "sentence.play" for r in records))
            start = len(server.frames())
            wait_for(lambda: app.state == "ready" and app.player.quiet_for() > 0.5, 15)
            during = server.frames()[start + 5:]
        finally:
            app.shutdown()
    loud = [np.abs(np.frombuffer(f, "<i2")).max() > 1000 for _, f in during]
    assert len(during) > 50
    if duplex == "half":
        # every frame while the sentence played (and its settle tail) is silence; then the
        # mic is live again
        silent_run = loud.index(True)
        assert silent_run >= 50 and all(loud[silent_run:])
        assert app.counters.frames_silenced >= 50
    else:
        assert all(loud)
        assert app.counters.frames_silenced == 0


def test_vad_gates_frames_and_sends_stop_once_per_utterance(tmp_path: Path) -> None:
    one = _speech("Turn on the kitchen lights please", tmp_path)
    two = _speech("What time is it", tmp_path)
    gap = np.zeros(int(1.5 * RATE))
    signal = np.concatenate([np.zeros(int(0.6 * RATE)), one, gap, two, gap])
    wav = _write_wav(tmp_path / "two.wav", signal)
    with RecordingServer() as server:
        app, records = _app(server, wav, vad=True)
        app.start()
        try:
            wait_for(lambda: sum(t.get("type") == "stop" for t in server.texts()) == 2, 20)
            sent = len(server.frames())
        finally:
            app.shutdown()
    assert [t["type"] for t in server.texts()] == ["stop", "stop"]
    total = len(signal) // 320
    assert sent < total * 0.9                  # silence between utterances was not sent
    assert app.gate is not None and app.gate.utterances == 2
    assert sum(1 for r in records if r["event"] == "state" and r["state"] == "listening") >= 1


def test_shutdown_closes_the_link_with_1000(tmp_path: Path) -> None:
    wav = _write_wav(tmp_path / "quiet.wav", np.zeros(RATE))
    with RecordingServer() as server:
        app, records = _app(server, wav)
        app.start()
        try:
            wait_for(lambda: len(server.frames()) > 5)
        finally:
            app.shutdown()
        wait_for(lambda: server.close_codes)
    assert server.close_codes == [1000]


def test_devices_lists_inputs_with_native_formats_and_no_alsa_noise(alsa_mic) -> None:
    alsa_mic(pcm16(tone(500, 0.2, 48000)), 48000, 2)
    proc = subprocess.run([sys.executable, "-m", "soca_appliance", "devices"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.endswith("testmic"))
    assert "48000" in line
    assert "ALSA lib" not in proc.stderr and "Traceback" not in proc.stderr


def test_muting_mid_utterance_ends_it_with_stop(tmp_path: Path) -> None:
    speech = _speech("Please turn the music down a little", tmp_path)
    wav = _write_wav(tmp_path / "talk.wav",
                     np.concatenate([np.zeros(int(0.6 * RATE)), speech, np.zeros(4 * RATE)]))
    with RecordingServer() as server:
        app, records = _app(server, wav, vad=True)
        app.start()
        try:
            wait_for(lambda: app.gate is not None and app.gate.active, 10)
            app.set_muted(True)
            wait_for(lambda: [t["type"] for t in server.texts()] == ["stop"])
            # frames already in the outbox when muting may still land: count from 200 ms on
            wait_for(lambda: app.counters.frames_muted > 10)
            sent = len(server.frames())
            wait_for(lambda: app.counters.frames_muted > 50)
            assert len(server.frames()) == sent          # nothing reaches the server muted
        finally:
            app.shutdown()
    assert [t["type"] for t in server.texts()] == ["stop"]
    assert [r["muted"] for r in records if r["event"] == "mute"] == [True]
