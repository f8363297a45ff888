"""The local voice-ws simulator, driven over real loopback sockets by websocket-client.

Speech timing in the simulator counts received audio frames, so the tests send the demo
recording faster than real time and wait on concrete messages (never on sleeps).
"""
from __future__ import annotations

import base64
import io
import json
import os
import struct
import time
import wave
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
import websocket

from conftest import wait_for

from soca_appliance.simulator import Simulator, main, mp3_duration, split_chunks
from soca_appliance.simulator.gate import GateConfig

ASSETS = Path(__file__).resolve().parent.parent / "device" / "soca_appliance" / "assets"
MANIFEST = json.loads((ASSETS / "manifest.json").read_text(encoding="utf-8"))
TIMEOUT = 5.0


def demo_pcm(lang: str = "en") -> bytes:
    with wave.open(str(ASSETS / f"demo-{lang}.wav"), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        return wav.readframes(wav.getnframes())


def first_utterance(lang: str = "en") -> bytes:
    """0.5 s lead-in, the first utterance, then silence: the demo's first 4 s."""
    return demo_pcm(lang)[: 4 * 32000]


def frames(pcm: bytes, size: int = 640) -> Iterator[bytes]:
    usable = len(pcm) - len(pcm) % size
    for off in range(0, usable, size):
        yield pcm[off:off + size]


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * 16000) * 2)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    server = Simulator(chunk_delay=0.002, sentence_delay=0.01)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mixer() -> Iterator[Any]:
    os.environ["SDL_AUDIODRIVER"] = "dummy"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    mine = not pygame.mixer.get_init()       # leave a mixer another test opened alone
    if mine:
        pygame.mixer.init(frequency=22050, size=-16, channels=1)
    yield pygame.mixer
    if mine:
        pygame.mixer.quit()


def start_msg(lang: str = "en", key: str = "k-123", field: str = "private_key",
              **extra: Any) -> str:
    obj = {"type": "start", field: key, "session_id": "sess-1", "agent_id": "agent-1",
           "lang": lang, "sr": 16000}
    obj.update(extra)
    return json.dumps(obj)


def recv(ws: websocket.WebSocket) -> dict[str, Any]:
    raw = ws.recv()
    assert isinstance(raw, str), f"expected a text frame, got {raw!r:.60}"
    return json.loads(raw)


def until(ws: websocket.WebSocket, pred: Callable[[dict[str, Any]], bool],
          limit: int = 500) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Receive until ``pred`` matches; return the match and everything before it."""
    seen: list[dict[str, Any]] = []
    for _ in range(limit):
        msg = recv(ws)
        if pred(msg):
            return msg, seen
        seen.append(msg)
    raise AssertionError(f"no matching message in {limit}: last {seen[-3:]}")


def close_code(ws: websocket.WebSocket) -> int:
    """Read frames until the server's close frame; return its code."""
    for _ in range(50):
        opcode, frame = ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:   # websocket-client answered it already
            ws.shutdown()                                # drop the socket: no close wait
            return struct.unpack("!H", frame.data[:2])[0]
    raise AssertionError("no close frame")


def connect(server: Simulator, lang: str = "en", **start: Any) -> websocket.WebSocket:
    ws = websocket.create_connection(server.url, timeout=TIMEOUT)
    ws.send(start_msg(lang, **start))
    assert recv(ws) == {"type": "ready", "session_id": "sess-1"}
    assert recv(ws) == {"type": "stt.ready"}
    return ws


def send_audio(ws: websocket.WebSocket, pcm: bytes, size: int = 640) -> int:
    count = 0
    for frame in frames(pcm, size):
        ws.send_binary(frame)
        count += 1
    return count


def collect_answer(ws: websocket.WebSocket, first: Optional[dict[str, Any]] = None
                   ) -> tuple[dict[str, Any], dict[Any, list[dict[str, Any]]]]:
    """Sentence chunks (by sentenceId, in arrival order) up to the final_answer."""
    by_sentence: dict[Any, list[dict[str, Any]]] = {}
    msg = first if first is not None else recv(ws)
    for _ in range(500):
        if msg.get("stepType") == "final_answer":
            return msg, by_sentence
        assert msg.get("stepType") == "sentence", msg
        by_sentence.setdefault(msg["sentenceId"], []).append(msg)
        msg = recv(ws)
    raise AssertionError("no final_answer")


# --- handshake and errors ----------------------------------------------------------------

