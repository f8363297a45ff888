"""The simulator's barge-in gate: may this utterance interrupt the agent? Pure logic.

The vendor page's gate table says the server barges only on meaningful speech: at least
10 characters and 2 words (``MIN_PARTIAL_CHARS``, ``MIN_PARTIAL_WORDS``), STT confidence
0.30, within 1.5 s after VAD onset (``SPEECH_START_WINDOW``), at most one barge per 0.8 s
(``BARGE_COOLDOWN``), never on fillers (uh, um, hmm, eh, ah, ya, yah).

The simulator's STT is fake (canned texts), so it imitates what it can:

- *Meaningful speech* becomes a minimum amount of voiced audio: ``min_speech_s`` (0.6 s)
  of 20 ms sub-frames that webrtcvad calls speech, counted from the onset. Ten characters
  and two words take about 0.7 s at a conversational 12 to 15 characters per second, and
  VAD calls about 90 % of such speech voiced.
- *Within the window*: the minimum must be reached less than ``window_s`` (1.5 s) of audio
  after the onset; speech that gets there later (sporadic sounds, a slow start) never
  barges.
- *Cooldown*: at most one barge per ``cooldown_s`` (0.8 s), counted from the last barge the
  simulator sent, a manual one included. Time here is the larger of the audio received
  since (a client may send faster than real time) and the wall clock (a VAD-gated client
  sends nothing between utterances). Speech that becomes meaningful during the cooldown
  barges when the cooldown ends, if that is still within its window.

It cannot imitate STT confidence (there is no recognizer: every voiced frame counts) nor
filler words (a long "ummm" is voiced speech and barges like words do).
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

SUBFRAME_S = 0.02


@dataclass(frozen=True)
class GateConfig:
    min_speech_s: float = 0.6
    window_s: float = 1.5
    cooldown_s: float = 0.8
    # the wall clock; tests pass a frozen one so that only received audio counts
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)


class Verdict(enum.Enum):
    WAIT = "wait"            # not meaningful yet; keep listening
    BARGE = "barge"
    COOLDOWN = "cooldown"    # meaningful, but the last barge is too recent; ask again
    LATE = "late"            # the window after onset closed first: this utterance never barges


class BargeGate:
    """Per session: voiced audio since the onset, and when the last barge was sent.

    Frames are counted in 20 ms sub-frames of received audio (their index in the session).
    """

    def __init__(self, config: Optional[GateConfig] = None) -> None:
        self.config = config or GateConfig()
        self._min_voiced = max(1, round(self.config.min_speech_s / SUBFRAME_S))
        self._window = max(1, round(self.config.window_s / SUBFRAME_S))
        self._onset = 0
        self._voiced = 0
        self._last_frame: Optional[int] = None
        self._last_wall = 0.0

    def onset(self, frame: int, voiced_so_far: int) -> None:
        """A new utterance began at sub-frame ``frame`` with ``voiced_so_far`` voiced."""
        self._onset = frame
        self._voiced = voiced_so_far

    def voiced(self) -> None:
        self._voiced += 1

    @property
    def voiced_s(self) -> float:
        return self._voiced * SUBFRAME_S

    def evaluate(self, frame: int) -> Verdict:
        """Whether the utterance may barge now, at sub-frame ``frame``."""
        if self._voiced < self._min_voiced:
            return Verdict.LATE if frame - self._onset >= self._window else Verdict.WAIT
        if frame - self._onset >= self._window:
            return Verdict.LATE
        if self.since_last_barge(frame) < self.config.cooldown_s:
            return Verdict.COOLDOWN
        return Verdict.BARGE

    def since_last_barge(self, frame: int) -> float:
        """Seconds since the last barge: the larger of audio received and wall clock."""
        if self._last_frame is None:
            return float("inf")
        audio = (frame - self._last_frame) * SUBFRAME_S
        wall = self.config.clock() - self._last_wall
        return max(audio, wall)

    def barged(self, frame: int) -> None:
        """A barge (of any kind) was sent when ``frame`` sub-frames had been received."""
        self._last_frame = frame
        self._last_wall = self.config.clock()
