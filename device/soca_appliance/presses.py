"""What the button and the control socket do: a short press (a barge, or a chime when there
is nothing to stop), push-to-talk's down and up, a long press, mute.

A mixin of :class:`~soca_appliance.appliance.Appliance`: the orchestrator owns the state and
the lock; this module owns what one press means. The button's thread and the control
socket's thread both come here, so that ``ctl barge`` is the button, exactly. Each action
takes the lock, queues its events as effects, and then waits (at most ``FLUSH_S``) for them
to be done, outside the lock, so that the caller can report what happened.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from . import protocol
from .assembler import Assembler
from .counters import Counters, SentenceBudget
from .cues import Cues
from .effects import Effects
from .link import Link
from .player import Player
from .ptt import PushToTalk
from .turn import Turn
from .vad import VadGate

FLUSH_S = 1.0                  # the button and ctl wait this long at most for their effects


class Presses:
    # Provided by the orchestrator.
    _lock: threading.RLock
    turn: Turn
    assembler: Assembler
    player: Player
    budget: SentenceBudget
    counters: Counters
    link: Link
    cues: Cues
    effects: Effects
    ptt: Optional[PushToTalk]
    gate: Optional[VadGate]
    muted: bool
    _chime: bytes
    _emit: Callable[..., None]              # (event, **fields): an event, as an effect
    _set: Callable[[str], None]             # the conversation phase, shown
    _show: Callable[[], None]               # the LEDs, as an effect
    _apply: Callable[[Any], None]           # the assembler's outcomes (conversation.py)
    state: Any                              # the state shown (a property)

    def button_press(self) -> None:
        self.press(source="button")

    def press(self, source: str = "button", chime: bool = True) -> str:
        """A short press: interrupt the agent, or a chime when there is nothing to stop
        (the button, offline or in error: the offline cue instead, see cues.py)."""
        with self._lock:
            barge = self.player.busy or self.turn.phase in ("speaking", "thinking")
            if barge:
                self.counters.add("barges_button")
                seq = self.assembler.current_seq
                self.player.stop_all("button")                  # silence first, then talk
                self._apply(self.assembler.interrupt())
                self.turn.press(seq)
                self.budget.clear()
                self._emit("barge", seq=seq, source=source)
                self.link.send_control(protocol.barge_message(), urgent=True)
                self._set("ready")
        self.effects.flush(FLUSH_S)
        if barge:
            return "barged"
        if source == "button" and self.cues.speech_started(self.state):
            return "offline"
        if not chime:
            return "idle"
        self.player.play_cue(self._chime)
        return "chime"

    def ptt_down(self) -> None:
        """Push-to-talk: the button went down. It barges the agent (the press's own path)
        and the gate opens; the second of two taps toggles mute instead."""
        assert self.ptt is not None
        if self.ptt.down(time.monotonic()) == "double":
            self.long_press()
            return
        self.press(source="button", chime=False)

    def ptt_up(self) -> None:
        assert self.ptt is not None
        self.ptt.up(time.monotonic())       # the capture thread sends stop after the last frame

    def long_press(self) -> None:
        self.set_muted(not self.muted)

    def set_muted(self, muted: bool) -> None:
        with self._lock:
            if muted == self.muted:
                return
            self.muted = muted
            gate = self.ptt.gate if self.ptt is not None else self.gate
            if muted and gate is not None and gate.active:
                gate.reset()                # the utterance ends here: let the server know
                self.link.send_control(protocol.stop_message())   # after its queued audio
            self._emit("mute", muted=muted)
            self._show()                    # the privacy glow, same state
        self.effects.flush(FLUSH_S)
