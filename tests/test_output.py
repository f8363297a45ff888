"""The speaker as a device that fails, goes away and comes back: the player reports each
outage once, does not call ``mixer.init`` while no device can exist, survives any
exception from the mixer, and plays again when the device is back."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from soca_appliance import devices
from soca_appliance.assembler import Sentence
from soca_appliance.devices import Presence
from soca_appliance.player import Player, PlayerCallbacks, pygame

from conftest import ASSETS, wait_for

MP3 = (ASSETS / "answer-en-1-2.mp3").read_bytes()


class Events:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.outputs: list[Any] = []
        self.started: list[Sentence] = []
        self.idle = threading.Event()
        self.callbacks = PlayerCallbacks(on_error=self.errors.append,
                                         on_output=self.outputs.append,
                                         on_start=self.started.append, on_idle=self.idle.set)


class Socket:
    """A controllable presence check: a USB card that is plugged in or not."""

    def __init__(self, plugged: bool = True) -> None:
        self.plugged = plugged
        self.checks = 0

    def __call__(self) -> Presence:
        self.checks += 1
        if self.plugged:
            return Presence(True, ("card:1:USB", "pcm:C1D0p"), "1 sound card(s)")
        return Presence(False, (), "no sound card (ALSA lists none)")


def test_a_missing_mixer_module_is_a_reported_retried_fault(monkeypatch) -> None:
    """pygame without libglib: mixer.init raises NotImplementedError (issue 13). The
    player thread lives, says so once, and plays when the mixer works again."""
    real_init = pygame.mixer.init
    calls = {"n": 0}

    def init(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise NotImplementedError("mixer module not available (ImportError: "
                                      "libgthread-2.0.so.0: cannot open shared object file)")
        real_init(*args, **kwargs)

    monkeypatch.setattr(pygame.mixer, "init", init)
    ev = Events()
    player = Player(ev.callbacks, retry_s=0.02)
    player.start()
    try:
        wait_for(lambda: ev.outputs, timeout=10, what="the output to open on the 4th try")
        assert player.alive()
        assert calls["n"] == 4
        assert len(ev.errors) == 1, ev.errors
        assert "audio output failed to open" in ev.errors[0]
        assert "libglib2.0-0" in ev.errors[0]
        assert player.enqueue(Sentence(1, 1, MP3, "after the fault"))
        assert ev.idle.wait(10) and [s.sentence_id for s in ev.started] == [1]
    finally:
        player.close()


def test_any_exception_in_the_player_thread_is_survived(monkeypatch) -> None:
    ev = Events()
    player = Player(ev.callbacks, retry_s=0.02)
    player.start()
    try:
        wait_for(lambda: player.info is not None)
        real_sound = pygame.mixer.Sound
        broken = {"on": True}

        def sound(*args: Any, **kwargs: Any) -> Any:
            if broken["on"] and "buffer" in kwargs:
                raise MemoryError("out of memory")          # anything at all
            return real_sound(*args, **kwargs)

        monkeypatch.setattr(pygame.mixer, "Sound", sound)
        player.enqueue(Sentence(1, 1, MP3, "breaks"))
        wait_for(lambda: player.faults >= 1, what="the fault")
        broken["on"] = False
        wait_for(lambda: player.info is not None, what="the output reopened")
        assert player.alive()
        assert [e for e in ev.errors if "player fault: MemoryError" in e]
        player.enqueue(Sentence(1, 2, MP3, "works"))
        wait_for(lambda: [s for s in ev.started if s.sentence_id == 2], what="sentence 2")
    finally:
        player.close()


def test_no_sound_card_one_error_and_no_init_until_a_card_appears(monkeypatch) -> None:
    """SDL's ALSA driver with no card: the first open fails and is reported; then the
    device list is watched and mixer.init is not called again (each failed call leaks
    ~141 kB) until a card appears; then it opens and says so."""
    monkeypatch.setenv("SDL_AUDIODRIVER", "alsa")
    socket = Socket(plugged=False)
    real_init = pygame.mixer.init
    calls = {"n": 0}

    def init(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        real_init(*args, **kwargs)

    monkeypatch.setattr(pygame.mixer, "init", init)
    ev = Events()
    player = Player(ev.callbacks, retry_s=0.001, retry_max_s=0.002, presence=socket,
                    poll_s=0.002)
    player.start()
    try:
        wait_for(lambda: socket.checks >= 300, what="300 looks at the device list")
        assert calls["n"] == 1                  # no retry while nothing changed
        assert len(ev.errors) == 1 and "retrying when a sound card appears" in ev.errors[0]
        assert not player.enqueue(Sentence(1, 1, MP3, "nobody hears this"))
        # The card comes (SDL's disk driver stands in for it): opened at once.
        monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
        socket.plugged = True
        wait_for(lambda: ev.outputs, what="the output to open")
        assert calls["n"] == 2 and len(ev.errors) == 1
    finally:
        player.close()


def test_retries_with_no_card_report_one_error_not_one_per_retry(monkeypatch) -> None:
    """The real device check on this machine (no sound card) and fast retries."""
    if devices.alsa("p").present:
        pytest.skip("this machine has a sound card")
    monkeypatch.setenv("SDL_AUDIODRIVER", "alsa")
    ev = Events()
    player = Player(ev.callbacks)
    player.retry_s = 0.005
    player.start()
    try:
        time.sleep(1.0)         # the window whose retries are counted: 200 at the old pace
        assert player.alive()
    finally:
        player.close()
    assert len(ev.errors) == 1, ev.errors


def test_speaker_unplugged_while_running_is_reopened_when_back(monkeypatch, tmp_path: Path
                                                               ) -> None:
    first, second = tmp_path / "before.raw", tmp_path / "after.raw"
    monkeypatch.setenv("SDL_AUDIODRIVER", "disk")
    monkeypatch.setenv("SDL_DISKAUDIOFILE", str(first))
    socket = Socket(plugged=True)
    ev = Events()
    player = Player(ev.callbacks, retry_s=0.02, retry_max_s=0.05, presence=socket,
                    poll_s=0.02)
    player.start()
    try:
        wait_for(lambda: ev.outputs, what="the output to open")
        # Unplugged: the card leaves the list, and opening any output fails meanwhile.
        monkeypatch.setenv("SDL_AUDIODRIVER", "no-such-driver")
        socket.plugged = False
        wait_for(lambda: player.output.losses == 1, what="the loss to be noticed")
        wait_for(lambda: ev.errors, what="the outage reported")
        attempts = player.output.attempts
        checks = socket.checks
        wait_for(lambda: socket.checks >= checks + 20, what="more looks at the device list")
        assert player.output.attempts == attempts        # no init while nothing changed
        assert not player.enqueue(Sentence(1, 1, MP3, "unplugged"))
        # Plugged back in.
        monkeypatch.setenv("SDL_AUDIODRIVER", "disk")
        monkeypatch.setenv("SDL_DISKAUDIOFILE", str(second))
        socket.plugged = True
        wait_for(lambda: len(ev.outputs) == 2, what="the output reopened")
        assert len(ev.errors) == 1, ev.errors
        assert player.enqueue(Sentence(1, 2, MP3, "plugged back"))
        assert ev.idle.wait(10)
        pcm = pygame.mixer.Sound(file=io.BytesIO(MP3)).get_raw()     # the player's mixer
    finally:
        player.close()
    assert pcm[4000:4400] in second.read_bytes()         # heard after the replug


class FakeChannel:
    """pygame's channel state as the player reads it: busy flag, current and queued sound."""

    def __init__(self, busy: bool, sound: Any, queue: Any) -> None:
        self.busy, self.sound, self.queue = busy, sound, queue

    def get_busy(self) -> bool:
        return self.busy

    def get_sound(self) -> Any:
        return self.sound

    def get_queue(self) -> Any:
        return self.queue


