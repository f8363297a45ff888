"""A local stand-in for Soca AI's Voice Stream server (``soca-appliance simulate``).

Owns the simulated server side of the protocol described in PROTOCOL.md: the ``start``
handshake and its errors, voice activity detection on the uploaded PCM (webrtcvad), canned
``stt.partial``/``stt.final`` transcripts, chunked MP3 sentence answers taken from the
bundled assets (``assets/manifest.json``), ``final_answer``, sequence numbers and barge-in
(server-detected and manual). It speaks plain ``ws://`` on loopback and is meant for
development, tests and benchmarks, never for production.

All speech timing is counted in received audio (20 ms sub-frames), not wall-clock time, so
that a client may send faster than real time and still get the same events. Only the
"agent is answering" window is wall-clock: it lasts from the first sentence until the
estimated end of the client's playback (when each sentence was sent plus its duration,
plus 0.5 s).

:class:`Simulator` runs either on its own thread (:meth:`Simulator.start` /
:meth:`Simulator.stop`, for tests) or in the caller's event loop
(:meth:`Simulator.serve_forever`, for the CLI). :func:`main` is the CLI entry point.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import copy
import hmac
import json
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Coroutine, Optional, Union

import webrtcvad
from websockets.asyncio.server import Server, ServerConnection, serve

from .config import is_loopback
from websockets.exceptions import ConnectionClosed

log = logging.getLogger("soca.simulator")

SAMPLE_RATE = 16000
SUBFRAME_BYTES = 640                    # 20 ms of PCM16LE mono 16 kHz: one VAD decision
SUBFRAME_S = 0.02
ALLOWED_FRAME_BYTES = (640, 1280, 1600)
VAD_MODE = 2
ONSET_WINDOW = 5                        # sub-frames looked at for a speech onset
ONSET_VOICED = 3                        # voiced sub-frames in that window = onset
PARTIAL_EVERY = 15                      # 300 ms of speech between partials
END_SILENCE = 25                        # 500 ms of non-speech ends the utterance
MIN_UTTERANCE = 10                      # under 200 ms of speech: empty final, no answer
BARGE_MIN_SPEECH = 15                   # 300 ms of speech while answering: barge
PLAYBACK_MARGIN_S = 0.5
START_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 16
MAX_MESSAGE_BYTES = 64 * 1024           # a start message or a 50 ms frame is far smaller
MAX_MP3_BYTES = 1 << 20
MAX_TURNS_PER_LANG = 64
MAX_SENTENCES_PER_TURN = 32
HOOK_TIMEOUT_S = 2.0
LANGS = ("id", "en")
KEY_ENV = "SOCA_PRIVATE_KEY"
DEFAULT_PORT = 8765

ERR_START = "must start with type=start"
ERR_AUTH = "Invalid or expired token"

_STAT_KEYS = ("connections", "starts_ok", "auth_failures", "frames_received", "bytes_received",
              "frames_rejected", "stops_received", "barges_received", "barges_sent",
              "partials_sent", "finals_sent", "answers_sent")


class AssetError(RuntimeError):
    """The simulator's assets folder is missing something or is malformed."""


@dataclass(frozen=True)
class _Sentence:
    text: str
    mp3: bytes
    duration_s: float


@dataclass(frozen=True)
class _Turn:
    you: str
    sentences: tuple[_Sentence, ...]


def default_assets_dir() -> Path:
    return Path(__file__).resolve().parent / "assets"


