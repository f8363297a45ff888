"""Reconnect delays: exponential backoff with jitter. Pure logic, no clock, no sleeping."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """0.5 s doubling to a 30 s cap by default, each delay jittered by +/- ``jitter``.

    Jitter keeps a fleet of kiosks that lost the same Wi-Fi from reconnecting in lockstep.
    """
    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next_delay(self) -> float:
        base = self.base(self.attempts)
        self.attempts += 1
        spread = base * self.jitter
        return max(0.0, min(self.cap, base + self.rng.uniform(-spread, spread)))

    def base(self, attempt: int) -> float:
        """The delay before jitter: ``initial * factor ** attempt``, at most the cap."""
        if self.factor <= 1.0 or self.initial <= 0.0 or self.initial >= self.cap:
            return min(self.cap, self.initial)
        # Past the attempt where the cap is reached only the cap matters; stopping the
        # exponent there (not at a fixed count) also keeps factor ** attempt from overflowing
        # and never leaves a slow-growing series stuck just below the cap.
        reach = math.ceil(math.log(self.cap / self.initial) / math.log(self.factor)) + 1
        return min(self.cap, self.initial * self.factor ** min(attempt, reach))

    def slow(self, delay: float) -> float:
        """A fixed slow retry (authentication errors), jittered the same way."""
        self.attempts += 1
        spread = delay * self.jitter
        return delay + self.rng.uniform(-spread, spread)

    def reset(self) -> None:
        self.attempts = 0