def test_handshake_ready_then_stt_ready(sim: Simulator) -> None:
    ws = connect(sim)
    ws.close()
    assert sim.url.startswith("ws://127.0.0.1:")


def test_session_id_generated_when_missing(sim: Simulator) -> None:
    ws = websocket.create_connection(sim.url, timeout=TIMEOUT)
    obj = json.loads(start_msg())
    del obj["session_id"]
    ws.send(json.dumps(obj))
    ready = recv(ws)
    assert ready["type"] == "ready" and len(ready["session_id"]) == 36
    assert recv(ws) == {"type": "stt.ready"}
    ws.close()


def test_wrong_key_gets_auth_error_and_1008() -> None:
    with Simulator(expected_key="s3cret") as server:
        ws = websocket.create_connection(server.url, timeout=TIMEOUT)
        ws.send(start_msg(key="wrong"))
        assert recv(ws) == {"type": "error", "message": "Invalid or expired token"}
        assert close_code(ws) == 1008
        ws.close()
        connect(server, key="s3cret").close()
        stats = server.stats()
    assert stats["auth_failures"] == 1 and stats["starts_ok"] == 1


def test_empty_key_refused_even_without_expected_key(sim: Simulator) -> None:
    ws = websocket.create_connection(sim.url, timeout=TIMEOUT)
    ws.send(start_msg(key=""))
    assert recv(ws)["message"] == "Invalid or expired token"
    assert close_code(ws) == 1008


def test_key_field_is_configurable() -> None:
    with Simulator(key_field="token") as server:
        connect(server, field="token", key="abc").close()
        ws = websocket.create_connection(server.url, timeout=TIMEOUT)
        ws.send(start_msg(field="private_key"))          # not the field this server reads
        assert recv(ws)["message"] == "Invalid or expired token"
        assert close_code(ws) == 1008
        last = server.stats()["last_start"]
    assert last is not None and "token" not in last and last["agent_id"] == "agent-1"


@pytest.mark.parametrize("first", [
    b"\x00" * 640,
    "not json",
    json.dumps({"type": "stop"}),
    start_msg(lang="fr"),
    start_msg(sr=8000),
    json.dumps({"type": "start", "private_key": "k", "lang": "en", "sr": 16000}),  # no agent_id
])
def test_missing_or_bad_start_gets_error_and_1008(sim: Simulator, first: Any) -> None:
    ws = websocket.create_connection(sim.url, timeout=TIMEOUT)
    if isinstance(first, bytes):
        ws.send_binary(first)
    else:
        ws.send(first)
    assert recv(ws) == {"type": "error", "message": "must start with type=start"}
    assert close_code(ws) == 1008
    assert sim.stats()["starts_ok"] == 0


def test_bad_frame_size_and_unknown_text_keep_the_connection(sim: Simulator) -> None:
    ws = connect(sim)
    ws.send_binary(b"\x00" * 101)                        # PCM16 frames have an even length
    err = recv(ws)
    assert err["type"] == "error" and "101 bytes" in err["message"]
    ws.send(json.dumps({"type": "dance"}))
    err = recv(ws)
    assert err["type"] == "error" and "dance" in err["message"]
    ws.send("{broken")
    assert recv(ws)["type"] == "error"
    ws.send(json.dumps({"type": "barge"}))                 # still alive: it answers
    assert recv(ws) == {"type": "barge", "seq": 1, "reason": "manual"}
    ws.close()
    stats = sim.stats()
    assert stats["frames_rejected"] == 1 and stats["frames_received"] == 0


# --- a full turn -------------------------------------------------------------------------

