"""Push-to-talk (``button_mode = "push_to_talk"``): what a press means, and which frames go up.

Pure logic, no threads, no clock of its own (times are passed in). :class:`PttGate` stands
where the VAD gate stands in the capture path: while the button is held, frames go up,
preceded by the pre-roll (the ring of frames before the press, the same idea as
:class:`~soca_appliance.vad.VadGate`'s, so the first syllable spoken as the finger lands is
not cut); once it is released the utterance is over and ``stop`` follows its last frame. A
press shorter than ``tap_ms`` is a tap, not speech: nothing goes up (the audio of a press
that becomes a hold is still in the ring). :class:`PressClassifier` tells a press to talk
from a double press (which toggles mute in this mode, as the long press does otherwise).

Threads: the button's callbacks (gpiozero's thread) call :meth:`PttGate.press` and
:meth:`PttGate.release`, which only set plain attributes; the capture thread calls
:meth:`PttGate.process` and reads them once per frame.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

from .framing import Frame
from .vad import GateResult

PRE_ROLL_MS = 300          # as the VAD gate's
TAP_MS = 200               # shorter presses are taps: they send nothing
DOUBLE_S = 0.5             # a second tap within this long after the first: a double press


class PttGate:
    def __init__(self, frame_ms: int = 20, pre_roll_ms: int = PRE_ROLL_MS,
                 tap_ms: int = TAP_MS) -> None:
        self._pre_frames = max(1, pre_roll_ms // frame_ms)
        self._tap_frames = max(1, -(-tap_ms // frame_ms))
        self._ring: deque[Frame] = deque(maxlen=self._pre_frames + self._tap_frames)
        self._pressed = False          # the button, as its callbacks last said
        self._presses = 0              # presses so far (a press-release between two frames)
        self._seen = 0                 # presses the capture thread has seen
        self._held = 0                 # frames seen during the current press
        self.active = False            # frames are going up
        self.utterances = 0

    @property
    def pressed(self) -> bool:
        return self._pressed

    # the button's thread
    def press(self) -> None:
        self._presses += 1
        self._pressed = True

    def release(self) -> None:
        self._pressed = False

    # the capture thread
    def process(self, frame: Frame) -> GateResult:
        pressed, presses = self._pressed, self._presses
        new_press = presses != self._seen
        self._seen = presses
        result = GateResult()
        if self.active:
            if pressed and not new_press:
                result.send = [frame]
                return result
            # Released (or released and pressed again since the last frame): the utterance
            # ended before this frame.
            self.active = False
            self._held = 0
            result.ended = True
            self._ring.clear()
        if new_press or not pressed:
            self._held = 0
        self._ring.append(frame)
        if not pressed:
            return result
        self._held += 1
        if self._held >= self._tap_frames:
            self.active = True
            self.utterances += 1
            result.started = True
            result.send = list(self._ring)[-(self._pre_frames + self._held):]
            self._ring.clear()
        return result

    def reset(self) -> None:
        """A new session, or mute: no utterance is in progress. A button still held
        starts again (with a fresh tap wait) at the next frame."""
        self.active = False
        self._held = 0
        self._seen = self._presses - 1 if self._pressed else self._presses
        self._ring.clear()


@dataclass
class PressClassifier:
    """A press is ``"talk"`` (released: ``"release"``), or the second of two taps in quick
    succession, ``"double"`` (its release: ``"none"``)."""
    tap_s: float = TAP_MS / 1000
    double_s: float = DOUBLE_S
    _down_at: Optional[float] = None
    _tap_ended: Optional[float] = None     # when the last tap was released
    _double: bool = False

    def down(self, now: float) -> str:
        self._double = (self._tap_ended is not None and now - self._tap_ended <= self.double_s)
        self._tap_ended = None
        self._down_at = now
        return "double" if self._double else "talk"

    def up(self, now: float) -> str:
        if self._down_at is None:
            return "none"                  # a release without a press (started held)
        tap = now - self._down_at < self.tap_s
        self._down_at = None
        if self._double:
            self._double = False
            return "none"
        self._tap_ended = now if tap else None
        return "release"


class PushToTalk:
    """What the orchestrator holds in push-to-talk mode: the gate and the classifier,
    driven by the button's press and release (``now`` from the caller's clock)."""

    def __init__(self, frame_ms: int = 20) -> None:
        self.gate = PttGate(frame_ms)
        self.presses = PressClassifier()

    def down(self, now: float) -> str:
        """``"talk"`` (the gate opens once the press outlasts a tap) or ``"double"``."""
        action = self.presses.down(now)
        if action == "talk":
            self.gate.press()
        return action

    def up(self, now: float) -> str:
        self.gate.release()
        return self.presses.up(now)
