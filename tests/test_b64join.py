"""Joined base64 (b64join.py, and the assembler using it): a sentence's chunk texts are
one base64 text, cut anywhere, and what plays is exactly its decoding, once.

The vendor page's client joins the chunks' ``audioBase64`` and calls ``atob`` once; the
service may therefore cut the text at any length (issue 10: a sentence cut at 998
characters used to be dropped whole). These tests drive the assembler chunk by chunk in
every arrival order, progressive and not, and compare with the original bytes.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soca_appliance.assembler import Assembler, Outcome
from soca_appliance.b64join import B64Error, B64Joiner, clean, decode_joined
from soca_appliance.protocol import SentenceChunk

ASSETS = Path(__file__).resolve().parent.parent / "device" / "soca_appliance" / "assets"
MP3_HEADERS = [b"ID3\x04\x00\x00\x00\x00\x00\x00", b"\xff\xfb\x90\x64", b"\xff\xf3\x48\xc4", b""]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def cut(text: Any, positions: list[int]) -> list[Any]:
    """``text`` (str or bytes) cut at ``positions`` (unsorted, repeated: empty pieces kept)."""
    points = sorted(min(max(p, 0), len(text)) for p in positions)
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def chunks_of(seq: int, sid: object, texts: list[str]) -> list[SentenceChunk]:
    return [SentenceChunk(seq=seq, sentence_id=sid, chunk_index=i, is_last=i == len(texts) - 1,
                          audio_b64=t or None) for i, t in enumerate(texts)]


def played(out: Outcome) -> bytes:
    return b"".join(s.mp3 for s in out.ready) + b"".join(p.data for p in out.pieces)


class Listener:
    """What the player is handed, per sentence, checked for the piece protocol."""

    def __init__(self) -> None:
        self.audio: dict[tuple[int, object], bytes] = {}
        self.order: list[tuple[int, object]] = []
        self.finished: set[tuple[int, object]] = set()
        self.warnings: list[str] = []
        self.aborted: set[tuple[int, object]] = set()

    def take(self, out: Outcome) -> None:
        self.warnings += out.warnings
        for key in out.aborted:
            assert key in self.audio and key not in self.finished, "aborted what never began"
            self.aborted.add(key)
        for s in out.ready:
            key = (s.seq, s.sentence_id)
            assert key not in self.audio, "a sentence handed out twice"
            self.audio[key] = s.mp3
            self.order.append(key)
            self.finished.add(key)
        for p in out.pieces:
            key = (p.seq, p.sentence_id)
            assert key not in self.finished, "a piece after the final one"
            assert p.first == (key not in self.audio), "first piece flag wrong"
            if p.first:
                self.order.append(key)
                self.audio[key] = b""
            self.audio[key] += p.data
            if p.final:
                self.finished.add(key)


mp3_like = st.builds(lambda head, body: head + body, st.sampled_from(MP3_HEADERS),
                     st.binary(min_size=0, max_size=300))


# --- the concrete case of issue 10 ------------------------------------------------------------

@pytest.mark.parametrize("progressive", [False, True])
def test_a_sentence_cut_every_998_characters_plays_whole(progressive: bool) -> None:
    """Failed before the fix: each 998-character chunk was decoded alone (998 % 4 == 2)
    and the sentence was dropped as invalid base64, so the kiosk never spoke."""
    mp3 = (ASSETS / "answer-en-1-1.mp3").read_bytes()
    text = b64(mp3)
    texts = [text[i:i + 998] for i in range(0, len(text), 998)]
    assert len(texts) > 3 and len(texts[0]) % 4 != 0
    asm = Assembler(progressive=progressive)
    listener = Listener()
    for c in chunks_of(1, 0, texts):
        listener.take(asm.add(c, 0.0))
    assert listener.warnings == []
    assert listener.audio == {(1, 0): mp3}
    assert listener.finished == {(1, 0)}
    assert asm.pending == 0 and asm.dropped_sentences == 0


def test_a_progressive_sentence_plays_as_it_arrives_not_only_at_the_end() -> None:
    mp3 = (ASSETS / "answer-en-1-1.mp3").read_bytes()
    text = b64(mp3)
    texts = [text[i:i + 998] for i in range(0, len(text), 998)]
    asm = Assembler(progressive=True)
    first = asm.add(chunks_of(1, 0, texts)[0], 0.0)
    # 998 characters: 996 of them are whole quanta, 747 bytes; 2 characters wait
    assert [(p.first, p.final, p.data) for p in first.pieces] == [(True, False, mp3[:747])]


# --- the decoder on its own ------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(data=mp3_like, positions=st.lists(st.integers(0, 420), max_size=8))
def test_joiner_decodes_any_cut_as_the_whole(data: bytes, positions: list[int]) -> None:
    joiner = B64Joiner()
    out = b""
    for piece in cut(b64(data), positions):
        out += joiner.feed(clean(piece))
        assert joiner.carried <= 3          # bounded: at most one incomplete quantum held
    assert out + joiner.finish() == data


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(mp3_like, min_size=1, max_size=6),
       positions=st.lists(st.integers(0, 2000), max_size=6))
def test_per_chunk_padding_decodes_to_the_concatenation(parts: list[bytes],
                                                        positions: list[int]) -> None:
    # each part encoded on its own (with its padding), then the joined text cut anywhere
    text = "".join(b64(p) for p in parts)
    assert decode_joined(cut(text, positions)) == b"".join(parts)


@settings(max_examples=200, deadline=None)
@given(data=mp3_like, spots=st.lists(st.tuples(st.integers(0, 500), st.sampled_from(" \t\r\n\f")),
                                     max_size=6))
def test_ascii_whitespace_anywhere_is_ignored(data: bytes, spots: list[tuple[int, str]]) -> None:
    text = b64(data)
    for pos, ws in sorted(spots, reverse=True):
        pos = min(pos, len(text))
        text = text[:pos] + ws + text[pos:]
    assert decode_joined([text]) == data


@pytest.mark.parametrize("text, data", [
    ("", b""), ("QQ==", b"A"), ("QUI=", b"AB"), ("QUJD", b"ABC"), ("QUI", b"AB"), ("QQ", b"A"),
    ("QQ==QUI=QUJD", b"AABABC"), ("QR==", b"A"),        # non-zero trailing bits: atob too
])
def test_decode_joined_examples(text: str, data: bytes) -> None:
    assert decode_joined([text]) == data
    assert decode_joined(list(text)) == data            # one character per chunk


@pytest.mark.parametrize("text", ["Q", "QUJDQ", "QQ=", "QQ=A", "Q===", "====", "QQ===",
                                  "QUI==", "=QUJD", "QQ==Q", "QUJD!", "QU-D", "QU_D", "QUJ\x00",
                                  "QUJ\u00e9", "QUJ\u3000"])
def test_not_base64_is_an_error(text: str) -> None:
    with pytest.raises(B64Error):
        decode_joined([text])
    with pytest.raises(B64Error):
        decode_joined(list(text))


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(mp3_like, min_size=1, max_size=6),
       positions=st.lists(st.integers(0, 2000), max_size=6))
def test_every_piece_of_a_valid_text_passes_clean(parts: list[bytes],
                                                  positions: list[int]) -> None:
    for piece in cut("".join(b64(p) for p in parts), positions):
        assert clean(piece) == piece


@pytest.mark.parametrize("text", ["===", "=" * 1000, "QQ" + "=" * 5, "==QQ===="])
def test_a_padding_flood_is_refused_piece_by_piece(text: str) -> None:
    with pytest.raises(B64Error):
        clean(text)


def test_a_padding_flood_out_of_order_is_not_kept() -> None:
    # '=' carries no data, so the size cap alone would let these pile up unjoined
    asm = Assembler(max_sentence_bytes=1000)
    out = asm.add(SentenceChunk(seq=1, sentence_id=0, chunk_index=5, is_last=False,
                                audio_b64="=" * 100_000), 0.0)
    assert any("base64" in w for w in out.warnings)
    assert asm.pending == 0


def test_error_text_never_quotes_the_data() -> None:
    with pytest.raises(B64Error) as info:
        clean("SECRETSECRET%")
    assert "SECRET" not in str(info.value)
    assert "'%'" in str(info.value)


# --- the assembler: any cut, any arrival order, progressive or not ----------------------------

@settings(max_examples=300, deadline=None)
@given(st.data())
def test_property_any_cut_any_order_hands_out_the_original_once(data: st.DataObject) -> None:
    progressive = data.draw(st.booleans(), label="progressive")
    originals = data.draw(st.lists(mp3_like, min_size=1, max_size=4), label="sentences")
    padded = data.draw(st.booleans(), label="per-chunk padding")
    stream: list[SentenceChunk] = []
    for sid, mp3 in enumerate(originals):
        if padded:          # cut the bytes, encode each piece on its own
            pieces = cut(mp3, data.draw(st.lists(st.integers(0, len(mp3)), max_size=5)))
            texts = [b64(p) for p in pieces]
        else:               # encode once, cut the text anywhere
            text = b64(mp3)
            texts = cut(text, data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
        stream += chunks_of(1, sid, texts)
    stream = data.draw(st.permutations(stream), label="arrival order")

    asm = Assembler(progressive=progressive)
    listener = Listener()
    first_arrival: list[int] = []
    for c in stream:
        if c.sentence_id not in first_arrival:
            first_arrival.append(c.sentence_id)
        listener.take(asm.add(c, 0.0))
    empty = {sid for sid, mp3 in enumerate(originals) if not mp3}
    assert len(listener.warnings) == len(empty)          # "carried no audio", nothing else
    assert all("no audio" in w for w in listener.warnings)
    assert listener.order == [(1, sid) for sid in first_arrival if sid not in empty]
    assert listener.audio == {(1, sid): mp3 for sid, mp3 in enumerate(originals) if mp3}
    assert listener.finished == set(listener.audio)
    assert asm.pending == 0


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_property_invalid_characters_drop_that_sentence_and_nothing_else(
        data: st.DataObject) -> None:
    progressive = data.draw(st.booleans(), label="progressive")
    bad_mp3, good_mp3 = data.draw(mp3_like), data.draw(mp3_like.filter(bool))
    bad_text = b64(bad_mp3)
    spot = data.draw(st.integers(0, len(bad_text)))
    junk = data.draw(st.sampled_from(["!", "-", "_", "\x00", "é", "*", ".", "\u3000", "\x0b"]))
    bad_text = bad_text[:spot] + junk + bad_text[spot:]
    bad = chunks_of(1, "bad", cut(bad_text, data.draw(st.lists(st.integers(0, len(bad_text)),
                                                               max_size=5))))
    good_text = b64(good_mp3)
    good = chunks_of(1, "good", cut(good_text, data.draw(st.lists(st.integers(0, len(good_text)),
                                                                  max_size=5))))
    later = chunks_of(2, "later", [b64(good_mp3)])
    # the bad sentence starts first (it holds the line), the rest interleaves
    rest = data.draw(st.permutations(bad[1:] + good))
    stream = [bad[0], *rest, *later]

    asm = Assembler(progressive=progressive)
    listener = Listener()
    for c in stream:
        listener.take(asm.add(c, 0.0))
    assert any("'bad'" in w and "base64" in w for w in listener.warnings), listener.warnings
    assert asm.dropped_sentences == 1
    assert listener.audio.get((1, "good")) == good_mp3
    assert listener.audio.get((2, "later")) == good_mp3
    assert (1, "bad") not in listener.finished
    # progressive: if its playback began, the player is told to drop it
    assert ((1, "bad") in listener.audio) == ((1, "bad") in listener.aborted)
    assert asm.pending == 0


def test_the_warning_names_the_chunk_where_the_joined_text_went_wrong() -> None:
    text = b64(bytes(range(60)))                        # 80 characters
    texts = [text[:30], text[30:50] + "!", text[50:]]
    asm = Assembler()
    outs = [asm.add(c, 0.0) for c in chunks_of(1, 0, texts)]
    warnings = [w for o in outs for w in o.warnings]
    assert len(warnings) == 1
    assert "chunk 1" in warnings[0] and "base64" in warnings[0]


def test_misplaced_padding_is_found_where_the_chunks_join() -> None:
    # "AB" + "=C..." : valid characters, but the joined text is not base64 at chunk 1
    asm = Assembler()
    outs = [asm.add(c, 0.0) for c in chunks_of(1, 0, ["QUJD" * 3 + "AB", "=CQUJD", "QUJD"])]
    warnings = [w for o in outs for w in o.warnings]
    assert len(warnings) == 1 and "chunk 1" in warnings[0] and "not base64" in warnings[0]
    assert all(played(o) == b"" for o in outs)


def test_a_text_ending_in_one_lone_character_is_dropped_at_its_end() -> None:
    asm = Assembler()
    out = [asm.add(c, 0.0) for c in chunks_of(1, 0, ["QUJD", "Q"])]
    assert any("at its end" in w for w in out[-1].warnings)
    assert asm.dropped_sentences == 1


@pytest.mark.parametrize("progressive", [False, True])
def test_memory_held_for_a_progressive_head_is_handed_out(progressive: bool) -> None:
    """The head sentence keeps no decoded audio once handed out (progressive), and never
    more than its cap's worth of text (either mode)."""
    mp3 = bytes(range(256)) * 40
    text = b64(mp3)
    texts = [text[i:i + 997] for i in range(0, len(text), 997)]
    asm = Assembler(progressive=progressive, max_sentence_bytes=len(mp3))
    got = b""
    received = 0
    for c in chunks_of(1, 0, texts)[:-1]:
        got += played(asm.add(c, 0.0))
        received += len(c.audio_b64 or "")
        held = asm._open[(1, 0)]                     # noqa: SLF001 - the bound under test
        assert held.texts == {}                      # in order: no text is kept
        assert held.decoder.carried == received % 4
        assert len(held.audio) == (0 if progressive else received // 4 * 3)
    got += played(asm.add(chunks_of(1, 0, texts)[-1], 0.0))
    assert got == mp3
    assert asm.pending == 0