def test_channel_state_reads_through_pygame_hand_off_races() -> None:
    from soca_appliance.output import channel_busy, stranded_queue
    piece = object()
    # playing, nothing queued / playing with the next piece queued
    assert channel_busy(FakeChannel(True, object(), None))
    assert channel_busy(FakeChannel(True, object(), piece))
    # the sound just ended, pygame's callback not yet run: still busy (its queue will start)
    assert channel_busy(FakeChannel(False, object(), piece))
    assert stranded_queue(FakeChannel(False, object(), piece)) is None
    # the callback decided "nothing queued" and a queue() slipped in: stranded, not busy
    assert not channel_busy(FakeChannel(False, None, piece))
    assert stranded_queue(FakeChannel(False, None, piece)) is piece
    # idle
    assert not channel_busy(FakeChannel(False, None, None))
    assert stranded_queue(FakeChannel(False, None, None)) is None


def test_a_sentence_given_before_the_speaker_first_opens_waits_for_it() -> None:
    """Start-up opens the speaker after stt.ready (issue 13): a greeting that comes first
    waits in the queue and is played once the output opens, not dropped."""
    ev = Events()
    player = Player(ev.callbacks)
    assert player.opening
    assert player.enqueue(Sentence(1, 1, MP3, "a greeting"))       # not started yet
    player.start()
    try:
        assert ev.idle.wait(10) and [s.text for s in ev.started] == ["a greeting"]
        assert not player.opening and player.dropped == 0
    finally:
        player.close(2)


def test_with_no_speaker_at_start_what_waited_for_it_is_dropped_once(monkeypatch) -> None:
    monkeypatch.setenv("SDL_AUDIODRIVER", "alsa")           # no card here: it cannot open
    stops: list[tuple[int, str]] = []
    ev = Events()
    ev.callbacks.on_stop = lambda s, reason: stops.append((s.sentence_id, reason))
    player = Player(ev.callbacks, retry_s=30, presence=Socket(plugged=False))
    assert player.enqueue(Sentence(1, 1, MP3, "a greeting"))
    player.start()
    try:
        wait_for(lambda: stops, 10, "the waiting sentence dropped")
        assert stops == [(1, "no output")] and player.dropped == 1 and not player.opening
        assert not player.enqueue(Sentence(1, 2, MP3, "and the next"))  # no speaker: no queue
        assert len(ev.errors) == 1 and not ev.started
    finally:
        player.close(2)


