"""What the server says, applied to the conversation: the seq rule, barges, transcripts,
answers and errors, and what the assembler's outcomes mean for the player.

A mixin of :class:`~soca_appliance.appliance.Appliance` (the orchestrator owns the state
and the lock; this module owns the rules of one message). Every method runs with the
orchestrator's lock held and does no I/O: events and log lines are queued as effects.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from . import protocol
from .assembler import Assembler, Outcome
from .counters import Counters, SentenceBudget
from .effects import WarningLimiter
from .player import Player
from .protocol import (Barge, FinalAnswer, SentenceChunk, ServerError, ServerMessage, SttFinal,
                       SttPartial, Unknown)
from .turn import Turn


class Conversation:
    # Provided by the orchestrator.
    _lock: threading.RLock
    turn: Turn
    assembler: Assembler
    player: Player
    budget: SentenceBudget
    counters: Counters
    _limiter: WarningLimiter
    _emit: Callable[..., None]              # (event, **fields): an event, as an effect
    _log: Callable[..., None]               # (level, message, *args): a log line, as one
    _set: Callable[[str], None]             # the conversation phase, shown
    _fault: Callable[[str, bool], None]     # a fault (auth, speaker, mic) on or off
    _audio_wanted: threading.Event          # set: the audio side must start (a greeting)

    def handle(self, msg: ServerMessage) -> None:
        """One parsed server message (called by the link thread, or by tests)."""
        with self._lock:
            if isinstance(msg, SentenceChunk):
                self._chunk(msg)
            elif isinstance(msg, Barge):
                self._server_barge(msg)
            elif isinstance(msg, FinalAnswer):
                self._apply(self.assembler.answer_done(msg.seq))
                self._emit("answer", seq=msg.seq, text=msg.text)
                self.turn.answer(msg.seq)
                self._maybe_ready()
            else:
                # The seq rule on every message that carries one (transcripts, errors,
                # unknown types): a higher seq silences older audio at once, as a barge.
                self._apply(self.assembler.observe_seq(protocol.seq_of(msg)))
                self._other(msg)

    def _chunk(self, msg: SentenceChunk) -> None:
        if not self.turn.admit(msg.seq):
            # Cut by the button, or newer audio while the press is not acknowledged yet:
            # the rest of that turn is dropped. The seq rule still holds.
            self.counters.add("chunks_held")
            self._apply(self.assembler.observe_seq(msg.seq))
            return
        self.assembler.max_pending = self.budget.room()
        self._audio_wanted.set()        # speech before stt.ready: the speaker opens for it
        self._apply(self.assembler.add(msg, time.monotonic()))

    def _server_barge(self, msg: Barge) -> None:
        self.counters.add("barges_server")
        self.turn.release()                       # the server heard the press (or speech)
        self._apply(self.assembler.barge(msg.seq))        # silence first, then talk
        self._emit("barge", seq=msg.seq, source="server", reason=msg.reason)
        # A speech barge means the user is talking; "manual" only acknowledges the
        # button's barge, after which the appliance is simply ready.
        if msg.reason != "manual" and self.turn.phase in ("speaking", "thinking", "ready"):
            self._set("listening")

    def _other(self, msg: ServerMessage) -> None:
        if isinstance(msg, SttPartial):
            self._emit("transcript", final=False, text=msg.text)
            if self.turn.phase in ("ready", "thinking"):
                self._set("listening")
        elif isinstance(msg, SttFinal):
            if msg.text.strip():
                self.turn.release()               # a new turn: its answer may play
                self._emit("transcript", final=True, text=msg.text)
                if self.turn.phase != "speaking":
                    self._set("thinking")
            elif self.turn.phase == "listening":
                self._set("ready")
        elif isinstance(msg, ServerError):
            self.counters.add("server_errors")
            self._emit("error", message=f"server: {msg.message}")
            if msg.is_auth:
                self._fault("auth", True)         # the link ends the session and waits
        elif isinstance(msg, Unknown):
            self._log(logging.DEBUG, "ignored message of unknown type %s", msg.kind)

    def _apply(self, outcome: Outcome) -> None:
        for warning in outcome.warnings:
            allowed, held = self._limiter.allow(time.monotonic())
            if held:
                self._log(logging.WARNING, "%d more sentence warnings were not logged", held)
            if allowed:
                self._log(logging.WARNING, "%s", warning)
        if outcome.barge_to is not None:
            self.player.stop_before(outcome.barge_to, "barge")
        if outcome.stop_through is not None:             # a barge without seq
            self.player.stop_before(outcome.stop_through + 1, "barge")
        for key in outcome.aborted:
            self.player.abort(key[0], key[1], "dropped")
            self.budget.left(key)
        for sentence in outcome.ready:
            key = (sentence.seq, sentence.sentence_id)
            if self.player.enqueue(sentence):
                self.budget.handed(key)
        for piece in outcome.pieces:
            if self.player.feed(piece) and piece.final:
                self.budget.handed((piece.seq, piece.sentence_id))

    def _maybe_ready(self) -> None:
        if (self.turn.phase in ("thinking", "speaking") and not self.player.busy
                and self.assembler.pending == 0
                and self.turn.answered_all(self.assembler.current_seq)):
            self._set("ready")
