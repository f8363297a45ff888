"""The speaker as a device that comes and goes: opening pygame's mixer, retrying while it
cannot open, and noticing when a sound card disappears under it.

Owned by the player thread (nothing here is called from another thread). What it does:

* Any exception from ``pygame.mixer.init`` is a failure to open, not only ``pygame.error``:
  without the system's libglib pygame's mixer raises ``NotImplementedError``.
* One error per outage (``on_error``), one ``on_output`` when it opens again; the retries
  in between are counted in :attr:`attempts`, not reported.
* Retries back off exponentially (5 s doubling to 60 s). While :mod:`devices` says no
  device can exist (SDL's ALSA driver and no sound card), ``mixer.init`` is not called
  at all until the device list changes: each failed init on SDL's ALSA driver leaks about
  141 kB that ``mixer.quit()`` does not return.
* While open, the device list is polled (once a second, a directory listing): a card that
  was there at open time and is gone means the output is lost; the mixer is closed and
  reopened when a device is back. SDL itself keeps "playing" into a removed ALSA device
  without telling pygame (its AUDIODEVICEREMOVED event needs the event subsystem, which
  pygame only starts with a display).
"""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import devices
from .backoff import Backoff
from .quiet import quiet

log = logging.getLogger("soca.player")


@dataclass(frozen=True)
class OutputInfo:
    frequency: int
    channels: int
    buffer: int
    driver: str

    @property
    def buffer_ms(self) -> float:
        return 1000.0 * self.buffer / self.frequency


