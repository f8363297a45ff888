"""Spoken cues: the pure policy (when to say "cannot reach the assistant", "ready"), the
bundled MP3s, and the real player on SDL's disk driver inside the whole appliance: speech
while the server is down makes the offline cue heard once, never over the agent."""
from __future__ import annotations

import pytest

from soca_appliance.cues import CUE_NAMES, CuePolicy, load_cues


def test_offline_cue_once_per_minute_while_offline() -> None:
    p = CuePolicy()
    assert p.speech_started(100.0, "connecting", False) == "offline"
    assert p.speech_started(101.0, "connecting", False) is None       # said already
    assert p.speech_started(159.9, "error", False) is None
    assert p.speech_started(160.0, "error", False) == "offline"       # a minute later


@pytest.mark.parametrize("state", ["ready", "listening", "thinking", "speaking"])
def test_no_offline_cue_while_online(state: str) -> None:
    p = CuePolicy()
    assert p.speech_started(0.0, state, False) is None
    assert p.speech_started(1.0, "connecting", False) == "offline"    # not used up online


def test_never_over_the_agent() -> None:
    p = CuePolicy()
    assert p.speech_started(0.0, "connecting", True) is None
    assert p.speech_started(0.5, "connecting", False) == "offline"    # not used up either


def test_ready_cue_only_when_asked_and_only_the_first_connect() -> None:
    assert CuePolicy().connected(False) is None                       # off by default
    p = CuePolicy(ready_cue=True)
    assert p.connected(False) == "ready"
    assert p.connected(False) is None                                 # a reconnect: silent
    busy = CuePolicy(ready_cue=True)
    assert busy.connected(True) is None                               # a greeting plays
    assert busy.connected(False) is None


@pytest.mark.parametrize("lang", ["en", "id"])
def test_bundled_cues_are_short_mp3(lang: str) -> None:
    cues = load_cues(lang)
    assert set(cues) == set(CUE_NAMES)
    for name, data in cues.items():
        assert data[:3] == b"ID3" or data[0] == 0xFF, name         # MPEG audio
        assert 1000 < len(data) < 20000, (name, len(data))          # seconds, not minutes
