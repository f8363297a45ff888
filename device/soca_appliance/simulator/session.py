"""One simulated voice-ws session: what the server does after an accepted ``start``.

Owns the per-connection state: voice activity detection on the uploaded PCM (webrtcvad, in
20 ms sub-frames; binary frames of any even length are audio), canned ``stt.partial``/
``stt.final`` transcripts, the answer in flight (chunked MP3 sentences, then
``final_answer``), sequence numbers and barge-in (through :class:`.gate.BargeGate`). Every
protocol error sent to the client is also logged. Also the server-wide counters
(:class:`_Stats`).
"""
from __future__ import annotations

import asyncio
import collections
import copy
import json
import logging
import random
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Optional

import webrtcvad
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .assets import _Turn
from .chunking import sentence_texts
from .gate import BargeGate, Verdict

if TYPE_CHECKING:
    from .server import Simulator

log = logging.getLogger("soca.simulator")

SAMPLE_RATE = 16000
SUBFRAME_BYTES = 640                    # 20 ms of PCM16LE mono 16 kHz: one VAD decision
SUBFRAME_S = 0.02
VAD_MODE = 2
ONSET_WINDOW = 5                        # sub-frames looked at for a speech onset
ONSET_VOICED = 3                        # voiced sub-frames in that window = onset
PARTIAL_EVERY = 15                      # 300 ms of speech between partials
END_SILENCE = 25                        # 500 ms of non-speech ends the utterance
MIN_UTTERANCE = 10                      # under 200 ms of speech: empty final, no answer
PLAYBACK_MARGIN_S = 0.5

_STAT_KEYS = ("connections", "starts_ok", "auth_failures", "frames_received", "bytes_received",
              "frames_rejected", "stops_received", "barges_received", "barges_sent",
              "partials_sent", "finals_sent", "answers_sent", "errors_sent",
              "barges_cooled_down", "barges_too_late")


