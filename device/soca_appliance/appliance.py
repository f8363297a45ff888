"""The orchestrator: wires source, link, assembler, player and panel, and owns the state.

States: connecting, ready, listening (stt.partial or local speech onset), thinking
(non-empty stt.final), speaking (a sentence playing), error (authentication refused, mic
or speaker gone). Every change is an event and drives the LEDs. Callbacks arrive from the
source, link, player and GPIO threads; one re-entrant lock orders them. The button and
the control socket share :meth:`press`, :meth:`long_press`, :meth:`set_muted`.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Optional, Protocol

from . import protocol
from .assembler import Assembler, Outcome, Sentence
from .config import Config
from .events import EventLog
from .framing import Frame
from .indicators import make_panel
from .link import Link, LinkCallbacks, LinkSettings
from .player import OutputInfo, Player, PlayerCallbacks
from .protocol import (Barge, FinalAnswer, SentenceChunk, ServerError, ServerMessage, SttFinal,
                       SttPartial, Unknown)
from .vad import VadGate

log = logging.getLogger("soca.appliance")

HALF_DUPLEX_SETTLE_S = 0.3     # the room's echo dies down this long after the speaker stops


class WarningLimiter:
    """At most ``burst`` warnings per ``window`` seconds: a hostile server flooding bad
    sentences must not flood the journal too. Says how many it held back."""

    def __init__(self, burst: int = 20, window: float = 10.0) -> None:
        self.burst, self.window = burst, window
        self._start = float("-inf")
        self._count = 0
        self.suppressed = 0

    def allow(self, now: float) -> tuple[bool, int]:
        """(log this one?, warnings held back in the window that just ended)."""
        held = 0
        if now - self._start >= self.window:
            held, self.suppressed = self.suppressed, 0
            self._start, self._count = now, 0
        self._count += 1
        if self._count > self.burst:
            self.suppressed += 1
            return False, held
        return True, held


class Source(Protocol):
    name: str

    def start(self, on_frame: Callable[[Frame], None]) -> None: ...

    def stop(self, timeout: float = 1.0) -> None: ...


@dataclass
class Counters:
    frames_captured: int = 0
    frames_muted: int = 0
    frames_silenced: int = 0
    utterances: int = 0
    barges_server: int = 0
    barges_button: int = 0
    sentences_played: int = 0
    sentences_stopped: int = 0
    bad_messages: int = 0
    server_errors: int = 0


class Appliance:
    def __init__(self, cfg: Config, events: EventLog, source: Source, private_key: str,
                 *, panel: Any = None, player: Optional[Player] = None,
                 link: Optional[Link] = None) -> None:
        self.cfg = cfg
        self.events = events
        self.source = source
        self.counters = Counters()
        self.muted = False
        self._lock = threading.RLock()
        self._conv = "connecting"
        self._faults: set[str] = set()
        self._shown: Optional[str] = None
        self._answered_seq = -1
        self._stopping = threading.Event()
        self._limiter = WarningLimiter()
        self.assembler = Assembler(cfg.max_sentence_bytes, cfg.max_pending_sentences,
                                   cfg.sentence_timeout, cfg.progressive_playback)
        self.gate = VadGate(cfg.vad_aggressiveness, cfg.frame_ms) if cfg.vad else None
        self.player = player or Player(PlayerCallbacks(
            on_start=self._sentence_started, on_stop=self._sentence_stopped,
            on_idle=self._playback_idle, on_error=self._audio_error,
            on_output=self._audio_open), buffer=cfg.mixer_buffer,
            max_queue=cfg.max_pending_sentences)
        self.link = link or Link(LinkSettings(
            url=cfg.url, agent_id=cfg.agent_id, lang=cfg.lang, private_key=private_key,
            key_field=cfg.key_field, session_id=cfg.session_id, ca_file=cfg.ca_file,
            connect_timeout=cfg.connect_timeout, ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout, backoff_initial=cfg.backoff_initial,
            backoff_max=cfg.backoff_max, auth_retry=cfg.auth_retry,
            queue_frames=max(5, 500 // cfg.frame_ms)),
            LinkCallbacks(on_connecting=self._connecting, on_connected=self._connected,
                          on_disconnected=self._disconnected, on_message=self.handle,
                          on_bad_message=self._bad_message))
        self.panel = panel if panel is not None else make_panel(
            cfg.gpio, cfg.leds, cfg.button_pin, cfg.long_press, self.button_press,
            self.long_press)
        if hasattr(source, "on_error"):          # the microphone reports loss and return
            source.on_error = self.mic_error
            source.on_recover = self.mic_recovered
        self._chime = (resources.files("soca_appliance") / "assets" / "chime.wav").read_bytes()

    # --- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        self._show()
        self.player.start()
        self.link.start()
        self.source.start(self.on_frame)

    def run(self, stop: threading.Event, tick: Callable[[bool, str], None] = lambda h, s: None
            ) -> None:
        """Block until ``stop`` is set; once a second expire stuck sentences and report
        health (the systemd watchdog is fed only while every worker thread lives)."""
        while not stop.wait(1.0):
            with self._lock:
                self._apply(self.assembler.expire(time.monotonic()))
            tick(self.healthy(), self.state)

    def shutdown(self) -> None:
        self._stopping.set()
        self.source.stop(0.5)
        self.player.close(0.5)
        self.link.close(0.8)
        self.panel.close()
        self.events.emit("state", state="stopped")

    def healthy(self) -> bool:
        """For the systemd watchdog: every worker thread is still alive."""
        source_alive = getattr(self.source, "alive", lambda: True)()
        return self.link.alive() and self.player.alive() and source_alive

    @property
    def state(self) -> str:
        with self._lock:
            return "error" if self._faults else self._conv

    def idle(self) -> bool:
        with self._lock:
            return (self.state == "ready" and not self.player.busy
                    and self.assembler.pending == 0)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"state": self.state, "connected": self.link.streaming,
                    "session_id": self.link.session_id, "seq": self.assembler.current_seq,
                    "muted": self.muted, "faults": sorted(self._faults),
                    "counters": {**vars(self.counters),
                                 "frames_sent": self.link.stats.frames_sent,
                                 "frames_dropped_not_ready":
                                     self.link.stats.frames_dropped_not_ready,
                                 "frames_dropped_full": self.link.stats.frames_dropped_full,
                                 "connects": self.link.stats.connects,
                                 "connect_attempts": self.link.stats.attempts,
                                 "sentences_dropped": self.assembler.dropped_sentences,
                                 "chunks_dropped": self.assembler.dropped_chunks}}

    # --- state ---------------------------------------------------------------------

    def _set(self, conv: str) -> None:
        with self._lock:
            self._conv = conv
            self._show()

    def _fault(self, name: str, on: bool) -> None:
        with self._lock:
            if on:
                self._faults.add(name)
            else:
                self._faults.discard(name)
            self._show()

    def _show(self) -> None:
        state = self.state
        if state != self._shown:
            self._shown = state
            self.events.emit("state", state=state)
            self.panel.show(state, self.muted)

    # --- audio up ------------------------------------------------------------------

    def on_frame(self, frame: Frame) -> None:
        self.counters.frames_captured += 1
        if self.muted:
            self.counters.frames_muted += 1
            return
        if self.cfg.duplex == "half" and self.player.quiet_for() < HALF_DUPLEX_SETTLE_S:
            # The agent is talking: send silence, so the stream stays continuous but the
            # agent cannot hear (and barge on) its own voice.
            frame = Frame(bytes(len(frame.pcm)), frame.t_capture, frame.index)
            self.counters.frames_silenced += 1
        if self.gate is None:
            self.link.send_audio(frame)
            return
        result = self.gate.process(frame)
        if result.started:
            self.counters.utterances += 1
            with self._lock:
                if self._conv in ("ready", "thinking"):
                    self._set("listening")
        for item in result.send:
            self.link.send_audio(item)
        if result.ended:
            self.link.send_control(protocol.stop_message())

    # --- link ----------------------------------------------------------------------

    def _connecting(self, attempt: int) -> None:
        self._set("connecting")

    def _connected(self, session_id: str) -> None:
        with self._lock:
            self.events.emit("connected", session_id=session_id)
            self._faults.discard("auth")
            # A new session numbers its seqs afresh: the old session's audio is over.
            self.player.stop_all("reconnect")
            self._apply(self.assembler.reset())
            if self.gate is not None:
                self.gate.reset()
            self._set("ready")

    def _disconnected(self, code: Optional[int], reason: str, retry_in: float,
                      auth: bool) -> None:
        with self._lock:
            self.events.emit("disconnected", code=code, reason=reason, retry_in=retry_in)
            self._apply(self.assembler.reset())
            if auth:
                self.events.emit("error", message=f"authentication refused: {reason}")
                self._fault("auth", True)
            self._set("connecting")

    def _bad_message(self, error: str) -> None:
        self.counters.bad_messages += 1
        log.warning("bad message from the server: %s", error)

    def handle(self, msg: ServerMessage) -> None:
        """One parsed server message (called by the link thread, or by tests)."""
        with self._lock:
            if isinstance(msg, SentenceChunk):
                self._apply(self.assembler.add(msg, time.monotonic()))
            elif isinstance(msg, SttPartial):
                self.events.emit("transcript", final=False, text=msg.text)
                if self._conv in ("ready", "thinking"):
                    self._set("listening")
            elif isinstance(msg, SttFinal):
                self._final(msg)
            elif isinstance(msg, FinalAnswer):
                self.events.emit("answer", seq=msg.seq, text=msg.text)
                self._apply(self.assembler.answer_done(msg.seq))
                self._answered_seq = max(self._answered_seq, msg.seq)
                self._maybe_ready()
            elif isinstance(msg, Barge):
                self.counters.barges_server += 1
                self._apply(self.assembler.barge(msg.seq))      # silence first, then talk
                self.events.emit("barge", seq=msg.seq, source="server", reason=msg.reason)
                # A speech barge means the user is talking; "manual" only acknowledges
                # the button's barge, after which the appliance is simply ready.
                if msg.reason != "manual" and self._conv in ("speaking", "thinking", "ready"):
                    self._set("listening")
            elif isinstance(msg, ServerError):
                self.counters.server_errors += 1
                self.events.emit("error", message=f"server: {msg.message}")
                if msg.is_auth:
                    self._fault("auth", True)
            elif isinstance(msg, Unknown):
                log.debug("ignored message of unknown type %s", msg.kind)

    def _final(self, msg: SttFinal) -> None:
        if msg.text.strip():
            self.events.emit("transcript", final=True, text=msg.text)
            if self._conv != "speaking":
                self._set("thinking")
        elif self._conv == "listening":
            self._set("ready")

    def _apply(self, outcome: Outcome) -> None:
        for warning in outcome.warnings:
            allowed, held = self._limiter.allow(time.monotonic())
            if held:
                log.warning("%d more sentence warnings were not logged", held)
            if allowed:
                log.warning("%s", warning)
        if outcome.barge_to is not None:
            self.player.stop_before(outcome.barge_to, "barge")
        for key in outcome.aborted:
            self.player.abort(key[0], key[1], "dropped")
        for sentence in outcome.ready:
            self.player.enqueue(sentence)
        for piece in outcome.pieces:
            self.player.feed(piece)

    def _maybe_ready(self) -> None:
        if (self._conv in ("thinking", "speaking") and not self.player.busy
                and self.assembler.pending == 0
                and self._answered_seq >= self.assembler.current_seq):
            self._set("ready")

    # --- player --------------------------------------------------------------------

    def _sentence_started(self, sentence: Sentence) -> None:
        with self._lock:
            self.counters.sentences_played += 1
            self.events.emit("sentence.play", seq=sentence.seq, sentence_id=sentence.sentence_id,
                             bytes=len(sentence.mp3), text=sentence.text)
            self._set("speaking")

    def _sentence_stopped(self, sentence: Sentence, reason: str) -> None:
        self.counters.sentences_stopped += 1
        self.events.emit("sentence.stop", seq=sentence.seq, sentence_id=sentence.sentence_id,
                         reason=reason)

    def _playback_idle(self) -> None:
        with self._lock:
            if self._stopping.is_set() or self._conv != "speaking":
                return
            answered = self._answered_seq >= self.assembler.current_seq
            self._set("ready" if answered and self.assembler.pending == 0 else "thinking")

    def _audio_error(self, message: str) -> None:
        self.events.emit("error", message=message)
        if "failed to open" in message:
            self._fault("speaker", True)

    def _audio_open(self, info: OutputInfo) -> None:
        self.events.emit("audio.output", frequency=info.frequency, channels=info.channels,
                         buffer=info.buffer, buffer_ms=round(info.buffer_ms, 1),
                         driver=info.driver)
        self._fault("speaker", False)

    def mic_error(self, message: str) -> None:
        self.events.emit("error", message=message)
        self._fault("mic", True)

    def mic_recovered(self) -> None:
        self.events.emit("mic.recovered")
        self._fault("mic", False)

    # --- the button and the control socket -------------------------------------------

    def button_press(self) -> None:
        self.press(source="button")

    def press(self, source: str = "button") -> str:
        """A short press: interrupt the agent, or a chime when there is nothing to stop."""
        with self._lock:
            if self.player.busy or self._conv in ("speaking", "thinking"):
                self.counters.barges_button += 1
                seq = self.assembler.current_seq
                self.player.stop_all("button")                  # silence first, then talk
                self.assembler.interrupt()
                self.events.emit("barge", seq=seq, source=source)
                self.link.send_control(protocol.barge_message())
                self._set("ready")
                return "barged"
        self.player.play_cue(self._chime)
        return "chime"

    def long_press(self) -> None:
        self.set_muted(not self.muted)

    def set_muted(self, muted: bool) -> None:
        with self._lock:
            if muted == self.muted:
                return
            self.muted = muted
            if muted and self.gate is not None and self.gate.active:
                self.gate.reset()           # the utterance ends here: let the server know
                self.link.send_control(protocol.stop_message())
            self.events.emit("mute", muted=muted)
            self.panel.show(self.state, muted)      # the privacy glow, same state
