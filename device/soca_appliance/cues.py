"""Spoken cues: when the appliance itself says something, so nobody talks to a dead box.

:class:`CuePolicy` is pure (times passed in, no I/O): someone starts speaking (the VAD
gate's utterance start, a press of the button) while the appliance is offline or in error,
and it says once that it cannot reach the assistant right now, at most once per
``offline_every`` seconds; with ``ready_cue = true`` it says "ready" when it first connects
after boot. A cue never plays over the agent: not while a sentence plays or is queued (the
player refuses a spoken cue then, and cuts one when a sentence starts). :func:`load_cues`
reads the bundled MP3s (``assets/cue-NAME-LANG.mp3``, made by ``scripts/make_assets.py``).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

log = logging.getLogger("soca.cues")

CUE_NAMES = ("offline", "ready")
OFFLINE_EVERY_S = 60.0
OFFLINE_STATES = ("connecting", "error")


@dataclass
class CuePolicy:
    ready_cue: bool = False
    offline_every: float = OFFLINE_EVERY_S
    _last_offline: float = float("-inf")
    _connected_once: bool = False

    def speech_started(self, now: float, state: str, agent_busy: bool) -> str | None:
        """Someone started speaking: ``"offline"`` when the appliance cannot answer and
        has not said so for ``offline_every`` seconds, else None."""
        if state not in OFFLINE_STATES or agent_busy:
            return None
        if now - self._last_offline < self.offline_every:
            return None
        self._last_offline = now
        return "offline"

    def connected(self, agent_busy: bool) -> str | None:
        """The link is up: ``"ready"`` the first time after boot (when asked for, and
        nothing of the agent's is playing: a greeting says it better)."""
        first, self._connected_once = not self._connected_once, True
        return "ready" if first and self.ready_cue and not agent_busy else None


def load_cues(lang: str) -> dict[str, bytes]:
    """The bundled cues in ``lang`` (the package's assets); a missing one is logged and
    left out (the appliance then stays silent where it would have spoken)."""
    cues: dict[str, bytes] = {}
    folder = resources.files("soca_appliance") / "assets"
    for name in CUE_NAMES:
        try:
            cues[name] = (folder / f"cue-{name}-{lang}.mp3").read_bytes()
        except OSError as exc:
            log.warning("spoken cue %r (%s) is missing from the package: %s", name, lang, exc)
    return cues


class Cues:
    """The appliance's own voice: the policy, its language's cues, and the player that
    says them (as spoken cues: never over the agent, off the uplink in half duplex).
    Called from the source, button and link threads, never under the orchestrator's lock
    (playing is I/O)."""

    def __init__(self, lang: str, ready_cue: bool, player: Any,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = CuePolicy(ready_cue=ready_cue)
        self.player = player
        self._clock = clock
        self._mp3 = load_cues(lang)
        self._lock = threading.Lock()
        self._deferred: str | None = None     # said when the speaker first opens
        self.played: dict[str, int] = dict.fromkeys(CUE_NAMES, 0)

    def speech_started(self, state: str) -> bool:
        """Someone started speaking in ``state``: True when the offline cue plays."""
        with self._lock:
            name = self.policy.speech_started(self._clock(), state, self.player.busy)
        return name is not None and self._play(name)

    def connected(self) -> bool:
        with self._lock:
            name = self.policy.connected(self.player.busy)
            if name is not None and self.player.opening:
                # At start the speaker opens after stt.ready (issue 13): say it then.
                self._deferred = name
                return False
        return name is not None and self._play(name)

    def output_opened(self) -> bool:
        """The speaker is open: the cue that came before it is said now."""
        with self._lock:
            name, self._deferred = self._deferred, None
            if name is not None and self.player.busy:
                return False                   # a greeting says it better
        return name is not None and self._play(name)

    def _play(self, name: str) -> bool:
        data = self._mp3.get(name)
        if data is None or not self.player.play_cue(data, speech=True):
            return False
        self.played[name] += 1
        log.info("spoken cue: %s", name)
        return True
