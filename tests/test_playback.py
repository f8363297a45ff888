"""What the speaker actually heard: SDL's disk driver records the mixer's output, and the
decoded MP3 must be in it byte for byte: no gap, no repeat, no click."""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from soca_appliance.assembler import Assembler, Piece, Sentence
from soca_appliance.player import Player, PlayerCallbacks, pygame
from soca_appliance.protocol import SentenceChunk

from conftest import ASSETS, wait_for
from test_appliance import sentence_messages
from soca_appliance.protocol import parse_obj

MP3 = (ASSETS / "answer-en-1-2.mp3").read_bytes()


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "speaker.raw"
    monkeypatch.setenv("SDL_AUDIODRIVER", "disk")
    monkeypatch.setenv("SDL_DISKAUDIOFILE", str(out))
    return out


class Recorder:
    def __init__(self) -> None:
        self.started: list[tuple[float, Sentence]] = []
        self.stopped: list[tuple[Sentence, str]] = []
        self.idle = threading.Event()
        self.callbacks = PlayerCallbacks(
            on_start=lambda s: self.started.append((time.monotonic(), s)),
            on_stop=lambda s, r: self.stopped.append((s, r)),
            on_idle=self.idle.set)


def decoded(mp3: bytes) -> bytes:
    return pygame.mixer.Sound(file=io.BytesIO(mp3)).get_raw()


def heard(out: Path, pcm: bytes) -> bytes:
    """The stretch of the recording that lines up with ``pcm``'s first loud samples."""
    data = out.read_bytes()
    anchor = next(i for i in range(0, len(pcm), 2) if pcm[i:i + 2] not in (b"\0\0",))
    at = data.find(pcm[anchor:anchor + 400])
    assert at >= 0, "the sentence's audio is not in the recording"
    return data[at - anchor: at - anchor + len(pcm)]


def run_player(recorder: Recorder) -> Player:
    player = Player(recorder.callbacks)
    player.start()
    wait_for(lambda: player.info is not None)
    return player


def test_complete_sentence_is_heard_exactly(disk: Path) -> None:
    rec = Recorder()
    player = run_player(rec)
    try:
        player.enqueue(Sentence(1, 1, MP3, "whole"))
        assert rec.idle.wait(10)
        pcm = decoded(MP3)
    finally:
        player.close()
    assert heard(disk, pcm) == pcm


def test_progressive_playback_is_gapless_and_starts_early(disk: Path) -> None:
    """Chunks arrive over ~0.6 s; playback starts with the first and the speaker's output
    is the whole sentence's decode, byte for byte."""
    rec = Recorder()
    player = run_player(rec)
    assembler = Assembler(progressive=True)
    try:
        messages = [parse_obj(m) for m in sentence_messages(1, 7, MP3, "progressive", 6)]
        for msg in messages:
            assert isinstance(msg, SentenceChunk)
            for piece in assembler.add(msg, time.monotonic()).pieces:
                player.feed(piece)
            last_fed = time.monotonic()
            time.sleep(0.1)     # the network's pace: one chunk every 100 ms
        assert rec.idle.wait(10)
        pcm = decoded(MP3)
    finally:
        player.close()
    assert rec.started and rec.started[0][0] < last_fed - 0.3     # began before the end
    assert player.underruns == 0
    assert heard(disk, pcm) == pcm


def test_stop_silences_a_progressive_sentence(disk: Path) -> None:
    rec = Recorder()
    player = run_player(rec)
    assembler = Assembler(progressive=True)
    try:
        messages = [parse_obj(m) for m in sentence_messages(3, 1, MP3, "cut", 6)]
        for msg in messages[:3]:
            for piece in assembler.add(msg, time.monotonic()).pieces:
                player.feed(piece)
        wait_for(lambda: rec.started)
        stopped = player.stop_before(4, "barge")
        assert [s.sentence_id for s in stopped] == [1]
        # the rest of the sentence arrives: it has nowhere to go
        for msg in messages[3:]:
            for piece in assembler.add(msg, time.monotonic()).pieces:
                assert player.feed(piece) is False
        assert not player.busy
    finally:
        player.close()
    assert rec.stopped == [(stopped[0], "barge")]


def _piece(data: bytes, first: bool, final: bool, seq: int = 1, sid: int = 1) -> Piece:
    return Piece(seq, sid, data, "piece", first, final)


class RacingPlayer(Player):
    """The last piece arrives while the player decodes a prefix too short to decode."""

    def __init__(self, callbacks: PlayerCallbacks, last: Piece) -> None:
        super().__init__(callbacks)
        self.last, self.raced = last, False

    def _decode(self, item: Any, mp3: bytes, *args: Any) -> Any:
        if not self.raced:
            self.raced = True
            assert self.feed(self.last)         # meanwhile, on the link thread
        return super()._decode(item, mp3, *args)


def test_last_piece_arriving_during_a_prefix_decode_is_not_called_invalid(disk: Path) -> None:
    errors: list[str] = []
    rec = Recorder()
    rec.callbacks.on_error = errors.append
    player = RacingPlayer(rec.callbacks, _piece(MP3[100:], first=False, final=True))
    player.start()
    wait_for(lambda: player.info is not None)
    try:
        assert player.feed(_piece(MP3[:100], first=True, final=False))
        assert rec.idle.wait(10)
        pcm = decoded(MP3)
    finally:
        player.close()
    assert player.raced
    assert errors == [] and player.dropped == 0
    assert [s.sentence_id for _, s in rec.started] == [1]
    assert heard(disk, pcm) == pcm


def test_after_an_underrun_playback_prebuffers_again(disk: Path) -> None:
    """A sentence arriving at about 0.6x real time: each underrun is followed by a fresh
    prebuffer, not by one MP3 frame and another underrun."""
    rec = Recorder()
    player = run_player(rec)
    size = 300                                   # ~75 ms of 32 kbps MP3 a piece
    parts = [MP3[i:i + size] for i in range(0, len(MP3), size)]
    try:
        for n, part in enumerate(parts):
            assert player.feed(_piece(part, first=n == 0, final=False))
            time.sleep(0.12)                     # 75 ms of audio every 120 ms
        assert player.feed(_piece(b"", first=False, final=True))
        assert rec.idle.wait(10)
        audio_s = len(decoded(MP3)) / (2 * 22050)
    finally:
        player.close()
    # Each resume has a prebuffer in hand, so there can be no more underruns than that.
    assert 1 <= player.underruns <= audio_s / player.prebuffer_s, player.underruns

