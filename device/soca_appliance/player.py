"""Agent speech output: complete MP3 sentences played one at a time with pygame.mixer.

Owns the mixer, a bounded queue of sentences and the thread that plays them. Sentences are
decoded from memory (no temp files). ``stop_before(seq)`` silences the playing sentence
at once and drops queued ones; callbacks tell the orchestrator when a sentence starts,
stops and when the queue has drained. When the audio output cannot be opened the player
says so, drops what it is given, and retries in the background.

SDL's audio driver is whatever ``SDL_AUDIODRIVER`` says (``alsa``, ``pulse``, ``dummy``,
``disk``...); this module never sets it.
"""
from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")   # no banner on the kiosk's log
import pygame  # noqa: E402

from .assembler import Sentence  # noqa: E402

log = logging.getLogger("soca.player")

SPEECH_CHANNEL = 0
CUE_CHANNEL = 1


@dataclass(frozen=True)
class OutputInfo:
    frequency: int
    channels: int
    buffer: int
    driver: str

    @property
    def buffer_ms(self) -> float:
        return 1000.0 * self.buffer / self.frequency


@dataclass
class PlayerCallbacks:
    on_start: Callable[[Sentence], None] = lambda s: None
    on_stop: Callable[[Sentence, str], None] = lambda s, reason: None   # cut short
    on_idle: Callable[[], None] = lambda: None                           # queue drained
    on_error: Callable[[str], None] = lambda message: None
    on_output: Callable[[OutputInfo], None] = lambda info: None
    # Far-end reference for a future echo canceller: the PCM that starts playing, and when.
    on_reference: Optional[Callable[[bytes, float, OutputInfo], None]] = None


