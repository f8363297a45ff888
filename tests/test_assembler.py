"""Sentence assembly and the seq rules (assembler.py): pure logic, driven chunk by chunk."""
from __future__ import annotations

import base64
from typing import Optional, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soca_appliance.assembler import Assembler, Outcome, Sentence
from soca_appliance.protocol import SentenceChunk

SID = Union[int, str]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def chunk(seq: int, sid: SID, index: int, data: Optional[bytes] = b"", last: bool = False,
          text: Optional[str] = None, raw: Optional[str] = None) -> SentenceChunk:
    """A chunk carrying ``data`` (None: null audio; ``raw``: this exact audioBase64)."""
    audio = raw if raw is not None else (None if data is None else b64(data))
    return SentenceChunk(seq=seq, sentence_id=sid, chunk_index=index, is_last=last,
                         audio_b64=audio or None, text=text)


def ids(out: Outcome) -> list[tuple[int, SID]]:
    return [(s.seq, s.sentence_id) for s in out.ready]


def played(out: Outcome) -> bytes:
    """Every MP3 byte an outcome hands to the player, in order, in either mode."""
    return b"".join(s.mp3 for s in out.ready) + b"".join(p.data for p in out.pieces)


def feed(asm: Assembler, chunks: list[SentenceChunk], now: float = 0.0) -> list[Sentence]:
    ready: list[Sentence] = []
    for c in chunks:
        ready += asm.add(c, now).ready
    return ready


# --- assembly --------------------------------------------------------------------------

class TestAssembly:
    def test_in_order(self) -> None:
        asm = Assembler()
        assert asm.add(chunk(1, 0, 0, b"ab", text="Halo."), 0).ready == []
        assert asm.add(chunk(1, 0, 1, b"cd"), 0).ready == []
        assert asm.pending == 1
        out = asm.add(chunk(1, 0, 2, b"ef", last=True), 0)
        assert out.ready == [Sentence(seq=1, sentence_id=0, mp3=b"abcdef", text="Halo.",
                                      chunks=3)]
        assert out.warnings == []
        assert asm.pending == 0

    def test_single_chunk_sentence(self) -> None:
        out = Assembler().add(chunk(1, "s", 0, b"xyz", last=True), 0)
        assert [s.mp3 for s in out.ready] == [b"xyz"]
        assert out.ready[0].chunks == 1

    @pytest.mark.parametrize("order", [(2, 0, 1), (1, 2, 0), (2, 1, 0), (0, 2, 1), (1, 0, 2)])
    def test_any_arrival_order_joins_in_index_order(self, order: tuple[int, ...]) -> None:
        parts = [b"\x00\x01", b"\x02\x03\x04", b"\x05"]
        asm = Assembler()
        outs = [asm.add(chunk(1, 7, i, parts[i], last=(i == 2)), 0) for i in order]
        assert all(o.ready == [] for o in outs[:-1])
        assert [s.mp3 for s in outs[-1].ready] == [b"\x00\x01\x02\x03\x04\x05"]

    def test_null_audio_on_last_chunk(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, 0, 0, b"one"), 0)
        asm.add(chunk(1, 0, 1, b"two"), 0)
        out = asm.add(chunk(1, 0, 2, None, last=True), 0)
        assert [s.mp3 for s in out.ready] == [b"onetwo"]
        assert out.ready[0].chunks == 3

    def test_null_last_chunk_arriving_first(self) -> None:
        asm = Assembler()
        assert asm.add(chunk(1, 0, 1, None, last=True), 0).ready == []
        assert [s.mp3 for s in asm.add(chunk(1, 0, 0, b"all"), 0).ready] == [b"all"]

    def test_sentence_without_any_audio_is_skipped_with_a_warning(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, "a", 0, None), 0)
        asm.add(chunk(1, "b", 0, b"bb", last=True), 0)
        out = asm.add(chunk(1, "a", 1, None, last=True), 0)
        assert ids(out) == [(1, "b")]
        assert any("'a'" in w and "no audio" in w for w in out.warnings)

    def test_text_is_the_first_content_step(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, 0, 1, b"b", text=None), 0)
        asm.add(chunk(1, 0, 0, b"a", text="Jakarta."), 0)
        out = asm.add(chunk(1, 0, 2, b"c", last=True, text="ignored"), 0)
        assert out.ready[0].text == "Jakarta."

    def test_same_sentence_id_in_two_seqs_are_different_sentences(self) -> None:
        asm = Assembler()
        assert [s.mp3 for s in asm.add(chunk(1, 0, 0, b"old", last=True), 0).ready] == [b"old"]
        assert [s.mp3 for s in asm.add(chunk(2, 0, 0, b"new", last=True), 0).ready] == [b"new"]


