"""When the speaker's mixer closes while nothing plays, and what opens it again (issue 13).

SDL's audio thread runs as long as the mixer is open and wakes for every buffer (43 times
a second at 512 samples and 22.05 kHz) to mix silence: about 0.15 % of a core here, a
fifth of the appliance's streaming cost, several times that on a Pi Zero 2 W. With the echo
canceller off nothing needs that silence, so after ``after_s`` of quiet the player closes
the mixer ("parks" it) and opens it again when there is something to play, or as soon as
the user starts talking, so that the answer finds it open. With the canceller on it stays
open: the canceller's reference and the echo path's delay must not move.

Pure state, no I/O and no clock of its own; the player's lock guards it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class IdleRelease:
    after_s: float = 0.0                    # quiet this long closes the mixer; 0: never
    parked: bool = False
    wanted: bool = False                    # something asked for the speaker while parked
    cue: Optional[tuple[bytes, bool]] = None    # a cue (sound, speech) asked for meanwhile
    last_sound: float = float("-inf")       # when the mixer opened or a cue last ended

    def opened(self, now: float) -> None:
        self.last_sound = max(self.last_sound, now)

    def sounded_until(self, t: float) -> None:
        self.last_sound = max(self.last_sound, t)

    def due(self, now: float, quiet_since: float, busy: bool) -> bool:
        """Close now: enabled, open, nothing queued or playing, quiet for ``after_s``."""
        return (self.after_s > 0 and not self.parked and not busy
                and now - max(quiet_since, self.last_sound) >= self.after_s)

    def park(self) -> None:
        self.parked, self.wanted, self.cue = True, False, None

    def want(self, cue: Optional[tuple[bytes, bool]] = None) -> bool:
        """Ask for the speaker; True when it is parked (the player thread must wake)."""
        if not self.parked:
            return False
        self.wanted = True
        if cue is not None:
            self.cue = cue
        return True

    def resume(self) -> Optional[tuple[bytes, bool]]:
        """The player thread reopens the mixer: the cue to play once it is open."""
        cue, self.parked, self.wanted, self.cue = self.cue, False, False, None
        return cue
