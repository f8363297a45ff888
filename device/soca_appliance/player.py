"""Agent speech output: MP3 sentences played one at a time with pygame.mixer.

Owns the mixer, a bounded queue of sentences and the thread that plays them. Sentences are
decoded from memory (no temp files). A sentence is normally handed over complete
(:meth:`Player.enqueue`); with progressive playback its MP3 arrives in pieces
(:meth:`Player.feed`) and playback starts with the first one: the prefix received so far
is decoded again as it grows and only the new PCM is queued on the channel, which SDL_mixer
plays back to back without a gap. ``stop_before(seq)`` silences the playing sentence at
once and drops queued ones; callbacks tell the orchestrator when a sentence starts, stops
and when the queue has drained. When the audio output cannot be opened (or goes away)
the player says so once, drops what it is given, and reopens it in the background
(:mod:`output`: backoff, device presence, any exception from the mixer; the loop and the
output's life are :mod:`.player_life`, the hand-off to the channel :mod:`.player_channel`).
Nothing that goes wrong in the player thread ends it: a fault is reported, the output
reopened, and playback goes on.

SDL's audio driver is whatever ``SDL_AUDIODRIVER`` says (``alsa``, ``pulse``, ``dummy``,
``disk``...); this module never sets it.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional


from . import devices  # noqa: E402
from .assembler import Piece, Sentence  # noqa: E402
from .backoff import Backoff  # noqa: E402
from .output import AudioOutput, OutputInfo  # noqa: E402
from .output import pygame  # noqa: E402,F401 - imported on first use (tests, bench use it)
from .player_channel import CUE_CHANNEL, SPEECH_CHANNEL, ChannelFeed  # noqa: E402,F401
from .player_life import PlayerLife  # noqa: E402
from .speaker_idle import IdleRelease  # noqa: E402

log = logging.getLogger("soca.player")


@dataclass
class PlayerCallbacks:
    on_start: Callable[[Sentence], None] = lambda s: None
    on_stop: Callable[[Sentence, str], None] = lambda s, reason: None   # cut short
    on_idle: Callable[[], None] = lambda: None                           # queue drained
    on_error: Callable[[str], None] = lambda message: None
    on_output: Callable[[OutputInfo], None] = lambda info: None


class _Item:
    """A sentence on its way to the speaker; its MP3 may still be growing."""

    def __init__(self, sentence: Sentence, complete: bool) -> None:
        self.sentence = sentence
        self.mp3 = bytearray(sentence.mp3)
        self.complete = complete
        self.decoded_size = -1          # len(mp3) at the last decode
        self.decoded_final = False      # that decode saw the whole sentence
        self.emitted = 0                # PCM bytes handed to the channel
        self.started = False

    def stale(self) -> bool:
        """More to decode: new bytes, or the sentence completed since the last decode."""
        return len(self.mp3) != self.decoded_size or (self.complete and not self.decoded_final)

    @property
    def key(self) -> tuple[int, object]:
        return self.sentence.seq, self.sentence.sentence_id


class Player(PlayerLife, ChannelFeed):
    def __init__(self, callbacks: Optional[PlayerCallbacks] = None, *, frequency: int = 22050,
                 buffer: int = 512, max_queue: int = 32, retry_s: float = 5.0,
                 prebuffer_s: float = 0.25, retry_max_s: float = 60.0,
                 presence: Optional[devices.PresenceCheck] = None,
                 poll_s: float = 1.0, speed: float = 1.0) -> None:
        self.cb = callbacks or PlayerCallbacks()
        self.prebuffer_s = prebuffer_s      # progressive: audio in hand before starting
        # How much faster than real time the device takes samples: 1 for a speaker; more
        # for SDL's disk driver with a short SDL_DISKAUDIODELAY (the long-run soak).
        self.speed = speed
        self.frequency = frequency
        self.buffer = buffer
        self.max_queue = max_queue
        self.output = AudioOutput(frequency, buffer, on_error=lambda m: self.cb.on_error(m),
                                  on_output=self._output_open, presence=presence,
                                  retry_s=retry_s, retry_max_s=retry_max_s, poll_s=poll_s)
        self.info: Optional[OutputInfo] = None
        # Until the output's first opening has been tried, sentences wait for it: a
        # greeting that comes before the speaker is open (issue 13) is kept, not dropped.
        self._first_open = True
        self._idle = IdleRelease()      # the mixer closed while quiet (speaker_idle.py)
        self._resuming = False          # reopening a parked mixer: not news to anyone
        self._cue_after_open: Optional[tuple[bytes, bool]] = None
        self.played = 0
        self.dropped = 0
        self.underruns = 0
        self.faults = 0                 # exceptions the player thread survived
        self.stranded = 0               # queued pieces pygame left behind, played by us
        # Our own references to the last sounds handed to the channel: pygame drops its
        # reference on play()/stop() while its callback may still be starting that sound
        # (use after free: "free(): invalid pointer" after hours in the soak).
        self._keep: deque[Any] = deque(maxlen=8)
        self._refilling = False         # after an underrun: prebuffer again before resuming
        self._lost_drops = 0            # sentences dropped in this outage
        self._fault_backoff = Backoff(initial=0.5, cap=30.0)
        self._queue: deque[_Item] = deque()
        self._current: Optional[_Item] = None
        self._pending = bytearray()     # decoded PCM of the current item not yet queued
        self._ends_at = 0.0             # when what the channel holds should have played
        self._quiet_since = float("-inf")     # nothing has played yet
        self._cue_until = float("-inf")       # when the spoken cue playing ends
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="player", daemon=True)

    # --- API for other threads -----------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def enqueue(self, sentence: Sentence) -> bool:
        """A complete sentence, played after those before it."""
        with self._cond:
            if not self._admit(sentence):
                return False
            self._queue.append(_Item(sentence, complete=True))
            self._cond.notify_all()
        return True

    def feed(self, piece: Piece) -> bool:
        """Progressive playback: more MP3 bytes of a sentence (``piece.first`` opens it)."""
        with self._cond:
            if piece.first:
                sentence = Sentence(piece.seq, piece.sentence_id, b"", piece.text)
                if not self._admit(sentence):
                    return False
                item = _Item(sentence, complete=False)
                self._queue.append(item)
            else:
                item = self._find(piece.seq, piece.sentence_id)
                if item is None:
                    return False            # stopped or dropped meanwhile
            item.mp3 += piece.data
            item.complete = piece.final
            self._cond.notify_all()
        return True

    def abort(self, seq: int, sentence_id: object, reason: str) -> bool:
        """Drop one sentence (progressive: it will never complete)."""
        return bool(self._stop(lambda s: (s.seq, s.sentence_id) == (seq, sentence_id), reason))

    def stop_before(self, seq: int, reason: str) -> list[Sentence]:
        """Silence the playing sentence and drop queued ones whose seq is below ``seq``."""
        return self._stop(lambda s: s.seq < seq, reason)

    def stop_all(self, reason: str) -> list[Sentence]:
        return self._stop(lambda s: True, reason)

    def play_cue(self, wav_or_mp3: bytes, speech: bool = False) -> bool:
        """A short sound (the button's chime) on its own channel, not through the queue.

        ``speech``: a spoken cue (:mod:`.cues`). It never plays over the agent: refused
        while a sentence plays or is queued, cut when one starts; and :meth:`quiet_for`
        counts it as speech, so half duplex keeps it off the uplink."""
        with self._cond:
            if self._closed or (speech and (self._current is not None or self._queue)):
                return False
            if self.info is None:
                if not self._idle.want((wav_or_mp3, speech)):
                    return False
                self._cond.notify_all()         # played once the mixer is open again
                return True
            try:
                sound = pygame.mixer.Sound(file=io.BytesIO(wav_or_mp3))
                pygame.mixer.Channel(CUE_CHANNEL).play(sound)
            except Exception as exc:  # noqa: BLE001 - a cue must never raise into a caller
                log.warning("cue sound could not play: %s", exc)
                return False
            until = time.monotonic() + sound.get_length() / self.speed
            self._idle.sounded_until(until)
            if speech:
                self._cue_until = until
        return True

    def set_speech_volume(self, gain: float) -> None:
        """The agent's volume (1.0 = as decoded): ducked while someone talks over it."""
        with self._cond:
            if self.info is None:
                return
            try:
                pygame.mixer.Channel(SPEECH_CHANNEL).set_volume(gain)
            except Exception as exc:  # noqa: BLE001 - never raise into the capture thread
                log.warning("speaker volume could not change: %s", exc)

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._current is not None or bool(self._queue)

    def quiet_for(self) -> float:
        """Seconds since the speaker last played speech or a spoken cue (0 while it plays).

        Without the lock: the capture thread asks on every frame, and the Condition's
        Python-level ``__enter__`` cost more than the rest of the check (bench
        --instructions). Each attribute is one atomic read; the writers (lock held) set
        ``_quiet_since`` BEFORE they clear ``_current``, so a reader that sees no current
        sentence also sees when it ended."""
        current = self._current
        if current is not None and current.started:
            return 0.0
        return max(0.0, time.monotonic() - max(self._quiet_since, self._cue_until))

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 1.0) -> None:
        self.stop_all("shutdown")
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- internals shared with other threads (lock held) ---------------------------

    def _admit(self, sentence: Sentence) -> bool:
        if self._closed:
            return False
        # No output: a parked mixer reopens for this one (want(); the caller notifies), a
        # first opening is waited for; otherwise there is no speaker and it is dropped.
        if self.info is None and not self._idle.want() and not self._first_open:
            self.dropped += 1
            self._lost_drops += 1
            # Once per outage at warning level: a flood of sentences is not a flood of lines.
            log.log(logging.WARNING if self._lost_drops == 1 else logging.DEBUG,
                    "no audio output: sentence seq %s id %r not played%s", sentence.seq,
                    sentence.sentence_id, " (and any more until it is back)"
                    if self._lost_drops == 1 else "")
            return False
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            log.warning("playback queue full (%d): sentence seq %s id %r dropped",
                        self.max_queue, sentence.seq, sentence.sentence_id)
            return False
        return True

    def _find(self, seq: int, sentence_id: object) -> Optional[_Item]:
        for item in ([self._current] if self._current else []) + list(self._queue):
            if item.key == (seq, sentence_id):
                return item
        return None

    def _stop(self, match: Callable[[Sentence], bool], reason: str) -> list[Sentence]:
        stopped: list[Sentence] = []
        with self._cond:
            if self._current is not None and match(self._current.sentence):
                stopped.append(self._current.sentence)
                self._halt()
            stopped += [i.sentence for i in self._queue if match(i.sentence)]
            self._queue = deque(i for i in self._queue if not match(i.sentence))
            self._cond.notify_all()
        for sentence in stopped:
            self.cb.on_stop(sentence, reason)
        if stopped and not self.busy:
            self.cb.on_idle()
        return stopped

    def _halt(self) -> None:
        # The channel goes silent within one mixer buffer; its queued piece goes too.
        if self.info is not None:
            try:
                pygame.mixer.Channel(SPEECH_CHANNEL).stop()
            except Exception:  # noqa: BLE001 - never raise into the caller's thread
                pass
        self._refilling = False
        if self._current is not None and self._current.started:
            self._quiet_since = time.monotonic()
        self._current = None
        self._pending.clear()

    # --- the player thread ---------------------------------------------------------

    def _step(self) -> None:
        if self._park():
            return
        with self._cond:
            if self._current is None:
                if not self._queue:
                    # Back to the loop now and then: it watches the device list.
                    self._cond.wait(self.output.poll_s)
                    return
                if self._closed:
                    return
                self._current = self._queue.popleft()
                self._pending.clear()
                self._refilling = False
            item = self._current
            snapshot = bytes(item.mp3) if item.stale() else None
            complete = item.complete
        pcm = self._decode(item, snapshot, complete) if snapshot is not None else None
        with self._cond:
            if item is not self._current or self._closed:
                return                                  # stopped while decoding
            if snapshot is not None:
                item.decoded_size = len(snapshot)      # retry only when more bytes come
                item.decoded_final = complete
            if pcm is not None:
                # Keep back the last 50 ms of an incomplete sentence: the next, longer
                # decode is the authority on how its tail sounds.
                hold = 0 if complete else self._pcm_bytes(0.05)
                end = max(item.emitted, len(pcm) - hold)
                self._pending += pcm[item.emitted:end]
                item.emitted = end
            elif snapshot is not None and complete:
                self._drop_current()
                finished = not self._queue
                started = False
            if item is self._current:
                started = self._push(item)
                # Tell the world a sentence started before sleeping through it.
                finished = False if started else self._wait(item, complete)
        if started:
            self.played += 1
            self.cb.on_start(dataclasses.replace(item.sentence, mp3=bytes(item.mp3)))
        if finished:
            self.cb.on_idle()

    def _pcm_bytes(self, seconds: float) -> int:
        assert self.info is not None
        return int(self.info.frequency * seconds) * 2 * self.info.channels

    def _drop_current(self) -> None:
        # Called with the lock held, for a complete sentence that did not decode.
        if self._current is not None and self._current.started:
            self._quiet_since = time.monotonic()     # it played a part of itself
        self._current = None
        self._pending.clear()

    def _decode(self, item: _Item, mp3: bytes, complete: bool) -> Optional[bytes]:
        """PCM of ``mp3``, a snapshot of the item's bytes; ``complete``: that snapshot is the
        whole sentence (read with it: the item may have completed since)."""
        try:
            return pygame.mixer.Sound(file=io.BytesIO(mp3)).get_raw()
        except pygame.error:
            if not complete:
                return None          # too little of the sentence yet to find a frame
            # SDL_mixer reports undecodable bytes as a missing libmodplug: say what it is.
            self.dropped += 1
            self.cb.on_error(f"sentence seq {item.sentence.seq} id {item.sentence.sentence_id!r} "
                             f"is not valid MP3 ({len(mp3)} bytes); skipped")
            return None