# --- play order ------------------------------------------------------------------------

class TestPlayOrder:
    def test_later_sentence_completing_first_waits(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, "first", 0, b"f0"), 0)
        out = asm.add(chunk(1, "second", 0, b"s0", last=True), 0)
        assert out.ready == []
        assert asm.pending == 2
        out = asm.add(chunk(1, "first", 1, b"f1", last=True), 0)
        assert ids(out) == [(1, "first"), (1, "second")]
        assert [s.mp3 for s in out.ready] == [b"f0f1", b"s0"]
        assert asm.pending == 0

    def test_order_is_first_chunk_arrival_not_sentence_id(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, 5, 0, b"five"), 0)
        asm.add(chunk(1, 2, 0, b"two", last=True), 0)
        out = asm.add(chunk(1, 5, 1, None, last=True), 0)
        assert ids(out) == [(1, 5), (1, 2)]

    def test_first_chunk_arrival_of_any_index_counts(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, "b", 2, b"b2", last=True), 0)      # b's first chunk to arrive
        asm.add(chunk(1, "a", 0, b"a0", last=True), 0)      # a complete, but b came first
        assert asm.pending == 2
        out = feed(asm, [chunk(1, "b", 0, b"b0"), chunk(1, "b", 1, b"b1")])
        assert [(s.sentence_id, s.mp3) for s in out] == [("b", b"b0b1b2"), ("a", b"a0")]

    def test_three_sentences_released_in_a_chain(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, 1, 0, b"1"), 0)
        asm.add(chunk(1, 2, 0, b"2"), 0)
        asm.add(chunk(1, 3, 0, b"3", last=True), 0)
        assert asm.add(chunk(1, 2, 1, None, last=True), 0).ready == []
        assert ids(asm.add(chunk(1, 1, 1, None, last=True), 0)) == [(1, 1), (1, 2), (1, 3)]


# --- duplicates and malformed chunks ----------------------------------------------------

class TestDuplicatesAndFaults:
    def test_duplicate_chunk_ignored_first_wins(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, 0, 0, b"first"), 0)
        out = asm.add(chunk(1, 0, 0, b"SECOND"), 0)
        assert out.ready == [] and out.warnings == []
        assert asm.dropped_chunks == 1
        out = asm.add(chunk(1, 0, 1, b"!", last=True), 0)
        assert [s.mp3 for s in out.ready] == [b"first!"]

    def test_duplicate_last_chunk(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, 0, 1, b"b", last=True), 0)
        asm.add(chunk(1, 0, 1, b"b", last=True), 0)
        assert [s.mp3 for s in asm.add(chunk(1, 0, 0, b"a"), 0).ready] == [b"ab"]

    def test_late_duplicate_after_release_does_not_replay(self) -> None:
        asm = Assembler()
        assert len(asm.add(chunk(1, 0, 0, b"x", last=True), 0).ready) == 1
        for c in (chunk(1, 0, 0, b"x", last=True), chunk(1, 0, 0, b"x"), chunk(1, 0, 1, b"y")):
            out = asm.add(c, 1)
            assert out.ready == []
        assert asm.pending == 0
        assert asm.dropped_chunks == 3

    def test_invalid_base64_drops_that_sentence_only(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, "bad", 0, b"ok"), 0)
        out = asm.add(chunk(1, "bad", 1, raw="%%%not base64%%%"), 0)
        assert out.ready == []
        assert len(out.warnings) == 1
        assert "base64" in out.warnings[0] and "'bad'" in out.warnings[0]
        assert asm.dropped_sentences == 1
        assert asm.pending == 0
        # the rest of the bad sentence never plays
        assert asm.add(chunk(1, "bad", 2, b"z", last=True), 0).ready == []
        # another sentence is unaffected
        assert [s.mp3 for s in asm.add(chunk(1, "good", 0, b"g", last=True), 0).ready] == [b"g"]

    @pytest.mark.parametrize("raw", ["A", "AAAAA", "A===", "AA=", "AA=A", "====", "Zm9v!",
                                     "é", "Zm9v-_", "AA==A"])
    def test_other_invalid_base64(self, raw: str) -> None:
        out = Assembler().add(chunk(1, 0, 0, raw=raw, last=True), 0)
        assert out.ready == []
        assert any("base64" in w for w in out.warnings)

    @pytest.mark.parametrize("raw, data", [
        ("AAE", b"\x00\x01"),             # unpadded end: atob accepts it
        ("AA", b"\x00"),
        ("AA AA", b"\x00\x00\x00"),       # ASCII whitespace is ignored, as atob does
        ("AA\r\nAA\n", b"\x00\x00\x00"),
        ("\tAA==", b"\x00"),
    ])
    def test_what_atob_accepts_is_accepted(self, raw: str, data: bytes) -> None:
        out = Assembler().add(chunk(1, 0, 0, raw=raw, last=True), 0)
        assert out.warnings == []
        assert [s.mp3 for s in out.ready] == [data]

    def test_dropping_the_head_releases_the_sentence_behind_it(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, "head", 0, b"h0"), 0)
        assert asm.add(chunk(1, "next", 0, b"n0", last=True), 0).ready == []
        out = asm.add(chunk(1, "head", 1, raw="!!!"), 0)
        assert ids(out) == [(1, "next")]

    def test_chunk_after_the_last_drops_the_sentence(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, 0, 1, b"b", last=True), 0)
        out = asm.add(chunk(1, 0, 2, b"c"), 0)
        assert any("after the last chunk 1" in w for w in out.warnings)
        assert asm.pending == 0
        assert asm.add(chunk(1, 0, 0, b"a"), 0).ready == []

    def test_last_flag_below_an_existing_index_drops_the_sentence(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, 0, 3, b"d"), 0)
        out = asm.add(chunk(1, 0, 1, b"b", last=True), 0)
        assert any("last chunk 1" in w and "chunk 3 exists" in w for w in out.warnings)
        assert asm.pending == 0
        assert feed(asm, [chunk(1, 0, 0, b"a"), chunk(1, 0, 2, b"c")]) == []