def test_full_turn(sim: Simulator, mixer: Any) -> None:
    turn = MANIFEST["en"][0]
    ws = connect(sim)
    sent = send_audio(ws, first_utterance())
    final, before = until(ws, lambda m: m.get("type") == "stt.final")
    assert final["text"] == turn["you"]
    partials = [m["text"] for m in before if m.get("type") == "stt.partial"]
    assert len(partials) >= 3 and len(before) == len(partials)
    assert all(turn["you"].startswith(p) for p in partials)
    assert [len(p) for p in partials] == sorted(len(p) for p in partials)

    answer, sentences = collect_answer(ws)
    assert answer["seq"] == 1 and answer["isFinal"] is True
    assert answer["stepTitle"] == "Final Answer" and answer["audioBase64"] is None
    texts = [s["text"] for s in turn["agent"]]
    assert answer["fullResponse"]["answers"][0]["output"] == " ".join(texts)
    assert isinstance(answer["stepDuration"], (int, float)) and answer["stepDuration"] > 0
    assert len(sentences) == 3
    for (sid, chunks), spec in zip(sentences.items(), turn["agent"]):
        assert isinstance(sid, int)
        assert [c["chunkIndex"] for c in chunks] == list(range(len(chunks)))
        assert 5 <= len(chunks) <= 7                          # 4-6 audio chunks + null last
        assert all(c["seq"] == 1 and c["audioMime"] == "audio/mp3" for c in chunks)
        assert chunks[0]["contentStep"] == spec["text"]
        assert chunks[-1]["isLastChunk"] is True and chunks[-1]["audioBase64"] is None
        assert not any(c["isLastChunk"] for c in chunks[:-1])
        # joined, then decoded: the way the vendor page's client does it
        mp3 = base64.b64decode("".join(c["audioBase64"] for c in chunks[:-1]), validate=True)
        assert mp3 == (ASSETS / spec["file"]).read_bytes()
        sound = mixer.Sound(file=io.BytesIO(mp3))
        assert 1.0 < sound.get_length() < 3.5
    ws.close()
    stats = sim.stats()
    assert stats["frames_received"] == sent and stats["bytes_received"] == sent * 640
    assert stats["answers_sent"] == 1 and stats["finals_sent"] == 1
    assert stats["partials_sent"] == len(partials)


@pytest.mark.parametrize("size", [1280, 1600])
def test_larger_frames_give_the_same_final(sim: Simulator, size: int) -> None:
    ws = connect(sim, lang="id")
    send_audio(ws, first_utterance("id"), size)
    final, _ = until(ws, lambda m: m.get("type") == "stt.final")
    assert final["text"] == MANIFEST["id"][0]["you"]
    answer, sentences = collect_answer(ws)
    assert answer["seq"] == 1 and len(sentences) == 3
    ws.close()


def test_stop_finalizes_at_once(sim: Simulator) -> None:
    ws = connect(sim)
    pcm = demo_pcm()
    send_audio(ws, pcm[int(0.4 * 32000): int(1.6 * 32000)])   # speech, no trailing silence
    ws.send(json.dumps({"type": "stop"}))
    final, _ = until(ws, lambda m: m.get("type") == "stt.final")
    assert final["text"] == MANIFEST["en"][0]["you"]
    answer, _ = collect_answer(ws)
    assert answer["seq"] == 1
    ws.close()
    assert sim.stats()["stops_received"] == 1


def test_short_blip_gives_empty_final_and_no_answer(sim: Simulator) -> None:
    ws = connect(sim)
    pcm = demo_pcm()
    send_audio(ws, silence(0.2) + pcm[int(0.6 * 32000): int(0.68 * 32000)] + silence(0.8))
    final, _ = until(ws, lambda m: m.get("type") == "stt.final")
    assert final["text"] == ""
    ws.send(json.dumps({"type": "ping?"}))                  # a concrete marker reply
    marker = recv(ws)
    assert marker["type"] == "error"                         # nothing came in between
    # the next real utterance still gets the first turn and seq 1
    send_audio(ws, first_utterance())
    final, _ = until(ws, lambda m: m.get("type") == "stt.final")
    assert final["text"] == MANIFEST["en"][0]["you"]
    assert collect_answer(ws)[0]["seq"] == 1
    ws.close()


def test_silence_gives_nothing(sim: Simulator) -> None:
    ws = connect(sim)
    send_audio(ws, silence(2.0))
    ws.send(json.dumps({"type": "stop"}))
    ws.send(json.dumps({"type": "marker"}))
    assert recv(ws)["type"] == "error"
    ws.close()
    assert sim.stats()["finals_sent"] == 0


# --- barge-in ----------------------------------------------------------------------------

def test_speech_while_answering_barges(sim: Simulator) -> None:
    ws = connect(sim)
    send_audio(ws, first_utterance())
    until(ws, lambda m: m.get("type") == "stt.final")
    answer, _ = collect_answer(ws)
    assert answer["seq"] == 1
    # the answer is still "playing" on the client (about 6 s of MP3): speaking barges
    send_audio(ws, first_utterance())
    barge, before = until(ws, lambda m: m.get("type") == "barge")
    assert barge == {"type": "barge", "seq": 2, "reason": "content_partial"}
    assert before and all(m.get("type") == "stt.partial" for m in before)
    final, _ = until(ws, lambda m: m.get("type") == "stt.final")
    assert final["text"] == MANIFEST["en"][1]["you"]
    answer, sentences = collect_answer(ws)
    assert answer["seq"] == 2
    assert all(c["seq"] == 2 for chunks in sentences.values() for c in chunks)
    assert sentences[next(iter(sentences))][0]["contentStep"] == MANIFEST["en"][1]["agent"][0]["text"]
    ws.close()
    stats = sim.stats()
    assert stats["barges_sent"] == 1 and stats["answers_sent"] == 2
    # The barge is timed for the room's latency split: onset, then the barge, after at
    # least the gate's 0.6 s of voiced audio.
    [timed] = sim.speech_barges()
    assert timed["onset"] < timed["barge"] <= time.monotonic()
    assert timed["audio_s"] >= timed["voiced_s"] >= 0.6