def _sdl_audio_threads() -> list[str]:
    names = (Path(t, "comm").read_text().strip() for t in Path("/proc/self/task").iterdir())
    return [n for n in names if n.startswith("SDLAudio")]


def test_a_quiet_mixer_closes_with_its_thread_and_reopens_for_what_comes(tmp_path: Path,
                                                                         monkeypatch) -> None:
    """speaker_idle_close (issue 13): after the quiet period the mixer and SDL's audio
    thread are gone (it woke 43 times a second to mix silence); a sentence, a chime or
    wake() opens it again, silently (no new output event), and what was asked for plays."""
    out = tmp_path / "speaker.raw"
    monkeypatch.setenv("SDL_AUDIODRIVER", "disk")
    monkeypatch.setenv("SDL_DISKAUDIOFILE", str(out))
    ev = Events()
    player = Player(ev.callbacks)
    player.release_after(0.3)
    player.start()
    try:
        wait_for(lambda: ev.outputs, 10, "the first opening")
        wait_for(lambda: player.parked, 5, "the mixer to close when quiet")
        wait_for(lambda: not _sdl_audio_threads(), 5, "SDL's audio thread to end")
        assert pygame.mixer.get_init() is None and player.info is None
        assert player.enqueue(Sentence(1, 1, MP3, "after the quiet"))   # not dropped
        assert ev.idle.wait(10) and [s.text for s in ev.started] == ["after the quiet"]
        assert len(ev.outputs) == 1 and not ev.errors      # reopened quietly
        heard = out.read_bytes()                           # (the disk driver's new file)
        assert any(heard[i:i + 2] != b"\0\0" for i in range(0, len(heard), 2))
        wait_for(lambda: player.parked, 5, "quiet again")
        chime = (ASSETS / "chime.wav").read_bytes()
        assert player.play_cue(chime)                      # the button's chime, parked
        wait_for(lambda: pygame.mixer.get_init() is not None, 5, "the mixer for the chime")
        wait_for(lambda: player.parked, 5, "quiet after the chime")
        player.wake()                                      # someone started talking
        wait_for(lambda: not player.parked and player.info is not None, 5, "woken")
        assert player.dropped == 0 and not ev.errors
    finally:
        player.close(2)


def test_with_release_off_the_mixer_stays_open() -> None:
    ev = Events()
    player = Player(ev.callbacks, poll_s=0.05)
    player.start()
    try:
        wait_for(lambda: ev.outputs, 10, "the first opening")
        deadline = time.monotonic() + 0.5          # ten of the player's idle looks
        while time.monotonic() < deadline:
            assert not player.parked and player.info is not None
            time.sleep(0.05)
        assert _sdl_audio_threads()
    finally:
        player.close(2)


def test_pygame_is_imported_without_its_unused_modules_and_still_plays_mp3() -> None:
    """The player's pygame has no font, image or array modules (about 3.4 MB of RSS, issue
    13), and its mixer decodes and queues MP3 as before; a fresh interpreter, as at boot."""
    script = (
        "import io, json, sys, warnings\n"
        "from soca_appliance.output import UNUSED_PYGAME, _import_pygame\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    pg = _import_pygame()\n"
        "pg.mixer.init(22050, -16, 1, 512)\n"
        f"mp3 = open({str(ASSETS / 'answer-en-1-2.mp3')!r}, 'rb').read()\n"
        "sound = pg.mixer.Sound(file=io.BytesIO(mp3))\n"
        "channel = pg.mixer.Channel(0)\n"
        "channel.play(sound)\n"
        "channel.queue(pg.mixer.Sound(buffer=sound.get_raw()[:4410]))\n"
        "print(json.dumps({'pcm': len(sound.get_raw()), 'busy': channel.get_busy(),\n"
        "                  'queued': channel.get_queue() is not None,\n"
        "                  'loaded': [m for m in UNUSED_PYGAME if sys.modules.get(m)],\n"
        "                  'warnings': len(seen), 'pkg_resources': 'pkg_resources' in sys.modules}))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "SDL_AUDIODRIVER": "dummy"})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["pcm"] > 40000 and result["busy"] and result["queued"]
    assert result["loaded"] == [] and result["warnings"] == 0 and not result["pkg_resources"]


def test_a_started_sentence_dropped_undecodable_counts_as_quiet_from_then() -> None:
    """A sentence that played a part of itself progressively and then did not decode whole
    is dropped: the speaker went quiet at that moment. (Before, quiet_for still counted from
    the sentence before it, so half duplex could unmute the mic under its echo tail.)"""
    from soca_appliance.player import _Item
    player = Player(PlayerCallbacks())           # not started: no device, no thread
    item = _Item(Sentence(1, 1, b"\xff\xfb", "x"), complete=True)
    item.started = True
    with player._cond:
        player._current = item
    assert player.quiet_for() == 0.0              # it was playing
    with player._cond:
        player._drop_current()
    assert 0.0 <= player.quiet_for() < 1.0
