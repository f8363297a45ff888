"""Sentence assembly and the seq rules: which agent audio may play, and in what order.

Pure logic, no I/O, no threads, no clock of its own (``now`` is passed in). Chunks are
collected per (seq, sentenceId), joined in chunkIndex order once the last chunk and every
index before it arrived, and released in the order in which each sentence's first chunk
arrived. A newer seq (from a barge or from any message carrying it) drops everything older.
Memory is bounded: a sentence's bytes, the number of open sentences and the set of
sentences remembered as dropped are all capped.

With ``progressive`` on, the sentence at the head of the line is handed out in pieces as
its chunks arrive in order (:class:`Piece`), so playback can begin before it completes;
the sentences behind it still wait their turn.
"""
from __future__ import annotations

import binascii
import base64
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

from .protocol import SentenceChunk, SentenceId

Key = tuple[int, SentenceId]
_MAX_DEAD = 256


@dataclass(frozen=True)
class Sentence:
    """A complete sentence, ready to play."""
    seq: int
    sentence_id: SentenceId
    mp3: bytes
    text: str = ""
    chunks: int = 0


@dataclass(frozen=True)
class Piece:
    """Progressive playback: the next contiguous MP3 bytes of the head sentence."""
    seq: int
    sentence_id: SentenceId
    data: bytes
    text: str
    first: bool
    final: bool


@dataclass
class Outcome:
    """What one input changed: sentences (or pieces) now playable, a seq jump, sentences
    whose playback began but that will never complete, warnings to log."""
    ready: list[Sentence] = field(default_factory=list)
    pieces: list[Piece] = field(default_factory=list)
    aborted: list[Key] = field(default_factory=list)
    barge_to: Optional[int] = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Open:
    first_seen: float
    last_seen: float
    parts: dict[int, bytes] = field(default_factory=dict)
    last_index: Optional[int] = None
    text: str = ""
    size: int = 0
    streamed: int = 0           # progressive: chunks before this index were handed out

    def complete(self) -> bool:
        return self.last_index is not None and len(self.parts) == self.last_index + 1


