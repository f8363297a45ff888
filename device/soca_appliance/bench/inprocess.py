"""The appliance in this process: barges, button presses and sentence starts timestamped
in the thread that handles them."""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import os
import random
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Optional

from .common import ASSETS, BenchError, KEY, SEQ_BASE, SPEECH_WAV, _NullStream
from .probe import control_probe


class InProcess:
    """The real :class:`Appliance` with listeners: the Harness of tests/test_appliance.py."""

    def __init__(self, sim: Any, wav: Path, **overrides: Any) -> None:
        from .. import config
        from ..appliance import Appliance
        from ..events import EventLog, setup_logging
        from ..protocol import Barge, SentenceChunk, frame_bytes
        from ..wavsource import WavSource

        values: dict[str, Any] = dict(url=sim.url, agent_id="bench-agent", lang="en",
                                      gpio="mock", log_format="json", backoff_initial=0.1,
                                      backoff_max=0.5)
        extra = {k: overrides.pop(k) for k in list(overrides) if k not in config.known_keys()}
        values.update(overrides)
        cfg = config.load(Path(os.devnull), env={}, overrides=values)
        if extra:                       # keys config.load does not know (yet): set directly
            cfg = dataclasses.replace(cfg, **extra)
        self.cfg = cfg
        self._cond = threading.Condition()
        self.records: list[tuple[float, dict[str, Any]]] = []
        self.barge_rx: dict[int, float] = {}                 # seq -> link thread handles it
        self.first_chunk: dict[tuple[int, Any], float] = {}  # (seq, id) -> first chunk handled
        self.last_chunk: dict[tuple[int, Any], tuple[float, bool]] = {}   # -> (t, player busy)
        self.send_times: list[float] = []
        self.events = EventLog("json", stream=_NullStream())
        self.events.subscribe(self._listen)
        setup_logging(self.events, "info")
        self.source = WavSource(wav, frame_bytes(cfg.frame_ms))
        self.app = Appliance(cfg, events=self.events, source=self.source, private_key=KEY)
        link = self.app.link
        handle = link.cb.on_message
        player = self.app.player

        def on_message(msg: Any) -> None:
            if isinstance(msg, SentenceChunk):
                key = (msg.seq, msg.sentence_id)
                if msg.is_last:
                    busy = player.busy
                    self.last_chunk[key] = (time.monotonic(), busy)
                self.first_chunk.setdefault(key, time.monotonic())
            elif isinstance(msg, Barge):
                self.barge_rx.setdefault(msg.seq, time.monotonic())
            handle(msg)

        link.cb.on_message = on_message
        # The link appends a latency right after each socket write: note when, too.
        send_times = self.send_times

        class _Latencies(deque):
            def append(self, value: float) -> None:     # noqa: D102 - the link thread
                send_times.append(time.monotonic())
                super().append(value)

        link.stats.latencies = _Latencies(link.stats.latencies, link.stats.latencies.maxlen)

    def _listen(self, record: dict[str, Any]) -> None:
        t = time.monotonic()
        with self._cond:
            self.records.append((t, record))
            self._cond.notify_all()

    def wait(self, event: str, timeout: float = 15.0, since: int = 0,
             **match: Any) -> tuple[float, dict[str, Any]]:
        """The first event named ``event`` matching ``match`` at index ``since`` or later."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, rec in self.records[since:]:
                    if rec["event"] == event and all(rec.get(k) == v for k, v in match.items()):
                        return t, rec
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"no {event} {match or ''} within {timeout:g} s")
                self._cond.wait(left)

    def mark(self) -> int:
        with self._cond:
            return len(self.records)

    def all(self, event: str) -> list[tuple[float, dict[str, Any]]]:
        with self._cond:
            return [(t, r) for t, r in self.records if r["event"] == event]

    def __enter__(self) -> "InProcess":
        self.app.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.app.shutdown()


@contextlib.contextmanager
def _quiet_soca_logging() -> Iterator[None]:
    """Give the ``soca`` logger back as it was (the in-process phases reconfigure it)."""
    root = logging.getLogger("soca")
    saved = (list(root.handlers), root.level, root.propagate)
    try:
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        root.propagate = saved[2]


@contextlib.contextmanager
def arrivals(sink: list[float]) -> Iterator[bool]:
    """Note when each audio frame reaches the simulator's session handler.

    The simulator has no hook for this yet: wrap its session's ``audio`` coroutine for the
    duration (the bench process only), and say so when that is not possible.
    """
    from .. import simulator
    cls = getattr(simulator, "_Session", None)
    original = getattr(cls, "audio", None)
    if original is None:
        yield False
        return

    async def audio(self: Any, data: bytes) -> None:
        sink.append(time.monotonic())
        await original(self, data)

    cls.audio = audio
    try:
        yield True
    finally:
        cls.audio = original


def _sentence_messages(seq: int, sentence_id: int, mp3: bytes, text: str,
                       chunks: Optional[list[bytes]] = None) -> list[dict[str, Any]]:
    """A sentence as the server sends it: chunks, then an empty last chunk."""
    from ..simulator import split_chunks
    parts = chunks if chunks is not None else split_chunks(mp3)
    msgs: list[dict[str, Any]] = [
        {"stepType": "sentence", "seq": seq, "sentenceId": sentence_id, "chunkIndex": i,
         "isLastChunk": False, "audioBase64": base64.b64encode(p).decode("ascii"),
         "audioMime": "audio/mp3", **({"contentStep": text} if i == 0 else {})}
        for i, p in enumerate(parts)]
    msgs.append({"stepType": "sentence", "seq": seq, "sentenceId": sentence_id,
                 "chunkIndex": len(parts), "isLastChunk": True, "audioBase64": None,
                 "audioMime": "audio/mp3"})
    return msgs


def _answer_mp3s() -> list[bytes]:
    return [p.read_bytes() for p in sorted(ASSETS.glob("answer-en-*.mp3"))]


def run_in_process(barges: int, presses: int, rng: random.Random,
                   frame_ms: int = 20) -> dict[str, Any]:
    """One conversation in this process: a spoken turn, then barges and button presses,
    with the control probe running next to it."""
    mp3s = _answer_mp3s()
    out: dict[str, Any] = {}
    with control_probe(600) as control:
        _conversation(out, barges, presses, rng, mp3s, frame_ms)
    out["control"] = control
    return out


def _conversation(out: dict[str, Any], barges: int, presses: int, rng: random.Random,
                  mp3s: list[bytes], frame_ms: int) -> None:
    from ..simulator import Simulator
    with _quiet_soca_logging(), Simulator(expected_key=KEY) as sim, \
            InProcess(sim, SPEECH_WAV, frame_ms=frame_ms,
                      # "sentence complete -> audio starts" is the collect-then-play path;
                      # progressive playback is measured by --compare-progressive
                      progressive_playback=False) as h:
        app = h.app
        _, audio = h.wait("audio.output", timeout=10)
        out["mixer"] = {k: audio[k] for k in ("frequency", "buffer", "buffer_ms", "driver")}
        h.wait("connected", timeout=15)
        # The simulator answers the first spoken question (seq 1).
        _, first = h.wait("sentence.play", timeout=30, seq=1)
        seq, sid = 1, first["sentence_id"]
        server, button = [], []
        next_id = 10_000
        kinds = ["server"] * barges + ["button"] * presses
        rng.shuffle(kinds)
        for kind in kinds:
            time.sleep(rng.uniform(0.05, 0.35))       # somewhere in the playing sentence
            mark = h.mark()
            if kind == "server":
                new_seq = max(seq, SEQ_BASE) + 1
                if sim.inject({"type": "barge", "seq": new_seq, "reason": "bench"}) < 1:
                    raise BenchError("the appliance is not connected to the simulator")
                t_stop, _ = h.wait("sentence.stop", since=mark, seq=seq, sentence_id=sid,
                                   reason="barge")
                t_rx = h.barge_rx.get(new_seq)
                if t_rx is None:
                    raise BenchError(f"barge seq {new_seq} stopped audio but was not seen")
                server.append(t_stop - t_rx)
            else:
                pin = app.panel.button.pin
                pin.drive_low()
                time.sleep(0.06)                       # a short press, past the bounce time
                t_press = time.monotonic()
                pin.drive_high()                       # a short press fires on release
                t_stop, _ = h.wait("sentence.stop", since=mark, seq=seq, sentence_id=sid,
                                   reason="button")
                button.append(t_stop - t_press)
                new_seq = max(seq, SEQ_BASE) + 1       # the button retired the current seq
                # After a press newer audio is dropped until the server acknowledges it
                # (README: the rest of that turn is dropped): wait for its barge.
                h.wait("barge", timeout=5, since=mark, source="server", reason="manual")
            # Playback again: a new sentence in the new seq.
            seq, sid = new_seq, next_id
            next_id += 1
            for msg in _sentence_messages(seq, sid, mp3s[sid % len(mp3s)], "bench sentence"):
                sim.inject(msg)
            h.wait("sentence.play", timeout=10, since=mark, seq=seq, sentence_id=sid)
        # The figures.
        plays = {(r["seq"], r["sentence_id"]): t for t, r in h.all("sentence.play")}
        starts, queued = [], 0
        for key, (t_last, busy) in h.last_chunk.items():
            if key not in plays:
                continue
            if busy:
                queued += 1            # it waited for the sentence before it: not a latency
            else:
                starts.append(plays[key] - t_last)
        stats = app.link.stats
        out["uplink"] = {"latency_s": list(stats.latencies), "send_times": list(h.send_times),
                         "frames_sent": stats.frames_sent,
                         "frames_dropped_not_ready": stats.frames_dropped_not_ready,
                         "frames_dropped_full": stats.frames_dropped_full}
        out["server_barge_s"] = server
        out["button_s"] = button
        out["sentence_start_s"] = starts
        out["sentences_queued"] = queued
        out["sim_stats"] = {k: v for k, v in sim.stats().items() if k != "last_start"}