def test_speech_mid_answer_cancels_the_rest() -> None:
    with Simulator(chunk_delay=0.05, sentence_delay=0.05) as server:
        ws = connect(server)
        send_audio(ws, first_utterance())
        until(ws, lambda m: m.get("type") == "stt.final")
        first, _ = until(ws, lambda m: m.get("stepType") == "sentence")
        assert first["seq"] == 1
        send_audio(ws, first_utterance())
        barge, before = until(ws, lambda m: m.get("type") == "barge")
        assert barge["seq"] == 2 and barge["reason"] == "content_partial"
        assert not any(m.get("stepType") == "final_answer" for m in before)
        answer, after = until(ws, lambda m: m.get("stepType") == "final_answer")
        assert answer["seq"] == 2
        assert all(m.get("seq", 2) == 2 for m in after), "seq 1 audio after the barge"
        ws.close()


def test_manual_barge(sim: Simulator) -> None:
    ws = connect(sim)
    ws.send(json.dumps({"type": "barge"}))
    assert recv(ws) == {"type": "barge", "seq": 1, "reason": "manual"}
    send_audio(ws, first_utterance())
    until(ws, lambda m: m.get("type") == "stt.final")
    first, _ = until(ws, lambda m: m.get("stepType") == "sentence")
    assert first["seq"] == 1                                  # the barge's seq is reused
    ws.send(json.dumps({"type": "barge"}))
    barge, _ = until(ws, lambda m: m.get("type") == "barge")
    assert barge == {"type": "barge", "seq": 2, "reason": "manual"}
    ws.send(json.dumps({"type": "marker"}))
    marker, between = until(ws, lambda m: m.get("type") == "error")
    assert between == [], "answer continued after the manual barge"
    ws.close()
    stats = sim.stats()
    assert stats["barges_received"] == 2 and stats["barges_sent"] == 2
    assert stats["answers_sent"] == 0


# --- hooks, stats, lifecycle, CLI ----------------------------------------------------------

def test_stats_counts(sim: Simulator) -> None:
    connect(sim).close()
    ws = connect(sim, lang="id")
    send_audio(ws, silence(0.2), 1280)
    ws.send(json.dumps({"type": "stop"}))
    ws.send(json.dumps({"type": "marker"}))
    until(ws, lambda m: m.get("type") == "error")
    ws.close()
    stats = sim.stats()
    assert stats["connections"] == 2 and stats["starts_ok"] == 2
    assert stats["frames_received"] == 5 and stats["bytes_received"] == 6400
    assert stats["stops_received"] == 1 and stats["auth_failures"] == 0
    assert stats["last_start"] == {"type": "start", "session_id": "sess-1",
                                   "agent_id": "agent-1", "lang": "id", "sr": 16000}


def test_inject_and_drop(sim: Simulator) -> None:
    ws = connect(sim)
    assert sim.inject({"type": "stt.partial", "text": "injected"}) == 1
    assert recv(ws) == {"type": "stt.partial", "text": "injected"}
    assert sim.inject('{"type":"raw"}') == 1
    assert recv(ws) == {"type": "raw"}
    assert sim.inject(b"\x01\x02") == 1
    assert ws.recv() == b"\x01\x02"
    assert sim.drop_connections(code=1011) == 1
    assert close_code(ws) == 1011
    ws.close()
    ws = connect(sim)
    assert sim.drop_connections() == 1
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
        ws.recv()
    ws.close()
    assert sim.stats()["connections"] == 2


def test_stop_closes_open_connections_quickly() -> None:
    server = Simulator()
    port = server.start()
    assert server.url == f"ws://127.0.0.1:{port}"
    ws = connect(server)
    server.stop()
    assert close_code(ws) == 1001
    ws.close()
    with pytest.raises((ConnectionError, OSError)):
        websocket.create_connection(server.url, timeout=1.0)