class Assembler:
    def __init__(self, max_sentence_bytes: int = 1 << 20, max_pending: int = 32,
                 sentence_timeout: float = 15.0, progressive: bool = False) -> None:
        self.max_sentence_bytes = max_sentence_bytes
        self.max_pending = max_pending
        self.sentence_timeout = sentence_timeout
        self.progressive = progressive
        self.current_seq = 0
        # Audio of seqs up to this one was cut short locally (button): never play it.
        self.interrupted_through = -1
        self._open: OrderedDict[Key, _Open] = OrderedDict()
        self._closed: OrderedDict[Key, None] = OrderedDict()
        self.dropped_chunks = 0
        self.dropped_sentences = 0

    # --- inputs --------------------------------------------------------------------

    def observe_seq(self, seq: int) -> Outcome:
        """The seq rule, for every message that carries a seq."""
        out = Outcome()
        if seq > self.current_seq:
            self._advance(seq, out)
        return out

    def barge(self, seq: int) -> Outcome:
        """A server barge: drop everything below ``seq`` (the seq rule, said explicitly)."""
        out = self.observe_seq(seq)
        out.barge_to = seq
        return out

    def interrupt(self) -> Outcome:
        """The button: drop every open sentence; later audio of the current seq is not played."""
        out = Outcome()
        self.interrupted_through = max(self.interrupted_through, self.current_seq)
        for key in list(self._open):
            self._abandon(key, out)
        return out

    def add(self, chunk: SentenceChunk, now: float) -> Outcome:
        out = self.observe_seq(chunk.seq)
        self._add(chunk, now, out)
        # Also after a drop: the dropped sentence may have been holding the line.
        self._release(out)
        return out

    def _add(self, chunk: SentenceChunk, now: float, out: Outcome) -> None:
        key: Key = (chunk.seq, chunk.sentence_id)
        if not self.playable(chunk.seq):
            self.dropped_chunks += 1
            return
        if key in self._closed:
            self.dropped_chunks += 1
            return
        sentence = self._open.get(key)
        if sentence is None:
            if len(self._open) >= self.max_pending:
                self._drop(key, out, f"sentence {_name(key)} dropped: already "
                                     f"{self.max_pending} sentences pending")
                return
            sentence = self._open[key] = _Open(first_seen=now, last_seen=now)
        sentence.last_seen = now
        if chunk.chunk_index in sentence.parts:
            self.dropped_chunks += 1     # a duplicate: the first copy wins
            return
        if sentence.last_index is not None and chunk.chunk_index > sentence.last_index:
            self._drop(key, out, f"sentence {_name(key)} dropped: chunk {chunk.chunk_index} "
                                 f"after the last chunk {sentence.last_index}")
            return
        try:
            data = base64.b64decode(chunk.audio_b64, validate=True) if chunk.audio_b64 else b""
        except (binascii.Error, ValueError):
            self._drop(key, out, f"sentence {_name(key)} dropped: chunk {chunk.chunk_index} "
                                 "has invalid base64 audio")
            return
        sentence.size += len(data)
        if sentence.size > self.max_sentence_bytes:
            self._drop(key, out, f"sentence {_name(key)} dropped: over "
                                 f"{self.max_sentence_bytes} bytes of audio")
            return
        sentence.parts[chunk.chunk_index] = data
        if chunk.text and not sentence.text:
            sentence.text = chunk.text
        if chunk.is_last:
            if max(sentence.parts) > chunk.chunk_index:
                self._drop(key, out, f"sentence {_name(key)} dropped: last chunk "
                                     f"{chunk.chunk_index} but chunk {max(sentence.parts)} exists")
                return
            sentence.last_index = chunk.chunk_index
        return

    def answer_done(self, seq: int) -> Outcome:
        """final_answer for ``seq``: its sentences still missing chunks will never complete."""
        out = self.observe_seq(seq)
        for key, sentence in list(self._open.items()):
            if key[0] <= seq and not sentence.complete():
                self._drop(key, out, f"sentence {_name(key)} dropped: incomplete at the final "
                                     f"answer ({len(sentence.parts)} chunks arrived)")
        self._release(out)
        return out

    def expire(self, now: float) -> Outcome:
        """Drop sentences that stopped receiving chunks ``sentence_timeout`` ago."""
        out = Outcome()
        for key, sentence in list(self._open.items()):
            if not sentence.complete() and now - sentence.last_seen > self.sentence_timeout:
                self._drop(key, out, f"sentence {_name(key)} dropped: no chunk for "
                                     f"{self.sentence_timeout:g} s")
        self._release(out)
        return out

    def reset(self) -> Outcome:
        """A new connection is a new session: open sentences of the old one can never
        complete, and seq numbering starts again."""
        out = Outcome()
        for key in list(self._open):
            self._abandon(key, out)
        self._closed.clear()
        self.current_seq = 0
        self.interrupted_through = -1
        return out

    @property
    def pending(self) -> int:
        return len(self._open)

    def playable(self, seq: int) -> bool:
        return seq >= self.current_seq and seq > self.interrupted_through

    # --- internals -----------------------------------------------------------------

    def _advance(self, seq: int, out: Outcome) -> None:
        self.current_seq = seq
        out.barge_to = seq
        for key in [k for k in self._open if k[0] < seq]:
            self._kill(key)
        for key in [k for k in self._closed if k[0] < seq]:
            del self._closed[key]

    def _release(self, out: Outcome) -> None:
        # Play order is first-chunk arrival: only the head of the line may go.
        while self._open:
            key, sentence = next(iter(self._open.items()))
            if self.progressive:
                self._stream(key, sentence, out)
            if not sentence.complete():
                return
            self._kill(key)     # remembered, so a late duplicate cannot reopen it
            if self.progressive:
                continue
            mp3 = b"".join(sentence.parts[i] for i in range(sentence.last_index + 1))
            if not mp3:
                out.warnings.append(f"sentence {_name(key)} skipped: it carried no audio")
                continue
            out.ready.append(Sentence(seq=key[0], sentence_id=key[1], mp3=mp3,
                                      text=sentence.text, chunks=len(sentence.parts)))

    def _stream(self, key: Key, sentence: _Open, out: Outcome) -> None:
        first = sentence.streamed == 0
        data = []
        while sentence.streamed in sentence.parts:
            data.append(sentence.parts[sentence.streamed])
            sentence.parts[sentence.streamed] = b""      # handed out: keep only the index
            sentence.streamed += 1
        final = sentence.complete()
        if first and final and not any(data):
            out.warnings.append(f"sentence {_name(key)} skipped: it carried no audio")
        elif data or (final and not first):
            out.pieces.append(Piece(key[0], key[1], b"".join(data), sentence.text,
                                    first=first, final=final))

    def _drop(self, key: Key, out: Outcome, warning: str) -> None:
        out.warnings.append(warning)
        self.dropped_sentences += 1
        self._abandon(key, out)

    def _abandon(self, key: Key, out: Outcome) -> None:
        sentence = self._open.get(key)
        if sentence is not None and sentence.streamed > 0:
            out.aborted.append(key)        # its playback began: the player must drop it
        self._kill(key)

    def _kill(self, key: Key) -> None:
        self._open.pop(key, None)
        self._closed[key] = None
        while len(self._closed) > _MAX_DEAD:
            self._closed.popitem(last=False)


def _name(key: Key) -> str:
    return f"seq {key[0]} id {key[1]!r}"
