"""The playing sentence's PCM onto SDL_mixer's speech channel, and its end: the prebuffer
against network jitter, refilling after an underrun, the channel's one queue slot (SDL_mixer
plays a queued piece with no gap), a piece pygame lost in the hand-off, and when the last
buffer has really drained.

A mixin of :class:`~soca_appliance.player.Player`, which owns the queue, the lock (its
condition) and the decoding; both methods run in the player thread with the lock held.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Optional

from .output import channel_busy as _busy
from .output import pygame
from .output import stranded_queue as _stranded

SPEECH_CHANNEL = 0
CUE_CHANNEL = 1


class ChannelFeed:
    # Provided by the player.
    _cond: threading.Condition
    _current: Optional[Any]
    _queue: deque[Any]
    _keep: deque[Any]
    _pending: bytearray
    _refilling: bool
    _ends_at: float
    _quiet_since: float
    _cue_until: float
    prebuffer_s: float
    speed: float
    stranded: int
    underruns: int
    _pcm_bytes: Callable[[float], int]

    def _push(self, item: Any) -> bool:
        """Hand pending PCM to the channel (lock held). True when the sentence starts."""
        channel = pygame.mixer.Channel(SPEECH_CHANNEL)
        stranded = _stranded(channel)
        if stranded is not None:                 # pygame lost a hand-off: play it now
            self.stranded += 1
            channel.play(stranded)
        busy = _busy(channel)
        if (item.started and not busy and not self._refilling
                and (not item.complete or self._pending)):
            # The network fell behind the speaker: gather a prebuffer again rather than
            # resume on the one MP3 frame in hand and stall again right after it (unless
            # the rest of the sentence is all here).
            self.underruns += 1
            self._refilling = not item.complete
        if not self._pending:
            return False
        if (not busy and not item.complete
                and (not item.started or self._refilling)
                and len(self._pending) < self._pcm_bytes(self.prebuffer_s)):
            return False                     # a little in hand first, against network jitter
        if channel.get_queue() is not None:
            return False                     # the channel already holds the next piece
        sound = pygame.mixer.Sound(buffer=bytes(self._pending))
        self._keep.append(sound)
        now = time.monotonic()
        if busy:
            channel.queue(sound)             # SDL_mixer starts it with no gap
        else:
            channel.play(sound)
            self._ends_at = now
            self._refilling = False
            if self._cue_until > now:       # the agent wins over a spoken cue
                pygame.mixer.Channel(CUE_CHANNEL).stop()
                self._cue_until = now
        self._ends_at = max(self._ends_at, now) + sound.get_length() / self.speed
        self._pending.clear()
        first = not item.started
        item.started = True
        return first

    def _wait(self, item: Any, complete: bool) -> bool:
        """Sleep until there is something to do (lock held). True when the queue drained."""
        remaining = self._ends_at - time.monotonic()
        if self._pending and item.started:
            self._cond.wait(min(0.01, max(remaining, 0.001)))   # a queue slot frees soon
            return False
        if not complete or item.stale():
            self._cond.wait(0.05 if not item.started else min(0.05, max(remaining, 0.001)))
            return False
        if remaining > 0.005:
            self._cond.wait(remaining)
            return False
        # (A device running slower than the estimate gets 2 s of audio's grace, and never
        # less than half a second of wall time: a sped-up device can be starved.)
        channel = pygame.mixer.Channel(SPEECH_CHANNEL)
        stranded = _stranded(channel)
        if stranded is not None:                 # the sentence's last piece, left behind
            self.stranded += 1
            channel.play(stranded)
            self._ends_at = time.monotonic() + stranded.get_length() / self.speed
            return False
        if (_busy(channel)
                and remaining > -max(2.0 / self.speed, 0.5)):
            self._cond.wait(0.005)      # the mixer drains its last buffer a little later
            return False
        self._quiet_since = time.monotonic()     # before _current: see quiet_for
        self._current = None
        return not self._queue
