"""Speech gating with webrtcvad: send audio only around speech.

Pure frame-in, frames-out logic (no threads, no clock): a ring buffer holds the pre-roll
so the first syllable is not cut, a hangover keeps the tail of the utterance, and the end
of an utterance is reported so the orchestrator can send ``{"type":"stop"}``.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import webrtcvad

from .framing import Frame
from .protocol import SAMPLE_RATE

_SUB_BYTES = SAMPLE_RATE // 100 * 2       # webrtcvad judges 10 ms pieces here


@dataclass
class GateResult:
    send: list[Frame] = field(default_factory=list)
    started: bool = False       # speech onset in this frame
    ended: bool = False         # the utterance is over: send stop


class VadGate:
    def __init__(self, aggressiveness: int = 2, frame_ms: int = 20, pre_roll_ms: int = 300,
                 hangover_ms: int = 600, onset_window: int = 3, onset_voiced: int = 2) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)
        self.frame_ms = frame_ms
        self._pre_roll: deque[Frame] = deque(maxlen=max(1, pre_roll_ms // frame_ms))
        self._hangover_frames = max(1, hangover_ms // frame_ms)
        self._recent: deque[bool] = deque(maxlen=onset_window)
        self._onset_voiced = onset_voiced
        self.active = False
        self._quiet = 0
        self.utterances = 0

    def is_speech(self, pcm: bytes) -> bool:
        pieces = [pcm[i:i + _SUB_BYTES] for i in range(0, len(pcm) - _SUB_BYTES + 1, _SUB_BYTES)]
        voiced = sum(self._vad.is_speech(p, SAMPLE_RATE) for p in pieces)
        return voiced * 2 >= len(pieces)

    def process(self, frame: Frame) -> GateResult:
        speech = self.is_speech(frame.pcm)
        self._recent.append(speech)
        result = GateResult()
        if not self.active:
            if sum(self._recent) >= self._onset_voiced:
                self.active = True
                self._quiet = 0
                self.utterances += 1
                result.started = True
                result.send = list(self._pre_roll) + [frame]
                self._pre_roll.clear()
            else:
                self._pre_roll.append(frame)
            return result
        result.send = [frame]
        self._quiet = 0 if speech else self._quiet + 1
        if self._quiet >= self._hangover_frames:
            self.active = False
            self._recent.clear()
            result.ended = True
        return result

    def reset(self) -> None:
        self.active = False
        self._quiet = 0
        self._recent.clear()
        self._pre_roll.clear()