def test_helpers() -> None:
    data = (ASSETS / MANIFEST["en"][0]["agent"][0]["file"]).read_bytes()
    assert 1.5 < mp3_duration(data) < 2.6
    chunks = split_chunks(data)
    assert 4 <= len(chunks) <= 6 and b"".join(chunks) == data
    for lang in ("en", "id"):
        with wave.open(str(ASSETS / f"demo-{lang}.wav"), "rb") as wav:
            assert wav.getframerate() == 16000 and wav.getnframes() < 16.0 * 16000
    assert sum(p.stat().st_size for p in ASSETS.iterdir()) < 1_500_000


def test_main_refuses_remote_host(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    logger = logging.getLogger("soca.simulator")   # other tests may stop propagation
    logger.addHandler(caplog.handler)
    try:
        assert main(["--host", "0.0.0.0", "--port", "0"]) == 2
    finally:
        logger.removeHandler(caplog.handler)
    assert "loopback" in caplog.text


def test_cli_runs_until_ctrl_c_and_never_logs_the_key(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    env = dict(os.environ, SOCA_PRIVATE_KEY="very-secret-key-42")
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from soca_appliance.simulator import main; sys.exit(main(sys.argv[1:]))",
         "--port", "0", "--chunking", "slices"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines = []
        for _ in range(20):
            line = proc.stderr.readline()
            lines.append(line)
            if "simulator listening on" in line or not line:
                break
        url = lines[-1].rsplit(" ", 1)[-1].strip()
        assert url.startswith("ws://127.0.0.1:"), lines
        ws = websocket.create_connection(url, timeout=TIMEOUT)
        ws.send(start_msg(key="wrong"))
        assert recv(ws)["message"] == "Invalid or expired token"
        close_code(ws)
        ws = websocket.create_connection(url, timeout=TIMEOUT)
        ws.send(start_msg(key="very-secret-key-42"))
        assert recv(ws)["type"] == "ready"
        assert recv(ws)["type"] == "stt.ready"
        send_audio(ws, first_utterance())
        until(ws, lambda m: m.get("type") == "stt.final")
        _, sentences = collect_answer(ws)
        for chunks in sentences.values():                 # --chunking slices: each alone
            for c in chunks[:-1]:
                base64.b64decode(c["audioBase64"], validate=True)
        ws.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    text = "".join(lines) + err
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "very-secret-key-42" not in text
    assert "SOCA_PRIVATE_KEY" in text and "session sess-1 started" in text
    assert "chunking slices" in text


# --- liberal in what it accepts: any even-length frame (issue 10) --------------------------

@pytest.fixture
def sim_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The simulator's log lines (other tests may have stopped their propagation)."""
    import logging

    logger = logging.getLogger("soca.simulator")
    saved = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(saved)


@pytest.mark.parametrize("size", [8192, 4096, 1000, 642])
def test_any_even_frame_size_is_audio(sim: Simulator, size: int) -> None:
    """8192 bytes: the 4096-sample ScriptProcessor frames of the vendor page's own client."""
    ws = connect(sim)
    sent = send_audio(ws, first_utterance(), size)
    final, _ = until(ws, lambda m: m.get("type") == "stt.final")
    assert final["text"] == MANIFEST["en"][0]["you"]
    answer, sentences = collect_answer(ws)
    assert answer["seq"] == 1 and len(sentences) == 3
    ws.close()
    stats = sim.stats()
    assert stats["frames_rejected"] == 0
    assert stats["frames_received"] == sent and stats["bytes_received"] == sent * size


def test_odd_frame_is_a_logged_protocol_error(sim: Simulator,
                                              sim_log: pytest.LogCaptureFixture) -> None:
    import logging

    ws = connect(sim)
    ws.send_binary(b"\x00" * 8191)
    err = recv(ws)
    assert err["type"] == "error" and "8191 bytes" in err["message"]
    assert "even" in err["message"]
    ws.send(json.dumps({"type": "start", "private_key": "k"}))
    assert recv(ws) == {"type": "error", "message": "session already started"}
    ws.send("{broken")
    broken = recv(ws)["message"]
    ws.send_binary(b"\x00" * 8192)                         # still a session: audio is fine
    ws.send(json.dumps({"type": "marker"}))
    marker = recv(ws)["message"]
    ws.close()
    lines = [r.getMessage() for r in sim_log.records
             if r.name.startswith("soca.simulator") and r.levelno >= logging.WARNING]
    for sent in (err["message"], "session already started", broken, marker):
        assert any("sess-1" in line and sent in line for line in lines), (sent, lines)
    assert sim.stats()["frames_rejected"] == 1 and sim.stats()["frames_received"] == 1


def test_oversize_frame_closes_with_1009_and_is_logged(sim: Simulator,
                                                       sim_log: pytest.LogCaptureFixture) -> None:
    ws = connect(sim)
    ws.send_binary(b"\x00" * (64 * 1024 + 2))              # over 2 s of audio in one frame
    assert close_code(ws) == 1009
    wait_for(lambda: "1009" in sim_log.text, 5, "the simulator's log line about the 1009")
    assert "65536 bytes" in sim_log.text


def test_refused_start_is_logged_with_its_reason(sim: Simulator,
                                                  sim_log: pytest.LogCaptureFixture) -> None:
    ws = websocket.create_connection(sim.url, timeout=TIMEOUT)
    ws.send(start_msg(sr=8000))
    assert recv(ws)["message"] == "must start with type=start"
    assert close_code(ws) == 1008
    assert any("must start with type=start" in r.getMessage() and "sr" in r.getMessage()
               for r in sim_log.records), sim_log.text


# --- chunking: base64 text cut anywhere (default) or per slice ------------------------------

def sentence_chunk_texts(server: Simulator, lang: str = "en") -> list[list[str]]:
    """One turn's sentences as sent: the audioBase64 texts of each (null last chunk left off)."""
    ws = connect(server, lang=lang)
    send_audio(ws, first_utterance(lang))
    until(ws, lambda m: m.get("type") == "stt.final")
    _, sentences = collect_answer(ws)
    ws.close()
    out = []
    for chunks in sentences.values():
        assert chunks[-1]["isLastChunk"] is True and chunks[-1]["audioBase64"] is None
        out.append([c["audioBase64"] for c in chunks[:-1]])
    return out


def test_text_chunking_cuts_the_base64_text_anywhere(sim: Simulator) -> None:
    import binascii

    texts = sentence_chunk_texts(sim)
    for chunk_texts, spec in zip(texts, MANIFEST["en"][0]["agent"]):
        mp3 = (ASSETS / spec["file"]).read_bytes()
        assert base64.b64decode("".join(chunk_texts), validate=True) == mp3
        assert 4 <= len(chunk_texts) <= 6
        cuts = [sum(len(t) for t in chunk_texts[:i + 1]) for i in range(len(chunk_texts) - 1)]
        assert all(cut % 4 for cut in cuts), cuts               # no cut on a 4-char boundary
        assert not any("=" in t for t in chunk_texts[:-1])     # padding only at the very end
        with pytest.raises(binascii.Error):                    # a chunk alone is not base64
            base64.b64decode(chunk_texts[0], validate=True)
        assert len({len(t) for t in chunk_texts[:-1]}) > 1      # random lengths


def test_text_chunking_is_seeded() -> None:
    def lengths(seed: int) -> list[list[int]]:
        with Simulator(chunk_delay=0.0, sentence_delay=0.0, seed=seed) as server:
            return [[len(t) for t in s] for s in sentence_chunk_texts(server)]

    assert lengths(7) == lengths(7)
    assert lengths(7) != lengths(8)


def test_slices_chunking_encodes_each_slice_on_its_own() -> None:
    with Simulator(chunk_delay=0.0, sentence_delay=0.0, chunking="slices") as server:
        texts = sentence_chunk_texts(server)
    mid_padding = 0
    for chunk_texts, spec in zip(texts, MANIFEST["en"][0]["agent"]):
        mp3 = (ASSETS / spec["file"]).read_bytes()
        slices = [base64.b64decode(t, validate=True) for t in chunk_texts]
        assert slices == split_chunks(mp3)
        for piece, text in zip(slices, chunk_texts):
            assert text.endswith("=") == (len(piece) % 3 != 0)
        mid_padding += any("=" in t for t in chunk_texts[:-1])
    # the bundled answers do carry '=' mid-sentence in this mode: what atob() refuses
    assert mid_padding > 0


def test_unknown_chunking_is_refused() -> None:
    with pytest.raises(ValueError, match="chunking"):
        Simulator(chunking="bytes")
    with pytest.raises(SystemExit) as exc:
        main(["--chunking", "bytes", "--port", "0"])
    assert exc.value.code == 2


# --- the barge-in gate: meaningful speech, 1.5 s window, 0.8 s cooldown --------------------

def subframes(pcm: bytes, first: int, last: int) -> bytes:
    """Sub-frames first..last (inclusive, 20 ms each) of a recording."""
    return pcm[first * 640:(last + 1) * 640]


# In demo-en.wav the first utterance is voiced from sub-frame 25 (0.50 s) to 147 (2.96 s),
# with a short unvoiced gap at 55..57.

def answering(ws: websocket.WebSocket, seq: int = 1) -> None:
    """Speak the first utterance and wait until the answer's audio is arriving."""
    send_audio(ws, first_utterance())
    until(ws, lambda m: m.get("type") == "stt.final")
    until(ws, lambda m: m.get("stepType") == "sentence" and m.get("seq") == seq)


def no_barge_until_marker(ws: websocket.WebSocket) -> list[dict[str, Any]]:
    ws.send(json.dumps({"type": "marker"}))
    _, before = until(ws, lambda m: m.get("type") == "error" and "marker" in m["message"])
    assert not any(m.get("type") == "barge" for m in before), before
    return before


def test_short_speech_while_answering_does_not_barge(sim: Simulator) -> None:
    ws = connect(sim)
    answering(ws)
    pcm = demo_pcm()
    send_audio(ws, subframes(pcm, 25, 44))                 # 0.4 s of speech: under 0.6 s
    no_barge_until_marker(ws)
    send_audio(ws, subframes(pcm, 45, 54))                 # 0.6 s of voiced audio: barge
    barge, _ = until(ws, lambda m: m.get("type") == "barge")
    assert barge == {"type": "barge", "seq": 2, "reason": "content_partial"}
    ws.close()


def test_speech_that_gets_meaningful_after_the_window_does_not_barge(sim: Simulator) -> None:
    ws = connect(sim)
    answering(ws)
    pcm = demo_pcm()
    # bursts of 40 ms speech, 360 ms silence; webrtcvad says "speech" for about 0.12 s of
    # each (it holds on past the burst), so 0.6 s of voiced audio takes about 2 s
    sporadic = b"".join(subframes(pcm, f, f + 1) + silence(0.36) for f in range(60, 140, 4))
    send_audio(ws, sporadic)
    no_barge_until_marker(ws)
    stats = sim.stats()
    assert stats["barges_sent"] == 0 and stats["barges_too_late"] == 1
    ws.close()


def test_barges_are_at_least_the_cooldown_apart() -> None:
    # a frozen wall clock: only the audio received counts, so the test cannot race
    with Simulator(chunk_delay=0.002, sentence_delay=0.01,
                   gate=GateConfig(clock=lambda: 0.0)) as server:
        ws = connect(server)
        answering(ws)
        pcm = demo_pcm()
        send_audio(ws, subframes(pcm, 25, 57))             # 30 voiced: barge at sub-frame 54
        barge, _ = until(ws, lambda m: m.get("type") == "barge")
        assert barge["seq"] == 2
        ws.send(json.dumps({"type": "stop"}))               # the client's VAD ends it at once
        until(ws, lambda m: m.get("type") == "stt.final")
        until(ws, lambda m: m.get("stepType") == "sentence" and m.get("seq") == 2)
        # 0.7 s of speech right away: meaningful, but only 0.76 s of audio after the barge
        send_audio(ws, subframes(pcm, 58, 92))
        no_barge_until_marker(ws)
        assert server.stats()["barges_sent"] == 1
        send_audio(ws, subframes(pcm, 93, 100))            # the cooldown ends: now it barges
        barge, _ = until(ws, lambda m: m.get("type") == "barge")
        assert barge == {"type": "barge", "seq": 3, "reason": "content_partial"}
        ws.close()


# --- the pure parts: text cuts and the gate ------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from soca_appliance.simulator.chunking import cut_text, sentence_texts  # noqa: E402
from soca_appliance.simulator.gate import BargeGate, Verdict  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 20000), count=st.integers(1, 6), seed=st.integers(0, 2 ** 32))
def test_cut_text_pieces(n: int, count: int, seed: int) -> None:
    import random

    text = "".join("ABCD"[i % 4] for i in range(n))
    pieces = cut_text(text, count, random.Random(seed))
    assert "".join(pieces) == text
    assert len(pieces) == min(count, n) and all(pieces)
    if n >= 8 * count:
        cuts = [sum(len(p) for p in pieces[:i + 1]) for i in range(len(pieces) - 1)]
        assert all(c % 4 for c in cuts), cuts


