"""Shared test fixtures: no sound card, no GPIO, servers only on 127.0.0.1."""
from __future__ import annotations

import os
import threading
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


def assert_never_wakes(thread: threading.Thread, window_s: float = 1.2) -> None:
    """``thread`` (of this process) blocks, and over ``window_s`` has no voluntary context
    switch: it waits on its file descriptors, not on a poll timeout."""
    status = Path(f"/proc/self/task/{thread.native_id}/status")
    wait_for(lambda: "State:\tS" in status.read_text(), 5, f"{thread.name} to block")

    def switches() -> int:
        return int(status.read_text().split("voluntary_ctxt_switches:")[1].split()[0])

    before = switches()
    deadline = time.monotonic() + window_s      # a window, not a wait for something
    while time.monotonic() < deadline:
        time.sleep(0.1)
    assert switches() == before, f"{thread.name} woke while idle"


@pytest.fixture(scope="session")
def assets() -> Path:
    return ASSETS