# --- seq rules ---------------------------------------------------------------------------

class TestSeq:
    def test_first_seq_observed_sets_current(self) -> None:
        asm = Assembler()
        out = asm.add(chunk(3, 0, 0, b"x"), 0)
        assert out.barge_to == 3
        assert asm.current_seq == 3
        assert asm.add(chunk(3, 0, 1, b"y"), 0).barge_to is None

    def test_higher_seq_drops_open_sentences_of_lower_seq(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, "old-a", 0, b"a"), 0)
        asm.add(chunk(1, "old-b", 0, b"b", last=True), 0)     # complete, waiting for old-a
        assert asm.pending == 2
        out = asm.add(chunk(2, "new", 0, b"n"), 0)
        assert out.barge_to == 2
        assert out.ready == []
        assert asm.current_seq == 2
        assert asm.pending == 1
        out = feed(asm, [chunk(1, "old-a", 1, b"a1", last=True), chunk(2, "new", 1, None,
                                                                        last=True)])
        assert [(s.seq, s.sentence_id, s.mp3) for s in out] == [(2, "new", b"n")]

    def test_audio_of_a_lower_seq_is_dropped(self) -> None:
        asm = Assembler()
        asm.observe_seq(5)
        before = asm.dropped_chunks
        out = asm.add(chunk(4, 0, 0, b"stale", last=True), 0)
        assert out.ready == [] and out.barge_to is None
        assert asm.dropped_chunks == before + 1
        assert asm.pending == 0
        assert not asm.playable(4)
        assert asm.playable(5)

    def test_observe_seq(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, 0, 0, b"a"), 0)
        assert asm.observe_seq(1).barge_to is None
        assert asm.observe_seq(0).barge_to is None
        assert asm.pending == 1
        assert asm.observe_seq(4).barge_to == 4
        assert asm.pending == 0
        assert asm.current_seq == 4

    def test_observe_seq_of_any_message(self) -> None:
        # the orchestrator applies the rule to every message: observe_seq(seq_of(msg))
        from soca_appliance.protocol import parse, seq_of
        asm = Assembler()
        asm.add(chunk(1, "old", 0, b"a"), 0)
        assert asm.observe_seq(seq_of(parse('{"type":"stt.partial","text":"x"}'))).barge_to is None
        assert asm.pending == 1
        out = asm.observe_seq(seq_of(parse('{"type":"error","message":"m","seq":2}')))
        assert out.barge_to == 2 and asm.pending == 0 and asm.current_seq == 2
        out = asm.observe_seq(seq_of(parse('{"type":"vad.onset","seq":3}')))
        assert out.barge_to == 3

    def test_final_answer_of_a_higher_seq_is_a_barge(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, 0, 0, b"a"), 0)
        out = asm.answer_done(2)
        assert out.barge_to == 2
        assert asm.pending == 0 and asm.current_seq == 2

    def test_barge(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, "a", 0, b"a"), 0)
        out = asm.barge(2)
        assert out.barge_to == 2
        assert asm.current_seq == 2
        assert asm.pending == 0
        assert asm.add(chunk(1, "a", 1, b"", last=True), 0).ready == []
        assert ids(asm.add(chunk(2, "b", 0, b"b", last=True), 0)) == [(2, "b")]

    def test_barge_to_the_current_seq_keeps_its_sentences(self) -> None:
        asm = Assembler()
        asm.add(chunk(3, "a", 0, b"a"), 0)
        out = asm.barge(3)
        assert out.barge_to == 3
        assert asm.pending == 1
        assert ids(asm.add(chunk(3, "a", 1, None, last=True), 0)) == [(3, "a")]

    def test_barge_to_a_lower_seq_changes_nothing(self) -> None:
        asm = Assembler()
        asm.add(chunk(3, "a", 0, b"a"), 0)
        asm.barge(1)
        assert asm.current_seq == 3
        assert asm.pending == 1

    def test_barge_without_seq_stops_what_is_playing_now(self) -> None:
        # PROTOCOL.md: "A barge without a seq stops what is playing now"
        asm = Assembler(progressive=True)
        asm.observe_seq(3)
        playing = asm.add(chunk(3, "a", 0, b"a0"), 0)
        assert [p.first for p in playing.pieces] == [True]
        asm.add(chunk(3, "b", 0, b"b0"), 0)                  # queued behind it
        out = asm.barge(None)
        assert out.stop_through == 3                          # the player stops seq <= 3
        assert out.barge_to is None
        assert out.aborted == [(3, "a")]                      # its playback had begun
        assert asm.current_seq == 3 and asm.pending == 0
        # what was playing or queued never resumes
        assert played(asm.add(chunk(3, "a", 1, b"a1", last=True), 0)) == b""
        assert played(asm.add(chunk(3, "b", 1, b"b1", last=True), 0)) == b""
        # the seq is kept: a sentence that starts later plays, and so does the next seq
        assert played(asm.add(chunk(3, "c", 0, b"c", last=True), 0)) == b"c"
        assert played(asm.add(chunk(4, "d", 0, b"d", last=True), 0)) == b"d"

    def test_stop_playing_is_the_barge_without_seq(self) -> None:
        asm = Assembler()
        asm.add(chunk(2, "a", 0, b"a"), 0)
        out = asm.stop_playing()
        assert out.stop_through == 2 and out.aborted == [] and out.ready == []
        assert asm.pending == 0 and asm.playable(2)

    def test_barge_without_seq_with_nothing_open(self) -> None:
        out = Assembler().barge(None)
        assert out.stop_through == 0 and out.warnings == []

    def test_interrupt_silences_the_current_seq_but_not_the_next(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, "a", 0, b"a"), 0)
        asm.add(chunk(1, "b", 0, b"b", last=True), 0)
        out = asm.interrupt()
        assert out.ready == []
        assert asm.pending == 0
        assert not asm.playable(1)
        # late chunks of the interrupted seq: never played, not even new sentences
        assert feed(asm, [chunk(1, "a", 1, b"", last=True), chunk(1, "c", 0, b"c", last=True)]) == []
        assert asm.pending == 0
        # the next answer plays
        assert asm.playable(2)
        out = asm.add(chunk(2, "d", 0, b"d", last=True), 0)
        assert out.barge_to == 2
        assert [s.mp3 for s in out.ready] == [b"d"]

    def test_interrupt_with_nothing_pending(self) -> None:
        asm = Assembler()
        asm.observe_seq(4)
        asm.interrupt()
        assert asm.interrupted_through == 4
        assert asm.add(chunk(4, 0, 0, b"x", last=True), 0).ready == []
        assert len(asm.add(chunk(5, 0, 0, b"x", last=True), 0).ready) == 1


