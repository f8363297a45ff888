"""Speech gating with webrtcvad: send audio only around speech.

Pure frame-in, frames-out logic (no threads, no clock): a ring buffer holds the pre-roll
so the first syllable is not cut, a hangover keeps the tail of the utterance, and the end
of an utterance is reported so the orchestrator can send ``{"type":"stop"}``.

webrtcvad alone calls the first ~80 ms of any new sound "speech" and, at a noisy mic's
floor, short bursts too; so a frame only counts as voiced when webrtcvad says so *and* it
stands out of a tracked noise floor, and no utterance starts during a short warm-up.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import webrtcvad

from .framing import Frame, rms_dbfs
from .protocol import SAMPLE_RATE

_SUB_BYTES = SAMPLE_RATE // 100 * 2       # webrtcvad judges 10 ms pieces here


@dataclass
class GateResult:
    send: list[Frame] = field(default_factory=list)
    started: bool = False       # speech onset in this frame
    ended: bool = False         # the utterance is over: send stop


class NoiseFloor:
    """The background level in dBFS: follows quiet frames quickly, loud ones slowly."""

    def __init__(self, rise_db_per_frame: float = 0.05) -> None:
        self.level: float | None = None
        self.rise = rise_db_per_frame

    def update(self, db: float) -> float:
        if self.level is None or db < self.level:
            self.level = db if self.level is None else (self.level + db) / 2
        else:
            self.level = min(db, self.level + self.rise)
        return self.level


class VadGate:
    def __init__(self, aggressiveness: int = 2, frame_ms: int = 20, pre_roll_ms: int = 300,
                 hangover_ms: int = 600, onset_window: int = 3, onset_voiced: int = 2,
                 snr_db: float = 9.0, floor_dbfs: float = -55.0, warmup_ms: int = 200) -> None:
        self.aggressiveness = aggressiveness
        self._vad = webrtcvad.Vad(aggressiveness)
        self._noise = NoiseFloor()
        self.snr_db = snr_db
        self.floor_dbfs = floor_dbfs
        self._warmup_frames = max(1, warmup_ms // frame_ms)
        self._seen = 0
        self.frame_ms = frame_ms
        self._pre_roll: deque[Frame] = deque(maxlen=max(1, pre_roll_ms // frame_ms))
        self._hangover_frames = max(1, hangover_ms // frame_ms)
        self._recent: deque[bool] = deque(maxlen=onset_window)
        self._onset_voiced = onset_voiced
        self.active = False
        self._quiet = 0
        self.utterances = 0

    def is_speech(self, pcm: bytes) -> bool:
        """webrtcvad's verdict, majority over the frame's 10 ms pieces."""
        pieces = [pcm[i:i + _SUB_BYTES] for i in range(0, len(pcm) - _SUB_BYTES + 1, _SUB_BYTES)]
        return sum(self._vad.is_speech(p, SAMPLE_RATE) for p in pieces) * 2 >= len(pieces)

    def stands_out(self, pcm: bytes) -> bool:
        level = rms_dbfs(pcm)
        floor = self._noise.update(level)
        return level > self.floor_dbfs and level > floor + self.snr_db

    def process(self, frame: Frame) -> GateResult:
        voiced = self.is_speech(frame.pcm)
        loud = self.stands_out(frame.pcm)
        # Starting needs both verdicts; once speaking, webrtcvad alone decides, so its
        # own smoothing keeps short pauses inside the utterance.
        speech = voiced if self.active else voiced and loud
        self._seen += 1
        self._recent.append(speech)
        result = GateResult()
        if not self.active:
            if self._seen > self._warmup_frames and sum(self._recent) >= self._onset_voiced:
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
        # A fresh webrtcvad too: the old one's own hangover would still say "speech".
        self._vad = webrtcvad.Vad(self.aggressiveness)
        self._noise = NoiseFloor()
        self._seen = 0
        self.active = False
        self._quiet = 0
        self._recent.clear()
        self._pre_roll.clear()
