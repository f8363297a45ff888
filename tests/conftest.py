"""Shared test fixtures: no sound card, no GPIO, servers only on 127.0.0.1."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import pytest

# Tests never touch a real speaker: SDL's dummy driver plays in real time and silently.
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

ASSETS = Path(__file__).resolve().parent.parent / "device" / "soca_appliance" / "assets"


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.01):
    """Poll a concrete condition until it holds; fail loudly, naming it, when it never does."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def assets() -> Path:
    return ASSETS