# --- limits, final answer, timeouts, reset ----------------------------------------------

class TestLimits:
    def test_max_sentence_bytes(self) -> None:
        asm = Assembler(max_sentence_bytes=10)
        asm.add(chunk(1, "big", 0, b"123456"), 0)
        out = asm.add(chunk(1, "big", 1, b"789012", last=True), 0)
        assert out.ready == []
        assert any("'big'" in w and "over 10 bytes" in w for w in out.warnings)
        assert asm.dropped_sentences == 1
        assert asm.pending == 0
        # exactly at the cap is fine
        out = feed(asm, [chunk(1, "fits", 0, b"12345"), chunk(1, "fits", 1, b"67890", last=True)])
        assert [s.mp3 for s in out] == [b"1234567890"]

    def test_max_sentence_bytes_is_checked_on_the_text_before_keeping_it(self) -> None:
        # estimated from the base64 length: an out-of-order chunk is not kept either
        asm = Assembler(max_sentence_bytes=30)
        out = asm.add(chunk(1, "big", 5, raw="A" * 44), 0)      # 33 bytes' worth
        assert any("over 30 bytes" in w for w in out.warnings)
        assert asm.pending == 0

    def test_max_sentence_bytes_with_a_cut_text(self) -> None:
        data = bytes(range(30))
        text = b64(data)                                     # 40 characters
        asm = Assembler(max_sentence_bytes=30)
        out = feed(asm, [chunk(1, 0, 0, raw=text[:13]), chunk(1, 0, 1, raw=text[13:], last=True)])
        assert [s.mp3 for s in out] == [data]
        asm = Assembler(max_sentence_bytes=29)
        out = feed(asm, [chunk(1, 0, 0, raw=text[:13]), chunk(1, 0, 1, raw=text[13:], last=True)])
        assert out == [] and asm.dropped_sentences == 1

    def test_max_pending(self) -> None:
        asm = Assembler(max_pending=2)
        asm.add(chunk(1, "a", 0, b"a"), 0)
        asm.add(chunk(1, "b", 0, b"b"), 0)
        out = asm.add(chunk(1, "c", 0, b"c", last=True), 0)
        assert out.ready == []
        assert any("'c'" in w and "2 sentences pending" in w for w in out.warnings)
        assert asm.pending == 2
        assert asm.dropped_sentences == 1
        # the dropped sentence stays dropped; the others complete normally
        out = feed(asm, [chunk(1, "a", 1, None, last=True), chunk(1, "c", 0, b"c", last=True),
                         chunk(1, "b", 1, None, last=True)])
        assert [s.sentence_id for s in out] == ["a", "b"]

    def test_max_pending_frees_up_after_release(self) -> None:
        asm = Assembler(max_pending=1)
        for n in range(5):
            out = asm.add(chunk(1, n, 0, bytes([n]), last=True), 0)
            assert [s.mp3 for s in out.ready] == [bytes([n])]
            assert out.warnings == []


