"""The whole appliance against a real websocket server on 127.0.0.1.

The simulator plays the cloud agent; a WAV file is the microphone (paced in real time);
SDL's dummy driver decodes and plays the MP3 sentences. Events are read from the JSON
event log, the public interface monitoring tools use.
"""
from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path
from typing import Any, Optional

import pytest

from soca_appliance import config
from soca_appliance.appliance import Appliance
from soca_appliance.events import EventLog, setup_logging
from soca_appliance.simulator import Simulator
from soca_appliance.wavsource import WavSource

from conftest import ASSETS, wait_for

KEY = "sk-test-0123456789abcdef"


class Harness:
    def __init__(self, sim: Simulator, wav: Optional[Path] = None, **overrides: Any) -> None:
        values = dict(url=sim.url, agent_id="agent-1", lang="en", gpio="off", duplex="full",
                      backoff_initial=0.1, backoff_max=0.5, auth_retry=1.0,
                      log_format="json")
        values.update(overrides)
        self.cfg = config.load(None, env={}, overrides=values)
        self.out = io.StringIO()
        self.events = EventLog("json", stream=self.out)
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.events.subscribe(self._record)
        setup_logging(self.events, "info")
        self.source = WavSource(wav or ASSETS / "demo-en.wav")
        self.app = Appliance(self.cfg, events=self.events, source=self.source, private_key=KEY)

    def _record(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(record)

    def events_of(self, name: str, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records if r["event"] == name
                    and all(r.get(k) == v for k, v in match.items())]

    def wait(self, name: str, count: int = 1, timeout: float = 15.0, **match: Any):
        return wait_for(lambda: len(self.events_of(name, **match)) >= count and
                        self.events_of(name, **match), timeout)

    def ready(self) -> None:
        """Connected, and the speaker open: audio injected from now on can play."""
        self.wait("connected")
        self.wait("audio.output")

    def states(self) -> list[str]:
        return [r["state"] for r in self.events_of("state")]

    def __enter__(self) -> "Harness":
        self.app.start()
        # the CLI's main loop: expires stuck sentences once a second
        self._stop = threading.Event()
        self._runner = threading.Thread(target=self.app.run, args=(self._stop,),
                                        name="appliance-run", daemon=True)
        self._runner.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._runner.join(2)
        self.app.shutdown()


@pytest.fixture
def sim():
    with Simulator(expected_key=KEY) as server:
        yield server


def sentence_messages(seq: int, sentence_id: int, mp3: bytes, text: str, chunks: int = 4):
    size = -(-len(mp3) // chunks)
    parts = [mp3[i:i + size] for i in range(0, len(mp3), size)]
    msgs = [{"stepType": "sentence", "seq": seq, "sentenceId": sentence_id, "chunkIndex": i,
             "isLastChunk": False, "audioBase64": base64.b64encode(p).decode(),
             "audioMime": "audio/mp3", **({"contentStep": text} if i == 0 else {})}
            for i, p in enumerate(parts)]
    msgs.append({"stepType": "sentence", "seq": seq, "sentenceId": sentence_id,
                 "chunkIndex": len(parts), "isLastChunk": True, "audioBase64": None})
    return msgs


def manifest_turn(lang: str = "en", turn: int = 0) -> dict[str, Any]:
    return json.loads((ASSETS / "manifest.json").read_text())[lang][turn]


@pytest.mark.parametrize("progressive", [True, False])
def test_full_turn(sim: Simulator, progressive: bool) -> None:
    turn = manifest_turn()
    with Harness(sim, progressive_playback=progressive) as h:
        h.wait("connected")
        final = h.wait("transcript", final=True)[0]
        assert final["text"] == turn["you"]
        plays = h.wait("sentence.play", count=3, timeout=20)
        assert [p["text"] for p in plays] == [s["text"] for s in turn["agent"]]
        assert all(p["seq"] == 1 for p in plays)
        for play, sentence in zip(plays, turn["agent"]):
            size = (ASSETS / sentence["file"]).stat().st_size
            # progressive: it started with part of the sentence in hand
            assert 0 < play["bytes"] <= size if progressive else play["bytes"] == size
        h.wait("answer", seq=1)
        wait_for(lambda: h.app.idle(), 15)
        # events are written by the effects thread, after the state changed: wait for it
        wait_for(lambda: h.states()[-1] == "ready", 5, "the last state event")
        states = h.states()
        # connecting -> ready -> listening -> thinking -> speaking -> ready, in that order
        order = [states.index(s) for s in ("connecting", "ready", "listening", "thinking",
                                           "speaking")]
        assert order == sorted(order)
        assert states[-1] == "ready"
        assert h.events_of("sentence.stop") == []
        stats = sim.stats()
        assert stats["starts_ok"] == 1 and stats["frames_received"] > 50
        assert stats["last_start"]["sr"] == 16000 and stats["last_start"]["lang"] == "en"
        assert h.app.link.stats.frames_dropped_not_ready >= 0
    # the key never reaches the event log
    assert KEY not in h.out.getvalue()
    for line in h.out.getvalue().splitlines():
        assert "ts" in json.loads(line)


def test_server_barge_mid_sentence(sim: Simulator) -> None:
    turn = manifest_turn(turn=1)
    new_mp3 = (ASSETS / turn["agent"][0]["file"]).read_bytes()
    with Harness(sim) as h:
        first = h.wait("sentence.play", seq=1)[0]
        sim.inject({"type": "barge", "seq": 2, "reason": "content_partial"})
        stops = h.wait("sentence.stop", seq=1, reason="barge")
        assert stops[0]["sentence_id"] == first["sentence_id"]
        for msg in sentence_messages(2, 900, new_mp3, "new answer"):
            sim.inject(msg)
        # audio for the old seq that still arrives is dropped
        for msg in sentence_messages(1, 901, new_mp3, "stale"):
            sim.inject(msg)
        played = h.wait("sentence.play", seq=2)[0]
        assert played["text"] == "new answer"
        h.wait("barge", source="server", seq=2)
        assert all(p["seq"] == 2 for p in h.events_of("sentence.play")[1:])
        assert not h.events_of("sentence.play", text="stale")
        assert h.app.assembler.current_seq == 2


def test_reconnect_after_server_drops(sim: Simulator) -> None:
    with Harness(sim) as h:
        h.wait("connected")
        assert sim.drop_connections() == 1
        gone = h.wait("disconnected")[0]
        assert gone["retry_in"] <= 0.5 * 1.2
        h.wait("connected", count=2)
        wait_for(lambda: sim.stats()["starts_ok"] == 2)
        session_ids = [e["session_id"] for e in h.events_of("connected")]
        assert session_ids[0] != session_ids[1]         # a fresh UUID4 per connection
        assert h.states()[-1] in ("ready", "listening", "thinking", "speaking")


def test_auth_error_sets_error_state_and_retries_slowly() -> None:
    with Simulator(expected_key="another-key") as sim:
        with Harness(sim, auth_retry=30.0) as h:
            gone = h.wait("disconnected")[0]
            assert "Invalid or expired token" in gone["reason"]
            assert gone["retry_in"] >= 30.0 * 0.8            # slow, not the fast backoff
            wait_for(lambda: h.app.state == "error")
            assert "error" in h.states()
            assert sim.stats()["connections"] == 1            # no hammering
    assert KEY not in h.out.getvalue()


MALFORMED: list[Any] = [
    "this is not json",
    b"\x00\x01binary from the server",
    "[1, 2, 3]",
    '"a string"',
    "null",
    {"type": "no.such.type", "extra": 1},
    {"hello": "no type at all"},
    {"stepType": "sentence", "seq": "7", "sentenceId": 1, "chunkIndex": 0},
    {"stepType": "sentence", "seq": 1, "sentenceId": 1, "chunkIndex": -4,
     "isLastChunk": True, "audioBase64": None},
    {"stepType": "sentence", "seq": 1, "sentenceId": [1], "chunkIndex": 0},
    {"type": "barge", "seq": None},
    {"type": "stt.final", "text": 42},
    {"stepType": "final_answer", "seq": 1.5},
]


def test_malformed_messages_keep_it_running(sim: Simulator) -> None:
    mp3 = (ASSETS / manifest_turn()["agent"][0]["file"]).read_bytes()
    with Harness(sim, wav=ASSETS / "chime.wav") as h:     # no speech: the sim stays quiet
        h.ready()
        for message in MALFORMED:
            sim.inject(message)
        sim.inject('{"stepType":"sentence","seq":5,"sentenceId":1,"chunkIndex":0,'
                   '"isLastChunk":true,"audioBase64":"!!not base64!!"}')
        corrupt = base64.b64encode(b"ID3 this is not an mp3 " * 50).decode()
        sim.inject({"stepType": "sentence", "seq": 5, "sentenceId": 2, "chunkIndex": 0,
                    "isLastChunk": True, "audioBase64": corrupt})
        for msg in sentence_messages(5, 3, mp3, "still alive"):
            sim.inject(msg)
        h.wait("sentence.play", text="still alive")
        assert h.app.link.stats.connects == 1                 # never reconnected
        assert h.app.counters.bad_messages >= 10
        errors = [e["message"] for e in h.events_of("error")]
        assert any("not valid MP3" in m for m in errors)
        logs = [e["message"] for e in h.events_of("log")]
        assert any("invalid base64" in m for m in logs)
        assert any("not JSON" in m for m in logs)
        assert not h.events_of("sentence.play", sentence_id=1)
        assert not h.events_of("sentence.play", sentence_id=2)


def test_frames_before_stt_ready_are_dropped_not_queued(sim: Simulator) -> None:
    h = Harness(sim)
    h.app.start()
    try:
        h.wait("connected")
        # The WAV source starts with the link: whatever it captured before stt.ready was
        # counted as dropped; the server never receives more frames than were captured
        # after the handshake.
        wait_for(lambda: sim.stats()["frames_received"] > 10)
        captured = h.source.frames
        dropped = h.app.link.stats.frames_dropped_not_ready
        assert sim.stats()["frames_received"] <= captured - dropped
    finally:
        h.app.shutdown()


def test_progressive_sentence_cut_short_is_stopped_as_dropped(sim: Simulator) -> None:
    # The final answer is a summary that may overtake the last chunks (PROTOCOL.md): it
    # never cuts the sentence; a sentence whose chunks stopped coming expires instead.
    mp3 = (ASSETS / manifest_turn()["agent"][1]["file"]).read_bytes()
    with Harness(sim, wav=ASSETS / "chime.wav", progressive_playback=True,
                 sentence_timeout=1.0) as h:
        h.ready()
        messages = sentence_messages(4, 77, mp3, "half a sentence", chunks=6)
        for msg in messages[:3]:                    # ~1 s of audio, then nothing more
            sim.inject(msg)
        h.wait("sentence.play", sentence_id=77)
        sim.inject({"stepType": "final_answer", "seq": 4, "isFinal": True,
                    "fullResponse": {"answers": [{"output": "half a sentence"}]}})
        h.wait("answer", seq=4)
        stop = h.wait("sentence.stop", sentence_id=77)[0]
        assert stop["reason"] == "dropped"
        wait_for(lambda: h.app.idle(), 10)
        logs = [e["message"] for e in h.events_of("log")]
        assert any("no chunk for 1 s" in m for m in logs)
        assert not any("incomplete at the final answer" in m for m in logs)