@given(mp3=st.binary(min_size=1, max_size=20000), seed=st.integers(0, 1000))
def test_both_chunkings_carry_the_same_bytes(mp3: bytes, seed: int) -> None:
    import random

    texts = sentence_texts(mp3, "text", random.Random(seed))
    assert base64.b64decode("".join(texts), validate=True) == mp3
    slices = sentence_texts(mp3, "slices", random.Random(seed))
    assert b"".join(base64.b64decode(t, validate=True) for t in slices) == mp3
    assert len(texts) == len(slices)


def frozen_gate() -> BargeGate:
    return BargeGate(GateConfig(clock=lambda: 0.0))


def test_gate_needs_the_minimum_voiced_speech() -> None:
    gate = frozen_gate()
    gate.onset(100, 3)
    for frame in range(103, 129):
        gate.voiced()
        assert gate.evaluate(frame) is Verdict.WAIT          # 29 voiced: 0.58 s
    gate.voiced()
    assert gate.evaluate(129) is Verdict.BARGE               # 30 voiced: 0.6 s


def test_gate_window_closes_1_5_s_after_onset() -> None:
    gate = frozen_gate()
    gate.onset(0, 3)
    assert gate.evaluate(74) is Verdict.WAIT
    assert gate.evaluate(75) is Verdict.LATE                 # 1.5 s after onset, not enough
    gate.onset(200, 30)
    assert gate.evaluate(274) is Verdict.BARGE
    assert gate.evaluate(275) is Verdict.LATE