class TestAnswerDone:
    """final_answer is a summary: it may overtake the last chunks and never cuts audio."""

    def test_sentence_completing_after_the_final_answer_plays_whole(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, "late", 0, b"l0"), 0)
        asm.add(chunk(1, "ok", 0, b"o", last=True), 0)
        out = asm.answer_done(1)
        assert out.ready == [] and out.warnings == [] and out.aborted == []
        assert asm.pending == 2
        out = asm.add(chunk(1, "late", 1, b"l1", last=True), 0)
        assert [(s.sentence_id, s.mp3) for s in out.ready] == [("late", b"l0l1"), ("ok", b"o")]
        assert asm.pending == 0

    def test_whole_sentence_arriving_after_the_final_answer_plays(self) -> None:
        asm = Assembler()
        asm.observe_seq(1)
        asm.answer_done(1)
        out = feed(asm, [chunk(1, "after", 1, b"b", last=True), chunk(1, "after", 0, b"a")])
        assert [s.mp3 for s in out] == [b"ab"]

    @pytest.mark.parametrize("padded", [True, False], ids=["per-chunk-base64", "cut-text"])
    @pytest.mark.parametrize("progressive", [True, False])
    def test_chunks_after_the_final_answer_in_both_modes(self, progressive: bool,
                                                         padded: bool) -> None:
        mp3 = bytes(range(256)) * 3
        if padded:      # each chunk encoded on its own: the old decoder took these too
            cuts = [0, 100, 400, 700, len(mp3)]
            parts = [b64(mp3[a:b]) for a, b in zip(cuts, cuts[1:])]
        else:
            text = b64(mp3)
            cuts = [0, 101, 550, 998, len(text)]
            parts = [text[a:b] for a, b in zip(cuts, cuts[1:])]
        asm = Assembler(progressive=progressive)
        got = played(asm.add(chunk(4, 0, 0, raw=parts[0]), 0))
        got += played(asm.add(chunk(4, 0, 1, raw=parts[1]), 0))
        out = asm.answer_done(4)                       # overtakes the last two chunks
        assert out.aborted == [] and out.warnings == []
        got += played(out)
        got += played(asm.add(chunk(4, 0, 2, raw=parts[2]), 0))
        got += played(asm.add(chunk(4, 0, 3, raw=parts[3], last=True), 0))
        assert got == mp3
        assert asm.pending == 0

    def test_an_incomplete_sentence_still_expires(self) -> None:
        asm = Assembler(sentence_timeout=5.0)
        asm.add(chunk(1, "stuck", 0, b"s"), 0.0)            # its last chunk never comes
        asm.add(chunk(1, "ok", 0, b"o", last=True), 0.0)
        assert asm.answer_done(1).warnings == []
        out = asm.expire(5.5)
        assert ids(out) == [(1, "ok")]
        assert any("'stuck'" in w for w in out.warnings)

    def test_with_everything_complete_does_nothing(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, "a", 0, b"a", last=True), 0)
        out = asm.answer_done(1)
        assert out.ready == [] and out.warnings == [] and out.barge_to is None

    def test_keeps_sentences_of_a_later_seq(self) -> None:
        asm = Assembler()
        asm.observe_seq(2)
        asm.add(chunk(2, "a", 0, b"a"), 0)
        out = asm.answer_done(1)
        assert out.warnings == []
        assert asm.pending == 1