class _Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_STAT_KEYS, 0)
        self._last_start: Optional[dict[str, Any]] = None
        # Each barge decided on speech, on the monotonic clock: when the onset's first
        # sub-frame arrived, when the barge went out, and how much audio lay between
        # (bounded: the room's tests and the bench read it to split a barge's latency).
        self._barges: collections.deque[dict[str, float]] = collections.deque(maxlen=256)

    def add(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[key] += amount

    def set_last_start(self, start: dict[str, Any]) -> None:
        with self._lock:
            self._last_start = copy.deepcopy(start)

    def barged_on_speech(self, entry: dict[str, float]) -> None:
        with self._lock:
            self._barges.append(entry)

    def speech_barges(self) -> list[dict[str, float]]:
        with self._lock:
            return list(self._barges)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snap: dict[str, Any] = dict(self._counts)
            snap["last_start"] = copy.deepcopy(self._last_start)
        return snap


class _Session:
    """One accepted ``start``: VAD state, turn cycling, seq and the answer in flight."""

    def __init__(self, sim: "Simulator", ws: ServerConnection, session_id: str, lang: str) -> None:
        self.sim = sim
        self.ws = ws
        self.session_id = session_id
        self.lang = lang
        self.turns = sim._assets[lang]
        self.turn_index = 0
        self.seq = 0
        self.seq_used = True              # so that the first answer is seq 1
        self.sentence_ids = 0
        self.vad = webrtcvad.Vad(VAD_MODE)
        self.carry = b""
        self.frame_no = 0
        # (sub-frame, voiced, when it arrived) until an onset
        self.window: collections.deque[tuple[int, bool, float]] = \
            collections.deque(maxlen=ONSET_WINDOW)
        self.onset_at = 0.0                # time.monotonic() the onset's sub-frame arrived
        self.in_speech = False
        self.speech_start = 0
        self.last_voiced = 0
        self.silence_run = 0
        self.partials = 0
        self.barged = False                # this utterance barged, or never will
        self.cooled = False                # this utterance was held back by the cooldown
        self.gate = BargeGate(sim.gate)
        self.rng = random.Random(sim.seed)  # where the base64 texts are cut: repeatable
        self.answer_task: Optional[asyncio.Task[None]] = None
        self.answer_active = False
        self.answering_until = 0.0
        self.send_lock = asyncio.Lock()

    # --- sending -------------------------------------------------------------------------

    async def send(self, obj: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.ws.send(json.dumps(obj))

    async def error(self, message: str) -> None:
        self.sim._stats.add("errors_sent")
        log.warning("session %s: protocol error sent to the client: %s", self.session_id, message)
        await self.send({"type": "error", "message": message})

    # --- audio ---------------------------------------------------------------------------

    async def audio(self, data: bytes) -> None:
        # Any even length is PCM16 (the page recommends 20-50 ms, its own browser client
        # sends 4096-sample frames): a server is liberal in what it accepts.
        if len(data) % 2:
            self.sim._stats.add("frames_rejected")
            await self.error(f"binary frame of {len(data)} bytes rejected: PCM16LE needs an "
                             f"even number of bytes (2 per sample)")
            return
        self.sim._stats.add("frames_received")
        self.sim._stats.add("bytes_received", len(data))
        buf = self.carry + data
        usable = len(buf) - len(buf) % SUBFRAME_BYTES
        self.carry = buf[usable:]            # < 640 bytes: a 50 ms frame leaves 10 ms over
        arrived = time.monotonic()
        for off in range(0, usable, SUBFRAME_BYTES):
            await self.subframe(buf[off:off + SUBFRAME_BYTES], arrived)

    async def subframe(self, pcm: bytes, arrived: float) -> None:
        voiced = self.vad.is_speech(pcm, SAMPLE_RATE)
        idx = self.frame_no
        self.frame_no += 1
        if not self.in_speech:
            self.window.append((idx, voiced, arrived))
            voiced_count = sum(1 for _, v, _ in self.window if v)
            if voiced_count >= ONSET_VOICED:
                self.in_speech = True
                self.speech_start, self.onset_at = next((i, t) for i, v, t in self.window if v)
                self.last_voiced = idx
                self.silence_run = 0
                self.partials = 0
                self.barged = False
                self.cooled = False
                self.gate.onset(self.speech_start, voiced_count)
                self.window.clear()
                log.debug("session %s: speech onset at %.2f s of audio",
                          self.session_id, self.speech_start * SUBFRAME_S)
            return
        if voiced:
            self.last_voiced = idx
            self.silence_run = 0
            self.gate.voiced()
        else:
            self.silence_run += 1
        length = idx - self.speech_start + 1
        if voiced and length >= (self.partials + 1) * PARTIAL_EVERY:
            self.partials += 1
            words = self.current_turn().you.split()
            text = " ".join(words[:min(len(words), self.partials + 1)])
            self.sim._stats.add("partials_sent")
            await self.send({"type": "stt.partial", "text": text})
        if not self.barged and self.answering():
            await self.maybe_barge(idx)
        if self.silence_run >= END_SILENCE:
            await self.end_of_utterance()

    def current_turn(self) -> _Turn:
        return self.turns[self.turn_index % len(self.turns)]

    async def end_of_utterance(self) -> None:
        span = self.last_voiced - self.speech_start + 1
        self.in_speech = False
        self.window.clear()
        if span < MIN_UTTERANCE:
            self.sim._stats.add("finals_sent")
            await self.send({"type": "stt.final", "text": ""})
            log.info("session %s: %d ms of speech is too short: empty final",
                     self.session_id, span * 20)
            return
        turn = self.current_turn()
        self.turn_index += 1
        self.sim._stats.add("finals_sent")
        await self.send({"type": "stt.final", "text": turn.you})
        await self.cancel_answer()
        if self.seq_used:
            self.seq += 1
        self.seq_used = True
        log.info("session %s: heard %r, answering with %d sentences as seq %d",
                 self.session_id, turn.you, len(turn.sentences), self.seq)
        self.answer_task = asyncio.create_task(self.answer(turn, self.seq, time.monotonic()))

    async def stop(self) -> None:
        self.sim._stats.add("stops_received")
        if self.in_speech:
            await self.end_of_utterance()
        else:
            log.debug("session %s: stop with no speech in progress", self.session_id)

    # --- answers and barge-in ------------------------------------------------------------

    def answering(self) -> bool:
        return self.answer_active or time.monotonic() < self.answering_until

    async def answer(self, turn: _Turn, seq: int, t0: float) -> None:
        chat_id = str(uuid.uuid4())
        play_end = 0.0
        try:
            for sentence in turn.sentences:
                await asyncio.sleep(self.sim.sentence_delay)
                self.sentence_ids += 1
                sid = self.sentence_ids
                chunks = sentence_texts(sentence.mp3, self.sim.chunking, self.rng)
                for index, chunk in enumerate(chunks):
                    msg: dict[str, Any] = {
                        "stepType": "sentence", "chatId": chat_id, "sentenceId": sid,
                        "audioBase64": chunk,
                        "audioMime": "audio/mp3", "chunkIndex": index, "isLastChunk": False,
                        "seq": seq}
                    if index == 0:
                        msg["contentStep"] = sentence.text
                    await self.send(msg)
                    self.answer_active = True
                    await asyncio.sleep(self.sim.chunk_delay)
                await self.send({"stepType": "sentence", "chatId": chat_id, "sentenceId": sid,
                                 "audioBase64": None, "audioMime": "audio/mp3",
                                 "chunkIndex": len(chunks), "isLastChunk": True, "seq": seq})
                play_end = max(play_end, time.monotonic()) + sentence.duration_s
                self.answering_until = play_end + PLAYBACK_MARGIN_S
            full = " ".join(s.text for s in turn.sentences)
            self.sim._stats.add("answers_sent")   # counted first: a client may check at once
            await self.send({"stepType": "final_answer", "stepTitle": "Final Answer",
                             "fullResponse": {"answers": [{"output": full}]},
                             "audioBase64": None, "audioMime": "audio/mp3", "isFinal": True,
                             "seq": seq,
                             "stepDuration": round((time.monotonic() - t0) * 1000.0, 1)})
        except ConnectionClosed:
            pass
        finally:
            self.answer_active = False

    async def maybe_barge(self, idx: int) -> None:
        """Speech while the agent answers: barge if the gate says it is meaningful."""
        verdict = self.gate.evaluate(idx)
        if verdict is Verdict.BARGE:
            self.barged = True
            await self.barge("content_partial")
            self.sim._stats.barged_on_speech({
                "onset": self.onset_at, "barge": time.monotonic(),
                "audio_s": (idx + 1 - self.speech_start) * SUBFRAME_S,
                "voiced_s": self.gate.voiced_s})
        elif verdict is Verdict.LATE:
            self.barged = True                           # its window closed: never
            self.sim._stats.add("barges_too_late")
            log.info("session %s: no barge: %.2f s of voiced speech in the %.1f s after "
                     "onset", self.session_id, self.gate.voiced_s, self.gate.config.window_s)
        elif verdict is Verdict.COOLDOWN and not self.cooled:
            self.cooled = True
            self.sim._stats.add("barges_cooled_down")
            log.info("session %s: barge held back: last barge %.2f s ago (cooldown %.1f s)",
                     self.session_id, self.gate.since_last_barge(idx),
                     self.gate.config.cooldown_s)

    async def cancel_answer(self) -> None:
        task, self.answer_task = self.answer_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.answer_active = False
        self.answering_until = 0.0

    async def barge(self, reason: str) -> None:
        await self.cancel_answer()
        self.seq += 1
        self.seq_used = False
        self.gate.barged(self.frame_no)
        self.sim._stats.add("barges_sent")
        await self.send({"type": "barge", "seq": self.seq, "reason": reason})
        log.info("session %s: barge (%s), seq is now %d", self.session_id, reason, self.seq)

    # --- control -------------------------------------------------------------------------

    async def text(self, raw: str) -> None:
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            await self.error("text frames must be JSON control messages")
            return
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "stop":
            await self.stop()
        elif kind == "barge":
            self.sim._stats.add("barges_received")
            await self.barge("manual")
        elif kind == "start":
            await self.error("session already started")
        else:
            shown = repr(kind[:40]) if isinstance(kind, str) else "(none)"
            await self.error(f"unknown message type {shown}: expected stop or barge")

