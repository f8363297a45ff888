"""The orchestrator's counters, and the one budget of pending sentences.

:class:`Counters` are bumped from the source, link, player, button and control threads:
every change goes through :meth:`Counters.add` under the counters' own small lock, and
:meth:`Counters.snapshot` reads them all at one instant. Reading one attribute stays as
cheap as before. The one exception is ``frames_captured``: only the capture thread writes
it, 50 times a second, so it is a plain ``+= 1`` there (no other writer to race with; the
lock and the call cost more than the rest of the frame's bookkeeping).

:class:`SentenceBudget` makes ``max_pending_sentences`` cap the TOTAL of sentences being
assembled and sentences handed to the player but not yet started (queued), instead of
capping the assembler and the player's queue separately (twice the memory). Pure logic:
the orchestrator tells it what it handed to the player and what the player reported.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Hashable, Optional


@dataclass
class Counters:
    frames_captured: int = 0
    frames_muted: int = 0
    frames_silenced: int = 0
    utterances: int = 0
    barges_server: int = 0
    barges_button: int = 0
    sentences_played: int = 0
    sentences_stopped: int = 0
    bad_messages: int = 0
    server_errors: int = 0
    chunks_held: int = 0            # audio dropped after a button press, until the server acks
    events_dropped: int = 0         # the event log or the LEDs were blocked for long
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self)
                    if not f.name.startswith("_")}


class SentenceBudget:
    """Sentences queued in the player (handed over, not started yet), so that the
    assembler is given only the room that is left of the one cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._queued: set[Hashable] = set()
        self._started: deque[Hashable] = deque(maxlen=8)     # recently started

    @property
    def queued(self) -> int:
        return len(self._queued)

    def room(self) -> int:
        """How many sentences the assembler may hold open now."""
        return max(0, self.cap - len(self._queued))

    def handed(self, key: Hashable) -> None:
        """A sentence left the assembler for the player's queue (complete, or the last
        piece of a progressive one): counted until it starts, unless it already did."""
        if key not in self._started:
            self._queued.add(key)

    def started(self, key: Hashable) -> None:
        self._started.append(key)
        self._queued.discard(key)

    def left(self, key: Optional[Hashable]) -> None:
        """It was stopped, or the player refused it."""
        self._queued.discard(key)

    def clear(self) -> None:
        """The player holds nothing (it is idle, or every sentence was stopped), or a new
        session began."""
        self._queued.clear()
        self._started.clear()

    def as_dict(self) -> dict[str, Any]:
        return {"cap": self.cap, "queued": len(self._queued)}