class TestExpire:
    def test_expire_after_sentence_timeout(self) -> None:
        asm = Assembler(sentence_timeout=15.0)
        asm.add(chunk(1, "slow", 0, b"s"), 100.0)
        asm.add(chunk(1, "next", 0, b"n", last=True), 101.0)
        assert asm.expire(110.0).ready == []
        assert asm.expire(115.0).ready == []                 # exactly the timeout: not yet
        out = asm.expire(115.5)
        assert ids(out) == [(1, "next")]
        assert any("'slow'" in w and "15 s" in w for w in out.warnings)
        assert asm.pending == 0

    def test_each_chunk_restarts_the_timer(self) -> None:
        asm = Assembler(sentence_timeout=15.0)
        asm.add(chunk(1, 0, 0, b"a"), 0.0)
        asm.add(chunk(1, 0, 1, b"b"), 10.0)
        assert asm.expire(20.0).warnings == []
        assert asm.pending == 1
        assert asm.expire(25.1).warnings != []

    def test_duplicate_chunk_also_counts_as_activity(self) -> None:
        asm = Assembler(sentence_timeout=5.0)
        asm.add(chunk(1, 0, 0, b"a"), 0.0)
        asm.add(chunk(1, 0, 0, b"a"), 4.0)
        assert asm.expire(6.0).warnings == []

    def test_expire_with_nothing_pending(self) -> None:
        out = Assembler().expire(1e9)
        assert out.ready == [] and out.warnings == []


class TestReset:
    def test_reset_drops_open_sentences(self) -> None:
        asm = Assembler()
        asm.add(chunk(1, "a", 0, b"a"), 0)
        asm.add(chunk(1, "b", 0, b"b", last=True), 0)
        asm.reset()
        assert asm.pending == 0
        # a new session: its sentences play, seq numbering starts again
        assert ids(asm.add(chunk(1, "c", 0, b"c", last=True), 0)) == [(1, "c")]

    def test_reset_keeps_counters(self) -> None:
        asm = Assembler(max_pending=1)
        asm.add(chunk(1, "a", 0, b"a"), 0)
        asm.add(chunk(1, "b", 0, b"b"), 0)
        asm.reset()
        assert asm.dropped_sentences == 1

    def test_new_session_after_reset_plays_from_seq_1(self) -> None:
        asm = Assembler()
        feed(asm, [chunk(1, 0, 0, b"old1", last=True), chunk(3, 0, 0, b"old3", last=True)])
        asm.reset()
        out = asm.add(chunk(1, 0, 0, b"new", last=True), 0)
        assert [s.mp3 for s in out.ready] == [b"new"]