class _LazyPygame:
    """``pygame``, imported on first use (by the player thread when it opens the output),
    not while the appliance's modules load: the link reaches ``stt.ready`` first."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_import_pygame(), name)


_pygame_module: Any = None


# pygame's optional modules (its __init__ imports each in a try/except ImportError): the
# player needs the mixer and what it stands on, none of these. Blocked while pygame is
# imported they cost nothing: about 3.4 MB of RSS less (font and image libraries, numpy
# glue; issue 13's 60 MB with every feature on).
UNUSED_PYGAME = ("pygame.font", "pygame.sysfont", "pygame.ftfont", "pygame.freetype",
                 "pygame.image", "pygame.imageext", "pygame.sprite", "pygame.draw",
                 "pygame.gfxdraw", "pygame.mask", "pygame.transform", "pygame.surfarray",
                 "pygame.sndarray", "pygame.pixelcopy", "pygame.pixelarray", "pygame.cursors",
                 "pygame.joystick", "pygame.mouse", "pygame.key", "pygame.scrap",
                 "pygame.fastevent", "pygame.midi", "pygame.camera", "pygame.threads",
                 "pygame.movie", "pygame._sdl2")


def _import_pygame() -> Any:
    global _pygame_module
    if _pygame_module is not None:
        return _pygame_module
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")   # no banner on the kiosk's log
    # pygame.pkgdata imports pkg_resources only to find pygame's own data files (fonts, an
    # icon: never used here), and reads them itself without it. That import scans every
    # installed distribution: 0.25-0.6 s and about 10 MB of peak RSS (bench --floor).
    blocked = [] if "pygame" in sys.modules else [
        name for name in ("pkg_resources", *UNUSED_PYGAME) if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None     # type: ignore[assignment]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # "import font: ... halted"
            import pygame as module
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    _pygame_module = module
    return module


pygame: Any = _LazyPygame()


class AudioOutput:
    def __init__(self, frequency: int, buffer: int, *,
                 on_error: Callable[[str], None], on_output: Callable[[OutputInfo], None],
                 presence: Optional[devices.PresenceCheck] = None, retry_s: float = 5.0,
                 retry_max_s: float = 60.0, poll_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.frequency = frequency
        self.buffer = buffer
        self.on_error = on_error
        self.on_output = on_output
        self.presence = presence or devices.output
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.poll_s = poll_s
        self.clock = clock
        self.info: Optional[OutputInfo] = None
        self.attempts = 0           # mixer.init calls
        self.skipped = 0            # retries not made: no device, nothing changed
        self.losses = 0             # opened outputs that went away
        self.outages = 0
        self._backoff = Backoff(initial=retry_s, cap=retry_max_s, jitter=0.1)
        self._failing = False
        self._next_try = float("-inf")
        self._failed_sig: Optional[tuple[str, ...]] = None
        self._open_presence: Optional[devices.Presence] = None
        self._next_poll = 0.0

    def set_retry(self, initial: float) -> None:
        """A new first retry delay (the cap stays), effective from the next retry."""
        self.retry_s = initial
        self._backoff = Backoff(initial=initial, cap=max(initial, self.retry_max_s), jitter=0.1)
        self._next_try = min(self._next_try, self.clock() + initial)

    # --- opening -----------------------------------------------------------------

    def due_in(self) -> float:
        """Seconds until the next look at the device list or retry (while closed)."""
        return max(0.0, min(self._next_try, self.clock() + self.poll_s) - self.clock())

    def try_open(self) -> bool:
        """Open the mixer if it is time to try; True when open."""
        if self.info is not None:
            return True
        now = self.clock()
        presence = self.presence()
        changed = self._failed_sig is not None and presence.signature != self._failed_sig
        if self._failing and not changed:
            if presence.present is False or now < self._next_try:
                if presence.present is False and now >= self._next_try:
                    self.skipped += 1
                    self._next_try = now + self._delay()
                return False
        self.attempts += 1
        error = self._init()
        if error is None:
            self._opened(presence)
            return True
        self._failed(presence, error, now)
        return False

    def _init(self) -> Optional[str]:
        pygame = _import_pygame()
        try:
            with quiet():          # SDL's ALSA backend prints pages about missing cards
                pygame.mixer.init(frequency=self.frequency, size=-16, channels=1,
                                  buffer=self.buffer)
                pygame.mixer.set_num_channels(2)
                init = pygame.mixer.get_init()
            if not init:
                raise RuntimeError("the mixer reports no output after init")
            freq, _fmt, channels = init
        except Exception as exc:   # noqa: BLE001 - pygame.error, NotImplementedError, ...
            self._quit()
            return _describe(exc)
        driver = os.environ.get("SDL_AUDIODRIVER") or "SDL default"
        self.info = OutputInfo(freq, channels, self.buffer, driver)
        return None

    def _delay(self) -> float:
        return self._backoff.next_delay()

    def _failed(self, presence: devices.Presence, error: str, now: float) -> None:
        self._failed_sig = presence.signature
        self._next_try = now + self._delay()
        if self._failing:
            log.debug("audio output still failing to open: %s", error)
            return
        self._failing = True
        self.outages += 1
        when = ("retrying when a sound card appears" if presence.present is False
                else f"retrying in {self.retry_s:g} s, then less often")
        self.on_error(f"audio output failed to open: {error}; {when}")

    def _opened(self, presence: devices.Presence) -> None:
        assert self.info is not None
        if self._failing:
            log.info("audio output back after %d attempt(s)", self.attempts)
        self._failing = False
        self._failed_sig = None
        self._backoff.reset()
        self._next_try = float("-inf")
        self._open_presence = presence
        self._next_poll = self.clock() + self.poll_s
        info = self.info
        log.debug("audio output open: %d Hz, %d channel(s), buffer %d samples (%.1f ms), "
                  "driver %s", info.frequency, info.channels, info.buffer, info.buffer_ms,
                  info.driver)
        self.on_output(info)

    # --- while open --------------------------------------------------------------

    def lost(self) -> bool:
        """Poll the device list (at most every ``poll_s``); True when the output went away.
        The mixer is then closed and the next :meth:`try_open` reopens it."""
        if self.info is None or self._open_presence is None:
            return False
        now = self.clock()
        if now < self._next_poll:
            return False
        self._next_poll = now + self.poll_s
        presence = self.presence()
        if not presence.lost(self._open_presence):
            if presence.signature != self._open_presence.signature:
                self._open_presence = presence      # a card came: keep using this one
            return False
        self.losses += 1
        log.warning("audio output lost: %s (was: %s); reopening", presence.what,
                    self._open_presence.what)
        self.close()
        # The outage is reported by the reopen attempt that follows, once.
        self._failing = False
        self._next_try = float("-inf")
        return True

    def close(self) -> None:
        if self.info is not None:
            self.info = None
            self._quit()
        self._open_presence = None

    def _quit(self) -> None:
        try:
            _import_pygame().mixer.quit()
        except Exception:  # noqa: BLE001 - a missing mixer module raises NotImplementedError
            pass


def channel_busy(channel: Any) -> bool:
    """The pygame channel plays, or is about to play its queued sound.

    ``get_busy()`` alone reads SDL_mixer's flag without its lock: between the end of one
    sound and pygame's callback starting the queued one (the callback waits for the GIL,
    which the caller holds) it says False, and a ``play()`` then would replace the queued
    piece (the last 50 ms of a progressive sentence, lost: seen in the long-run soak). A
    queued sound counts as busy only while the channel still has a current sound: see
    :func:`stranded_queue` for the other case.
    """
    if channel.get_queue() is not None and channel.get_sound() is not None:
        return True
    return channel.get_busy()


def stranded_queue(channel: Any) -> Any:
    """A queued sound that nothing will ever start, or None.

    pygame's end-of-sound callback decides whether a sound is queued before it takes the
    GIL; a ``queue()`` made in that window is left behind: the channel idle, no current
    sound, the queued one never played. In the soak this silenced the player for good after
    5.7 hours of speech (found with gdb: queue set, sound None, channel idle). The caller
    plays it itself.
    """
    if channel.get_sound() is None and not channel.get_busy():
        return channel.get_queue()
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, NotImplementedError):
        # pygame's stub for a module that failed to import: say what is missing.
        return (f"pygame's mixer is not available ({text}); on Debian/Raspberry Pi OS "
                "install libglib2.0-0")
    return text