def mp3_duration(data: bytes) -> float:
    """Seconds of audio in an MPEG-1/2/2.5 Layer III stream, from its frame headers."""
    kbps_v1 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
    kbps_v2 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
    rates = (44100, 48000, 32000)
    i = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        i = 10 + ((data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14
                  | (data[8] & 0x7F) << 7 | (data[9] & 0x7F))
    seconds = 0.0
    while i + 4 <= len(data):
        b1, b2 = data[i + 1], data[i + 2]
        version = (b1 >> 3) & 3              # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5, 1: reserved
        layer = (b1 >> 1) & 3                # 1: Layer III
        br_idx, sr_idx, pad = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
        if (data[i] != 0xFF or (b1 & 0xE0) != 0xE0 or version == 1 or layer != 1
                or br_idx in (0, 15) or sr_idx == 3):
            i += 1
            continue
        if version == 3:
            rate, samples, size = rates[sr_idx], 1152, 144 * kbps_v1[br_idx] * 1000
        else:
            rate = rates[sr_idx] // (2 if version == 2 else 4)
            samples, size = 576, 72 * (kbps_v2[br_idx] * 1000)
        seconds += samples / rate
        i += size // rate + pad
    return seconds


def load_assets(assets_dir: Optional[Union[str, Path]] = None) -> dict[str, tuple[_Turn, ...]]:
    """Read ``manifest.json`` and its MP3 files; raise :class:`AssetError` on any problem."""
    base = Path(assets_dir) if assets_dir is not None else default_assets_dir()
    try:
        manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AssetError(f"cannot read {base / 'manifest.json'}: {exc}") from None
    if not isinstance(manifest, dict):
        raise AssetError("manifest.json is not a JSON object")
    out: dict[str, tuple[_Turn, ...]] = {}
    for lang in LANGS:
        turns = manifest.get(lang)
        if not isinstance(turns, list) or not 0 < len(turns) <= MAX_TURNS_PER_LANG:
            raise AssetError(f"manifest.json: '{lang}' must be a list of 1..{MAX_TURNS_PER_LANG} turns")
        loaded: list[_Turn] = []
        for n, turn in enumerate(turns, start=1):
            where = f"manifest.json: {lang} turn {n}"
            if not isinstance(turn, dict) or not isinstance(turn.get("you"), str) or not turn["you"]:
                raise AssetError(f"{where}: needs a non-empty 'you' text")
            agent = turn.get("agent")
            if not isinstance(agent, list) or not 0 < len(agent) <= MAX_SENTENCES_PER_TURN:
                raise AssetError(f"{where}: 'agent' must be a list of 1..{MAX_SENTENCES_PER_TURN} sentences")
            sentences: list[_Sentence] = []
            for item in agent:
                if (not isinstance(item, dict) or not isinstance(item.get("text"), str)
                        or not isinstance(item.get("file"), str)):
                    raise AssetError(f"{where}: each sentence needs 'text' and 'file' strings")
                name = item["file"]
                if Path(name).name != name or name in ("", ".", ".."):
                    raise AssetError(f"{where}: file {name!r} must be a plain file name")
                path = base / name
                try:
                    size = path.stat().st_size
                    if size > MAX_MP3_BYTES:
                        raise AssetError(f"{where}: {name} is over {MAX_MP3_BYTES} bytes")
                    mp3 = path.read_bytes()
                except OSError as exc:
                    raise AssetError(f"{where}: cannot read {name}: {exc.strerror}") from None
                duration = mp3_duration(mp3)
                if duration <= 0:
                    raise AssetError(f"{where}: {name} is not MP3")
                sentences.append(_Sentence(item["text"], mp3, duration))
            loaded.append(_Turn(turn["you"], tuple(sentences)))
        out[lang] = tuple(loaded)
    return out


def split_chunks(data: bytes) -> list[bytes]:
    """Cut an MP3 into 4 to 6 slices of about equal size (about 2 KB each)."""
    count = max(4, min(6, -(-len(data) // 2000)))
    count = min(count, max(1, len(data)))
    bounds = [round(i * len(data) / count) for i in range(count + 1)]
    return [data[bounds[i]:bounds[i + 1]] for i in range(count)]


class _Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_STAT_KEYS, 0)
        self._last_start: Optional[dict[str, Any]] = None

    def add(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[key] += amount

    def set_last_start(self, start: dict[str, Any]) -> None:
        with self._lock:
            self._last_start = copy.deepcopy(start)

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
        self.window: collections.deque[tuple[int, bool]] = collections.deque(maxlen=ONSET_WINDOW)
        self.in_speech = False
        self.speech_start = 0
        self.last_voiced = 0
        self.silence_run = 0
        self.partials = 0
        self.barged = False
        self.answer_task: Optional[asyncio.Task[None]] = None
        self.answer_active = False
        self.answering_until = 0.0
        self.send_lock = asyncio.Lock()

    # --- sending -------------------------------------------------------------------------

    async def send(self, obj: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.ws.send(json.dumps(obj))

    async def error(self, message: str) -> None:
        await self.send({"type": "error", "message": message})

    # --- audio ---------------------------------------------------------------------------

    async def audio(self, data: bytes) -> None:
        if len(data) not in ALLOWED_FRAME_BYTES:
            self.sim._stats.add("frames_rejected")
            await self.error(f"binary frame of {len(data)} bytes rejected: send PCM16LE mono "
                             f"16 kHz frames of 640, 1280 or 1600 bytes (20, 40 or 50 ms)")
            return
        self.sim._stats.add("frames_received")
        self.sim._stats.add("bytes_received", len(data))
        buf = self.carry + data
        usable = len(buf) - len(buf) % SUBFRAME_BYTES
        self.carry = buf[usable:]            # < 640 bytes: a 50 ms frame leaves 10 ms over
        for off in range(0, usable, SUBFRAME_BYTES):
            await self.subframe(buf[off:off + SUBFRAME_BYTES])

    async def subframe(self, pcm: bytes) -> None:
        voiced = self.vad.is_speech(pcm, SAMPLE_RATE)
        idx = self.frame_no
        self.frame_no += 1
        if not self.in_speech:
            self.window.append((idx, voiced))
            if sum(1 for _, v in self.window if v) >= ONSET_VOICED:
                self.in_speech = True
                self.speech_start = next(i for i, v in self.window if v)
                self.last_voiced = idx
                self.silence_run = 0
                self.partials = 0
                self.barged = False
                self.window.clear()
                log.debug("session %s: speech onset at %.2f s of audio",
                          self.session_id, self.speech_start * SUBFRAME_S)
            return
        if voiced:
            self.last_voiced = idx
            self.silence_run = 0
        else:
            self.silence_run += 1
        length = idx - self.speech_start + 1
        if voiced and length >= (self.partials + 1) * PARTIAL_EVERY:
            self.partials += 1
            words = self.current_turn().you.split()
            text = " ".join(words[:min(len(words), self.partials + 1)])
            self.sim._stats.add("partials_sent")
            await self.send({"type": "stt.partial", "text": text})
        voiced_span = self.last_voiced - self.speech_start + 1
        if not self.barged and voiced_span >= BARGE_MIN_SPEECH and self.answering():
            self.barged = True
            await self.barge("content_partial")
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
                chunks = split_chunks(sentence.mp3)
                for index, chunk in enumerate(chunks):
                    msg: dict[str, Any] = {
                        "stepType": "sentence", "chatId": chat_id, "sentenceId": sid,
                        "audioBase64": base64.b64encode(chunk).decode("ascii"),
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


class Simulator:
    """The local voice-ws server. See the module docstring."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, expected_key: Optional[str] = None,
                 key_field: str = "private_key", assets_dir: Optional[Union[str, Path]] = None,
                 chunk_delay: float = 0.02, sentence_delay: float = 0.1) -> None:
        if not key_field:
            raise ValueError("key_field must not be empty")
        self.host = host
        self.port = port
        self.key_field = key_field
        self.chunk_delay = max(0.0, float(chunk_delay))
        self.sentence_delay = max(0.0, float(sentence_delay))
        self._expected_key = expected_key
        self._assets = load_assets(assets_dir)
        self._stats = _Stats()
        self._conns: set[ServerConnection] = set()
        self._closing: set[asyncio.Task[None]] = set()      # at most one per connection
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop_event: Optional[asyncio.Event] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._thread_error: Optional[BaseException] = None
        self._bound_port: Optional[int] = None

    def __repr__(self) -> str:  # never shows the key
        return f"Simulator(url={self.url!r}, key_field={self.key_field!r})"

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        port = self._bound_port if self._bound_port is not None else self.port
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{port}"

    def start(self) -> int:
        """Run the server on its own thread; return the bound port once it is listening."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        self._ready.clear()
        self._thread_error = None
        self._thread = threading.Thread(target=self._thread_main, name="soca-simulator",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10.0):
            raise RuntimeError("simulator did not start within 10 s")
        if self._thread_error is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
            raise RuntimeError(f"simulator failed to start: {self._thread_error}") from self._thread_error
        assert self._bound_port is not None
        return self._bound_port

    def stop(self) -> None:
        """Close every connection and the listener; join the thread (within about 2 s)."""
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop already finished
                pass
        thread.join(timeout=2.0)
        if thread.is_alive():
            log.warning("simulator thread did not stop within 2 s")
        self._thread = None

    def __enter__(self) -> "Simulator":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._run(self._ready.set))
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._thread_error = exc
            self._ready.set()

    async def serve_forever(self) -> None:
        """Serve in the running event loop until cancelled (the CLI's mode)."""
        await self._run(None)

    async def _run(self, on_ready: Optional[Callable[[], None]]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server: Server = await serve(self._handler, self.host, self.port,
                                     max_size=MAX_MESSAGE_BYTES, max_queue=64,
                                     compression=None, close_timeout=1.0, ping_interval=20,
                                     ping_timeout=20, open_timeout=10,
                                     logger=log.getChild("websockets"))
        try:
            self._bound_port = int(next(iter(server.sockets)).getsockname()[1])
            log.info("voice-ws simulator listening on %s", self.url)
            if on_ready is not None:
                on_ready()
            await self._stop_event.wait()
        finally:
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), 1.5)
            except (TimeoutError, asyncio.TimeoutError):
                log.warning("connections did not close in time")
            log.info("voice-ws simulator stopped")

    # --- hooks for tests -----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (safe from any thread)."""
        return self._stats.snapshot()

    def inject(self, message: Union[dict[str, Any], str, bytes]) -> int:
        """Send a message to every current connection; return how many got it."""
        if isinstance(message, dict):
            payload: Union[str, bytes] = json.dumps(message)
        elif isinstance(message, (str, bytes)):
            payload = message
        else:
            raise TypeError("inject() takes a dict, a str or bytes")
        return self._call(self._inject(payload))

    def drop_connections(self, code: Optional[int] = None) -> int:
        """Abort every connection (or close it with ``code``); return how many."""
        return self._call(self._drop(code))

    def _call(self, coro: Coroutine[Any, Any, int]) -> int:
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            coro.close()
            raise RuntimeError("simulator is not running")
        try:
            running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError("call this hook from another thread than the simulator's")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        return int(future.result(timeout=HOOK_TIMEOUT_S))

    async def _inject(self, payload: Union[str, bytes]) -> int:
        sent = 0
        for ws in list(self._conns):
            try:
                await ws.send(payload)
                sent += 1
            except ConnectionClosed:
                pass
        return sent

    async def _drop(self, code: Optional[int]) -> int:
        conns = list(self._conns)
        for ws in conns:
            if code is None:
                ws.transport.abort()
            else:
                # the close frame goes out at once; the handshake finishes in the background
                # (the caller may be the very client that has to answer it)
                task = asyncio.create_task(ws.close(code, "dropped by test hook"))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        return len(conns)

    # --- connections ---------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        peer = _peer(ws)
        if len(self._conns) >= MAX_CONNECTIONS:
            log.warning("refusing connection from %s: %d connections open", peer, MAX_CONNECTIONS)
            await ws.close(1013, "too many connections")
            return
        self._stats.add("connections")
        self._conns.add(ws)
        session: Optional[_Session] = None
        try:
            session = await self._handshake(ws, peer)
            if session is None:
                return
            async for message in ws:
                if isinstance(message, bytes):
                    await session.audio(message)
                else:
                    await session.text(message)
        except ConnectionClosed:
            pass
        finally:
            self._conns.discard(ws)
            if session is not None:
                await session.cancel_answer()
            log.debug("connection from %s closed (code %s)", peer, ws.close_code)

    async def _handshake(self, ws: ServerConnection, peer: str) -> Optional[_Session]:
        try:
            first = await asyncio.wait_for(ws.recv(), START_TIMEOUT_S)
        except (TimeoutError, asyncio.TimeoutError):
            return await self._refuse(ws, peer, ERR_START, "no start message within "
                                      f"{START_TIMEOUT_S:.0f} s")
        obj: Any = None
        if isinstance(first, str):
            try:
                obj = json.loads(first)
            except (ValueError, RecursionError):
                obj = None
        if not isinstance(obj, dict) or obj.get("type") != "start":
            return await self._refuse(ws, peer, ERR_START, "first message is not a start")
        agent_id = obj.get("agent_id")
        lang = obj.get("lang", "id")
        sr = obj.get("sr", SAMPLE_RATE)
        session_id = obj.get("session_id")
        if not isinstance(agent_id, str) or not agent_id:
            return await self._refuse(ws, peer, ERR_START, "start has no agent_id")
        if lang not in LANGS:
            return await self._refuse(ws, peer, ERR_START, "start has an unsupported lang")
        if isinstance(sr, bool) or sr != SAMPLE_RATE:
            return await self._refuse(ws, peer, ERR_START, "start has sr other than 16000")
        if session_id is not None and not isinstance(session_id, str):
            return await self._refuse(ws, peer, ERR_START, "start has a non-string session_id")
        key = obj.get(self.key_field)
        if not isinstance(key, str) or not key or (
                self._expected_key is not None
                and not hmac.compare_digest(key.encode(), self._expected_key.encode())):
            self._stats.add("auth_failures")
            return await self._refuse(ws, peer, ERR_AUTH,
                                      f"missing or wrong key in field '{self.key_field}'")
        public = {k: v for k, v in obj.items() if k != self.key_field}
        self._stats.set_last_start(public)
        self._stats.add("starts_ok")
        session_id = session_id or str(uuid.uuid4())
        session = _Session(self, ws, session_id, lang)
        await session.send({"type": "ready", "session_id": session_id})
        await session.send({"type": "stt.ready"})
        log.info("connection from %s: session %s started (agent %s, lang %s)",
                 peer, session_id, agent_id[:64], lang)
        return session

    async def _refuse(self, ws: ServerConnection, peer: str, message: str, why: str) -> None:
        log.info("connection from %s refused: %s", peer, why)
        try:
            await ws.send(json.dumps({"type": "error", "message": message}))
            await ws.close(1008, message)
        except ConnectionClosed:
            pass
        return None


def _peer(ws: ServerConnection) -> str:
    addr = ws.remote_address
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)




async def _serve_until_signal(sim: Simulator) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        try:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        await sim.serve_forever()
    except asyncio.CancelledError:
        pass


def main(argv: Optional[list[str]] = None) -> int:
    """``soca-appliance simulate``: run the simulator until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="soca-appliance simulate",
        description="Run a local Voice Stream server (ws://, loopback) for development. "
                    f"The expected key comes from ${KEY_ENV}; when it is not set any "
                    "non-empty key is accepted.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default %(default)s; loopback only unless "
                             "--allow-remote)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="TCP port (default %(default)s; 0 picks a free one)")
    parser.add_argument("--assets", type=Path, default=None, metavar="DIR",
                        help="folder with manifest.json and the answer MP3s "
                             "(default: the bundled assets)")
    parser.add_argument("--key-field", default="private_key",
                        help="name of the key field in start (default %(default)s)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow binding a non-loopback address (plain ws://, no TLS)")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers and not logging.getLogger("soca").handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    log.getChild("websockets").setLevel(logging.WARNING)   # our own lines say enough
    if not is_loopback(args.host) and not args.allow_remote:
        log.error("refusing to listen on %s: not a loopback address (use --allow-remote "
                  "to override; the simulator speaks unencrypted ws://)", args.host)
        return 2
    if not 0 <= args.port <= 65535:
        log.error("--port must be 0..65535")
        return 2
    expected = os.environ.get(KEY_ENV) or None
    if expected is None:
        log.info("%s is not set: any non-empty key is accepted", KEY_ENV)
    else:
        log.info("expecting the key from %s", KEY_ENV)
    try:
        sim = Simulator(host=args.host, port=args.port, expected_key=expected,
                        key_field=args.key_field, assets_dir=args.assets)
    except AssetError as exc:
        log.error("%s", exc)
        return 1
    try:
        asyncio.run(_serve_until_signal(sim))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, exc.strerror or exc)
        return 1
    return 0