# --- properties --------------------------------------------------------------------------

@st.composite
def sentences(draw: st.DrawFn, seq: int, min_n: int = 1, max_n: int = 6) -> list[list[SentenceChunk]]:
    """Chunks of several sentences of ``seq``, each list in chunkIndex order."""
    out = []
    for sid in range(draw(st.integers(min_n, max_n))):
        parts = draw(st.lists(st.binary(min_size=1, max_size=12), min_size=1, max_size=5))
        null_last = draw(st.booleans())
        sentence = [chunk(seq, sid, i, p) for i, p in enumerate(parts)]
        if null_last:
            sentence.append(chunk(seq, sid, len(parts), None, last=True))
        else:
            sentence[-1] = chunk(seq, sid, len(parts) - 1, parts[-1], last=True)
        out.append(sentence)
    return out


def original(sentence: list[SentenceChunk]) -> bytes:
    return b"".join(base64.b64decode(c.audio_b64) for c in sentence if c.audio_b64)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_property_any_interleaving_releases_each_sentence_once_in_first_arrival_order(
        data: st.DataObject) -> None:
    sents = data.draw(sentences(seq=7))
    stream = [c for s in sents for c in s]
    dups = data.draw(st.lists(st.sampled_from(stream), max_size=8))
    stream = data.draw(st.permutations(stream + dups))

    asm = Assembler()
    released: list[Sentence] = []
    first_arrival: list[SID] = []
    seen: dict[SID, set[int]] = {}
    for c in stream:
        if c.sentence_id not in seen:
            first_arrival.append(c.sentence_id)
            seen[c.sentence_id] = set()
        seen[c.sentence_id].add(c.chunk_index)
        out = asm.add(c, 0.0)
        assert out.warnings == []
        released += out.ready
        # head-of-line: exactly the longest prefix of complete sentences has been released
        prefix = 0
        for sid in first_arrival:
            if len(seen[sid]) != len(sents[sid]):
                break
            prefix += 1
        assert [s.sentence_id for s in released] == first_arrival[:prefix]

    assert [s.sentence_id for s in released] == first_arrival
    assert sorted(first_arrival) == list(range(len(sents)))
    for s in released:
        assert s.seq == 7
        assert s.mp3 == original(sents[s.sentence_id])
        assert s.chunks == len(sents[s.sentence_id])
    assert asm.pending == 0


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_property_nothing_of_seq_1_plays_after_the_first_seq_2_message(
        data: st.DataObject) -> None:
    old = [c for s in data.draw(sentences(seq=1)) for c in s]
    new_sents = data.draw(sentences(seq=2))
    new = [c for s in new_sents for c in s]
    old = data.draw(st.permutations(old))
    new = data.draw(st.permutations(new))
    # seq 2 starts after at least one seq-1 chunk; the rest of seq 1 may straggle in later
    split = data.draw(st.integers(1, len(old)))
    tail = data.draw(st.permutations(old[split:] + new[1:]))
    stream = old[:split] + [new[0]] + tail

    asm = Assembler()
    first_new = split
    released_new: list[Sentence] = []
    first_arrival: list[SID] = []
    for pos, c in enumerate(stream):
        out = asm.add(c, 0.0)
        if pos == first_new:
            assert out.barge_to == 2
        if pos >= first_new:
            assert all(s.seq == 2 for s in out.ready), "seq 1 audio after seq 2 began"
            released_new += out.ready
            if c.seq == 2 and c.sentence_id not in first_arrival:
                first_arrival.append(c.sentence_id)
    assert asm.current_seq == 2
    assert [s.sentence_id for s in released_new] == first_arrival
    for s in released_new:
        assert s.mp3 == original(new_sents[s.sentence_id])
    assert asm.pending == 0


class TestWarningLimiter:
    def test_bursts_are_capped_and_the_rest_counted(self) -> None:
        from soca_appliance.appliance import WarningLimiter
        limiter = WarningLimiter(burst=3, window=10.0)
        verdicts = [limiter.allow(0.0 + i * 0.01) for i in range(10)]
        assert [v[0] for v in verdicts] == [True] * 3 + [False] * 7
        assert limiter.suppressed == 7
        allowed, held = limiter.allow(10.5)       # a new window says what it held back
        assert allowed and held == 7 and limiter.suppressed == 0
