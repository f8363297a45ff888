"""The orchestrator: wires source, link, assembler, player and panel, and owns the state.

States: connecting, ready, listening (stt.partial or local speech onset), thinking
(non-empty stt.final), speaking (a sentence playing), error (authentication refused, mic
or speaker gone). Every change is an event and drives the LEDs. Callbacks arrive from the
source, link, player and GPIO threads; one re-entrant lock orders them. Under it nothing
does I/O: events, LED updates and log lines are queued, in order, for the effects thread
(effects.py). What the server says is applied by the :class:`~.conversation.Conversation`
mixin; what a press means (the button and the control socket share :meth:`press`,
:meth:`long_press`, :meth:`set_muted`) by the :class:`~.presses.Presses` mixin.

A link session's conversation state is one :class:`~soca_appliance.turn.Turn`, replaced
with the assembler's and the player's state in one place, :meth:`Appliance._session_start`,
when a new socket opens: before the handshake, so that what the server says between
``ready`` and ``stt.ready`` (a greeting) belongs to the new session and is heard.

Start-up connects first: the audio side (the echo canceller, the player's pygame, the
microphone, and numpy with them) starts once the link is streaming (``stt.ready``), has
failed once, or has audio to play, whichever comes first (issue 13). A greeting sent
before that waits in the player's queue for the speaker's first opening.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from importlib import resources
from typing import Any, Callable, Optional, Protocol

from . import protocol
from .assembler import Assembler, Sentence
from .config import Config
from .conversation import Conversation
from .counters import Counters, SentenceBudget
from .cues import Cues
from .effects import Effects, WarningLimiter
from .events import EventLog
from .framing import Frame
from .indicators import make_panel
from .link import Link, LinkCallbacks, LinkSettings
from .player import OutputInfo, Player, PlayerCallbacks
from .presses import Presses
from .ptt import PushToTalk
from .turn import Turn
from .vad import VadGate

log = logging.getLogger("soca.appliance")

HALF_DUPLEX_SETTLE_S = 0.3     # the room's echo dies down this long after the speaker stops
AUDIO_WAIT_S = 3.0             # at start, the audio side waits this long at most for the link

__all__ = ["Appliance", "Counters", "WarningLimiter", "Source"]


class Source(Protocol):
    name: str

    def start(self, on_frame: Callable[[Frame], None]) -> None: ...

    def stop(self, timeout: float = 1.0) -> None: ...


class Appliance(Conversation, Presses):
    def __init__(self, cfg: Config, events: EventLog, source: Source, private_key: str,
                 *, panel: Any = None, player: Optional[Player] = None,
                 link: Optional[Link] = None) -> None:
        self.cfg = cfg
        self.events = events
        self.source = source
        self.counters = Counters()
        self.muted = False
        self._lock = threading.RLock()
        self.turn = Turn()
        self._faults: set[str] = set()
        self._shown: Optional[tuple[str, bool]] = None
        self._stopping = threading.Event()
        self._gate_reset = threading.Event()      # the source thread resets its own gate
        self._limiter = WarningLimiter()
        self.effects = Effects()
        # One cap for sentences being assembled and sentences queued in the player.
        self.budget = SentenceBudget(cfg.max_pending_sentences)
        self.assembler = Assembler(cfg.max_sentence_bytes, cfg.max_pending_sentences,
                                   cfg.sentence_timeout, cfg.progressive_playback)
        self.gate = VadGate(cfg.vad_aggressiveness, cfg.frame_ms) if cfg.vad else None
        # Echo policy (echo.py), decided when the audio side starts: "auto" is the
        # canceller when it imports, else half duplex.
        self.duplex = cfg.duplex if cfg.duplex in ("half", "full") else "half"
        self.echo: Optional[Any] = None
        self._audio_wanted = threading.Event()      # start the audio side now
        self._own_player = player is None
        self.player = player or Player(PlayerCallbacks(
            on_start=self._sentence_started, on_stop=self._sentence_stopped,
            on_idle=self._playback_idle, on_error=self._audio_error,
            on_output=self._audio_open), buffer=cfg.mixer_buffer,
            max_queue=cfg.max_pending_sentences)   # a backstop: the budget keeps it below
        self.link = link or Link(LinkSettings(
            url=cfg.url, agent_id=cfg.agent_id, lang=cfg.lang, private_key=private_key,
            key_field=cfg.key_field, session_id=cfg.session_id, ca_file=cfg.ca_file,
            connect_timeout=cfg.connect_timeout, ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout, backoff_initial=cfg.backoff_initial,
            backoff_max=cfg.backoff_max, auth_retry=cfg.auth_retry,
            queue_frames=max(5, 500 // cfg.frame_ms)),
            LinkCallbacks(on_connecting=self._connecting, on_session_start=self._session_start,
                          on_connected=self._connected, on_disconnected=self._disconnected,
                          on_message=self.handle, on_bad_message=self._bad_message))
        # issue 14: push-to-talk (ptt.py) and the spoken cues (cues.py)
        self.ptt = PushToTalk(cfg.frame_ms) if cfg.button_mode == "push_to_talk" else None
        self.cues = Cues(cfg.lang, cfg.ready_cue, self.player)
        self.panel = panel if panel is not None else make_panel(
            cfg.gpio, cfg.leds, cfg.button_pin, cfg.long_press, self.button_press,
            self.long_press, *((self.ptt_down, self.ptt_up) if self.ptt else ()))
        if hasattr(source, "on_error"):          # the microphone reports loss and return
            source.on_error = self.mic_error
            source.on_recover = self.mic_recovered
        self._chime = (resources.files("soca_appliance") / "assets" / "chime.wav").read_bytes()

    # --- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        self.effects.start()
        with self._lock:
            self._show()
        self.link.start()
        # stt.ready, the first failure to connect, or audio to play (a greeting), at most
        # AUDIO_WAIT_S: frames sent before stt.ready are dropped anyway.
        self._audio_wanted.wait(AUDIO_WAIT_S)
        self._start_audio()

    def _start_audio(self) -> None:
        from . import echo      # numpy, the canceller: not before the link is up
        duplex, path = echo.attach(self.cfg.duplex, self.cfg.frame_ms)
        with self._lock:
            self.duplex, self.echo = duplex, path
        if path is None:        # no canceller: nothing needs the mixer's silence
            self.player.release_after(self.cfg.speaker_idle_close)
        self.player.start()     # before the microphone: on_frame asks it what plays
        self.source.start(self.on_frame)

    def run(self, stop: threading.Event, tick: Callable[[bool, str], None] = lambda h, s: None
            ) -> None:
        """Block until ``stop`` is set; once a second expire stuck sentences and report
        health (the systemd watchdog is fed only while every worker thread lives)."""
        while not stop.wait(1.0):
            with self._lock:
                self._apply(self.assembler.expire(time.monotonic()))
                if not self.player.busy:
                    self.budget.clear()
            tick(self.healthy(), self.state)

    def shutdown(self) -> None:
        self._stopping.set()
        self.source.stop(0.5)
        if self.echo is not None:
            self.echo.close()                # off the mixer's post-mix hook
        # (the mixer is process-wide: a player thread outliving shutdown would quit a mixer
        # opened since by another player, as in the bench and the tests: let it finish)
        self.player.close(1.5)
        self.link.close(0.8)
        self._emit("state", state="stopped")
        self.effects.close(1.0)          # the event log and the LEDs have their last word
        self.panel.close()

    def healthy(self) -> bool:
        """For the systemd watchdog: every worker thread is still alive."""
        source_alive = getattr(self.source, "alive", lambda: True)()
        return (self.link.alive() and self.player.alive() and self.effects.alive()
                and source_alive)

    @property
    def state(self) -> str:
        with self._lock:
            return "error" if self._faults else self.turn.phase

    def idle(self) -> bool:
        with self._lock:
            return (self.state == "ready" and not self.player.busy
                    and self.assembler.pending == 0)

    def status(self) -> dict[str, Any]:
        with self._lock:
            stats = self.link.stats
            return {"state": self.state, "connected": self.link.streaming,
                    "session_id": self.link.session_id, "seq": self.assembler.current_seq,
                    "muted": self.muted, "faults": sorted(self._faults),
                    "button_mode": self.cfg.button_mode,
                    "counters": {**self.counters.snapshot(),
                                 "frames_sent": stats.frames_sent,
                                 "frames_dropped_not_ready": stats.frames_dropped_not_ready,
                                 "frames_dropped_full": stats.frames_dropped_full,
                                 "connects": stats.connects,
                                 "connect_attempts": stats.attempts,
                                 "sentences_dropped": self.assembler.dropped_sentences,
                                 "chunks_dropped": self.assembler.dropped_chunks}}

    # --- effects: queued under the lock, performed by the effects thread --------------

    def _emit(self, event: str, **fields: Any) -> None:
        if not self.effects.submit(functools.partial(self.events.emit, event, **fields)):
            self.counters.add("events_dropped")

    def _log(self, level: int, message: str, *args: Any) -> None:
        if not log.isEnabledFor(level):
            return                         # (debug lines must not fill the effects queue)
        if not self.effects.submit(functools.partial(log.log, level, message, *args)):
            self.counters.add("events_dropped")

    # --- state (lock held) ------------------------------------------------------------

    def _set(self, phase: str) -> None:
        self.turn.phase = phase
        if phase in ("listening", "thinking"):
            self.player.wake()          # a parked mixer opens before the answer comes
        self._show()

    def _fault(self, name: str, on: bool) -> None:
        if on:
            self._faults.add(name)
        else:
            self._faults.discard(name)
        self._show()

    def _show(self) -> None:
        state = self.state
        if self._shown is None or state != self._shown[0]:
            self._emit("state", state=state)
        if (state, self.muted) != self._shown:
            self._shown = (state, self.muted)
            self.effects.panel(self.panel.show, state, self.muted)

    # --- audio up (the source thread) ------------------------------------------------

    def on_frame(self, frame: Frame) -> None:
        self.counters.frames_captured += 1      # the capture thread is its only writer
        if self.echo is not None:
            # Every frame, muted or not, before VAD and framing: the agent's voice out of
            # the mic; while someone talks over the agent, duck it until the server barges.
            frame, volume = self.echo.process(frame, self.player.quiet_for() == 0.0)
            if volume is not None:
                self.player.set_speech_volume(volume)
        gate = self.ptt.gate if self.ptt is not None else self.gate
        if gate is not None and self._gate_reset.is_set():
            self._gate_reset.clear()
            gate.reset()                 # a new session: no utterance is in progress
        if self.muted:
            self.counters.add("frames_muted")
            return
        if (self.duplex == "half" and self.player.quiet_for() < HALF_DUPLEX_SETTLE_S
                and not (self.ptt is not None and self.ptt.gate.pressed)):
            # (push-to-talk: a held button is the user talking, the agent was barged)
            # The agent is talking: send silence, so the stream stays continuous but the
            # agent cannot hear (and barge on) its own voice.
            frame = Frame(bytes(len(frame.pcm)), frame.t_capture, frame.index)
            self.counters.add("frames_silenced")
        if gate is None:
            self.link.send_audio(frame)
            return
        result = gate.process(frame)
        if result.started:
            self.counters.add("utterances")
            with self._lock:
                if self.turn.phase in ("ready", "thinking"):
                    self._set("listening")
            if self.ptt is None:
                self.cues.speech_started(self.state)     # offline? say so (rate-limited)
        for item in result.send:
            self.link.send_audio(item)
        if result.ended:
            self.link.send_control(protocol.stop_message())    # after its last audio

    # --- link ----------------------------------------------------------------------

    def _connecting(self, attempt: int) -> None:
        with self._lock:
            self._set("connecting")

    def _session_start(self, generation: int) -> None:
        """A new socket is open, before ``start``: the one place where a session's state
        is reset. A new session numbers its seqs afresh: the old session's audio is over."""
        with self._lock:
            self.turn = Turn()
            self.player.stop_all("reconnect")
            self._apply(self.assembler.reset())
            self.budget.clear()
            self._gate_reset.set()
            self._show()

    def _connected(self, session_id: str) -> None:
        with self._lock:
            self._emit("connected", session_id=session_id)
            self._faults.discard("auth")
            if self.turn.phase == "connecting":       # a greeting may be playing already
                self.turn.phase = "ready"
            self._show()
        self._audio_wanted.set()
        self.cues.connected()                          # the optional "ready" cue

    def _disconnected(self, code: Optional[int], reason: str, retry_in: float,
                      auth: bool) -> None:
        with self._lock:
            self._emit("disconnected", code=code, reason=reason, retry_in=retry_in)
            # Half-assembled sentences of the ended session can never complete.
            self._apply(self.assembler.reset())
            if auth:
                self._emit("error", message=f"authentication refused: {reason}")
                self._faults.add("auth")
            self._set("connecting")
        self._audio_wanted.set()             # offline: the cues and the button need it

    def _bad_message(self, error: str) -> None:
        self.counters.add("bad_messages")
        with self._lock:
            self._log(logging.WARNING, "bad message from the server: %s", error)

    # --- player --------------------------------------------------------------------

    def _sentence_started(self, sentence: Sentence) -> None:
        self.counters.add("sentences_played")
        with self._lock:
            self.budget.started((sentence.seq, sentence.sentence_id))
            self._emit("sentence.play", seq=sentence.seq, sentence_id=sentence.sentence_id,
                       bytes=len(sentence.mp3), text=sentence.text)
            self._set("speaking")

    def _sentence_stopped(self, sentence: Sentence, reason: str) -> None:
        self.counters.add("sentences_stopped")
        with self._lock:
            self.budget.left((sentence.seq, sentence.sentence_id))
            self._emit("sentence.stop", seq=sentence.seq, sentence_id=sentence.sentence_id,
                       reason=reason)

    def _playback_idle(self) -> None:
        with self._lock:
            if not self.player.busy:
                self.budget.clear()
            if self._stopping.is_set() or self.turn.phase != "speaking":
                return
            answered = self.turn.answered_all(self.assembler.current_seq)
            self._set("ready" if answered and self.assembler.pending == 0 else "thinking")

    def _audio_error(self, message: str) -> None:
        with self._lock:
            self._emit("error", message=message)
            if "failed to open" in message:
                self._fault("speaker", True)

    def _audio_open(self, info: OutputInfo) -> None:
        if self.echo is not None:            # the reference: what the mixer now mixes
            self.echo.mixer_opened(info.frequency, info.channels)
        with self._lock:
            self._emit("audio.output", frequency=info.frequency, channels=info.channels,
                       buffer=info.buffer, buffer_ms=round(info.buffer_ms, 1),
                       driver=info.driver)
            self._fault("speaker", False)
        self.cues.output_opened()              # the ready cue, when it came first

    def mic_error(self, message: str) -> None:
        with self._lock:
            self._emit("error", message=message)
            self._fault("mic", True)

    def mic_recovered(self) -> None:
        with self._lock:
            self._emit("mic.recovered")
            self._fault("mic", False)