class Player:
    def __init__(self, callbacks: Optional[PlayerCallbacks] = None, *, frequency: int = 22050,
                 buffer: int = 512, max_queue: int = 32, retry_s: float = 5.0) -> None:
        self.cb = callbacks or PlayerCallbacks()
        self.frequency = frequency
        self.buffer = buffer
        self.max_queue = max_queue
        self.retry_s = retry_s
        self.info: Optional[OutputInfo] = None
        self.played = 0
        self.dropped = 0
        self._queue: deque[Sentence] = deque()
        self._current: Optional[Sentence] = None
        self._decoding: Optional[Sentence] = None
        self._decode_cancelled = False
        self._sound: Optional[pygame.mixer.Sound] = None
        self._ends_at = 0.0
        self._quiet_since = time.monotonic()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="player", daemon=True)

    # --- API for other threads -----------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def enqueue(self, sentence: Sentence) -> bool:
        with self._cond:
            if self._closed:
                return False
            if self.info is None:
                self.dropped += 1
                log.warning("no audio output: sentence seq %s id %r not played",
                            sentence.seq, sentence.sentence_id)
                return False
            if len(self._queue) >= self.max_queue:
                self.dropped += 1
                log.warning("playback queue full (%d): sentence seq %s id %r dropped",
                            self.max_queue, sentence.seq, sentence.sentence_id)
                return False
            self._queue.append(sentence)
            self._cond.notify_all()
        return True

    def stop_before(self, seq: int, reason: str) -> list[Sentence]:
        """Silence the playing sentence and drop queued ones whose seq is below ``seq``."""
        return self._stop(lambda s: s.seq < seq, reason)

    def stop_all(self, reason: str) -> list[Sentence]:
        return self._stop(lambda s: True, reason)

    def play_cue(self, wav_or_mp3: bytes) -> bool:
        """A short sound (the button's chime) on its own channel, not through the queue."""
        with self._cond:
            if self.info is None or self._closed:
                return False
            try:
                sound = pygame.mixer.Sound(file=io.BytesIO(wav_or_mp3))
                pygame.mixer.Channel(CUE_CHANNEL).play(sound)
            except pygame.error as exc:
                log.warning("cue sound could not play: %s", exc)
                return False
        return True

    @property
    def busy(self) -> bool:
        with self._cond:
            return (self._current is not None or self._decoding is not None
                    or bool(self._queue))

    def quiet_for(self) -> float:
        """Seconds since the speaker last played speech (0 while it plays)."""
        with self._cond:
            if self._current is not None:
                return 0.0
            return time.monotonic() - self._quiet_since

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 1.0) -> None:
        self.stop_all("shutdown")
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the player thread ---------------------------------------------------------

    def _stop(self, match: Callable[[Sentence], bool], reason: str) -> list[Sentence]:
        stopped: list[Sentence] = []
        with self._cond:
            if self._current is not None and match(self._current):
                stopped.append(self._current)
                self._halt()
            if self._decoding is not None and match(self._decoding):
                stopped.append(self._decoding)
                self._decode_cancelled = True
            kept = [s for s in self._queue if not match(s)]
            stopped += [s for s in self._queue if match(s)]
            self._queue = deque(kept)
            self._cond.notify_all()
        for sentence in stopped:
            self.cb.on_stop(sentence, reason)
        if stopped and not self.busy:
            self.cb.on_idle()
        return stopped

    def _halt(self) -> None:
        # Called with the lock held: the channel goes silent within one mixer buffer.
        try:
            pygame.mixer.Channel(SPEECH_CHANNEL).stop()
        except pygame.error:
            pass
        self._current = None
        self._sound = None
        self._quiet_since = time.monotonic()

    def _run(self) -> None:
        try:
            while not self._closed:
                if self.info is None:
                    if not self._open_output():
                        with self._cond:
                            self._cond.wait(self.retry_s)
                        continue
                self._step()
        finally:
            self._close_output()

    def _open_output(self) -> bool:
        try:
            pygame.mixer.init(frequency=self.frequency, size=-16, channels=1, buffer=self.buffer)
            pygame.mixer.set_num_channels(2)
            freq, _fmt, channels = pygame.mixer.get_init()
        except pygame.error as exc:
            self.cb.on_error(f"audio output failed to open: {exc}; retrying in {self.retry_s:g} s")
            return False
        driver = os.environ.get("SDL_AUDIODRIVER") or "SDL default"
        with self._cond:
            self.info = OutputInfo(freq, channels, self.buffer, driver)
        log.info("audio output open: %d Hz, %d channel(s), buffer %d samples (%.1f ms), "
                 "driver %s", freq, channels, self.buffer, self.info.buffer_ms, driver)
        self.cb.on_output(self.info)
        return True

    def _close_output(self) -> None:
        if self.info is not None:
            try:
                pygame.mixer.quit()
            except pygame.error:
                pass

    def _step(self) -> None:
        with self._cond:
            while not self._closed and self._current is None and not self._queue:
                self._cond.wait(0.5)
            if self._closed:
                return
            if self._current is not None:
                self._wait_for_end()
                return
            sentence = self._queue.popleft()
            self._decoding, self._decode_cancelled = sentence, False
        sound = self._decode(sentence)
        with self._cond:
            # A stop may have come while decoding, after the sentence left the queue.
            if self._decode_cancelled or self._closed:
                sound = None
            self._decoding = None
            if sound is None:
                idle = not self._queue
            else:
                channel = pygame.mixer.Channel(SPEECH_CHANNEL)
                channel.play(sound)
                self._current, self._sound = sentence, sound
                self._ends_at = time.monotonic() + sound.get_length()
                self.played += 1
                idle = False
        if sound is None:
            if idle:
                self.cb.on_idle()
            return
        self.cb.on_start(sentence)
        if self.cb.on_reference is not None and self.info is not None:
            self.cb.on_reference(sound.get_raw(), time.monotonic(), self.info)

    def _wait_for_end(self) -> None:
        # Called with the lock held. Sleep until the sentence should end, then poll the
        # channel briefly: the mixer drains its last buffer a little after get_length().
        remaining = self._ends_at - time.monotonic()
        if remaining > 0.005:
            self._cond.wait(remaining)
            return
        if pygame.mixer.Channel(SPEECH_CHANNEL).get_busy() and remaining > -2.0:
            self._cond.wait(0.005)
            return
        self._current = None
        self._sound = None
        self._quiet_since = time.monotonic()
        idle = not self._queue
        if idle:
            self._cond.release()
            try:
                self.cb.on_idle()
            finally:
                self._cond.acquire()

    def _decode(self, sentence: Sentence) -> Optional[pygame.mixer.Sound]:
        try:
            return pygame.mixer.Sound(file=io.BytesIO(sentence.mp3))
        except pygame.error:
            # SDL_mixer reports undecodable bytes as a missing libmodplug: say what it is.
            self.dropped += 1
            self.cb.on_error(f"sentence seq {sentence.seq} id {sentence.sentence_id!r} is not "
                             f"valid MP3 ({len(sentence.mp3)} bytes); skipped")
            return None