def test_gate_cooldown_counts_audio_or_wall_clock_whichever_is_more() -> None:
    now = [0.0]
    gate = BargeGate(GateConfig(clock=lambda: now[0]))
    gate.barged(100)
    gate.onset(105, 30)
    assert gate.evaluate(139) is Verdict.COOLDOWN            # 0.78 s of audio
    assert gate.evaluate(140) is Verdict.BARGE               # 0.80 s
    now[0] = 0.8                                             # a VAD-gated client: no audio
    assert gate.evaluate(106) is Verdict.BARGE               # in between, the clock counts
    assert GateConfig() == GateConfig(min_speech_s=0.6, window_s=1.5, cooldown_s=0.8)


# --- the appliance against both chunkings --------------------------------------------------

@pytest.mark.parametrize("chunking,progressive", [("text", True), ("slices", True)])
def test_appliance_hears_every_sentence_whole(chunking: str, progressive: bool) -> None:
    """The real appliance (WAV microphone in real time, SDL dummy speaker) against the
    simulator: every sentence of the answer plays, none is dropped, in either chunking.
    (Collect-then-play against the default text chunking: test_appliance's full turn.)"""
    import threading

    from conftest import wait_for
    from soca_appliance import config
    from soca_appliance.appliance import Appliance
    from soca_appliance.events import EventLog
    from soca_appliance.wavsource import WavSource

    key = "sk-test-chunking"
    records: list[dict[str, Any]] = []
    lock = threading.Lock()

    def record(r: dict[str, Any]) -> None:
        with lock:
            records.append(r)

    def of(name: str) -> list[dict[str, Any]]:
        with lock:
            return [r for r in records if r["event"] == name]

    turn = MANIFEST["en"][0]
    with Simulator(expected_key=key, chunking=chunking) as server:
        cfg = config.load(None, env={}, overrides=dict(
            url=server.url, agent_id="agent-1", lang="en", gpio="off", duplex="full",
            log_format="json", progressive_playback=progressive))
        events = EventLog("json", stream=io.StringIO())
        events.subscribe(record)
        app = Appliance(cfg, events=events, source=WavSource(ASSETS / "demo-en.wav"),
                        private_key=key)
        app.start()
        try:
            plays = wait_for(lambda: len(of("sentence.play")) >= 3 and of("sentence.play"),
                             20, "three sentences playing")
            wait_for(lambda: of("answer"), 10, "the final answer")
            wait_for(app.idle, 15, "the appliance idle after the answer")
            dropped = app.assembler.dropped_sentences
        finally:
            app.shutdown()
    assert [p["text"] for p in plays[:3]] == [s["text"] for s in turn["agent"]]
    assert dropped == 0
    assert not [s for s in of("sentence.stop") if s["reason"] == "dropped"]
    for play, spec in zip(plays, turn["agent"]):
        size = (ASSETS / spec["file"]).stat().st_size
        assert 0 < play["bytes"] <= size if progressive else play["bytes"] == size
