"""Sentence assembly and the seq rules: which agent audio may play, and in what order.

Pure logic, no I/O, no threads, no clock of its own (``now`` is passed in). Chunks are
collected per (seq, sentenceId); their base64 texts are joined in chunkIndex order and the
joined text is decoded (b64join.py: cut anywhere, padded per chunk or not), as far as the
chunks are contiguous; a sentence is complete once its last chunk and every index before
it arrived. Sentences are released in the order in which their first chunk arrived. A
newer seq (from a barge or from any message carrying it) drops everything older. A
sentence is dropped only when its joined text is not base64, it breaks a limit, or it
stops receiving chunks (:meth:`Assembler.expire`); a final answer never cuts one.
Memory is bounded: a sentence's bytes (estimated from its base64 length before anything
is kept), the number of open sentences and the set of sentences remembered as dropped
are all capped.

With ``progressive`` on, the sentence at the head of the line is handed out in pieces as
its audio is decoded (:class:`Piece`), so playback can begin before it completes; the
sentences behind it still wait their turn.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

from .b64join import B64Error, B64Joiner, clean, data_chars, estimate_bytes
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
    """What one input changed: sentences (or pieces) now playable, a seq jump
    (``barge_to``: stop everything below it), ``stop_through`` (a barge without seq: stop
    everything playing or queued with a seq up to and including it), sentences whose
    playback began but that will never complete, warnings to log."""
    ready: list[Sentence] = field(default_factory=list)
    pieces: list[Piece] = field(default_factory=list)
    aborted: list[Key] = field(default_factory=list)
    barge_to: Optional[int] = None
    warnings: list[str] = field(default_factory=list)
    stop_through: Optional[int] = None


@dataclass
class _Open:
    first_seen: float
    last_seen: float
    texts: dict[int, str] = field(default_factory=dict)    # base64 of chunks not yet joined
    joined: int = 0             # chunks below this index are joined and decoded
    decoder: B64Joiner = field(default_factory=B64Joiner)
    audio: bytearray = field(default_factory=bytearray)     # decoded, not yet handed out
    max_index: int = -1
    last_index: Optional[int] = None
    text: str = ""
    chars: int = 0              # base64 data characters received (the size estimate)
    started: bool = False       # progressive: its first piece was handed out

    def has(self, index: int) -> bool:
        return index < self.joined or index in self.texts

    def complete(self) -> bool:
        return self.last_index is not None and self.joined > self.last_index


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

    def observe_seq(self, seq: Optional[int]) -> Outcome:
        """The seq rule, for every message that carries a seq (``protocol.seq_of``; None,
        a message without one, changes nothing)."""
        out = Outcome()
        if seq is not None and seq > self.current_seq:
            self._advance(seq, out)
        return out

    def barge(self, seq: Optional[int]) -> Outcome:
        """A server barge: drop everything below ``seq`` (the seq rule, said explicitly).
        Without a seq (``None``), :meth:`stop_playing`."""
        if seq is None:
            return self.stop_playing()
        out = self.observe_seq(seq)
        out.barge_to = seq
        return out

    def stop_playing(self) -> Outcome:
        """A barge without a seq: stop what is playing now (PROTOCOL.md).

        Every open sentence (all are of the current seq: older ones are gone already) is
        dropped and remembered, so its late chunks never play; ``stop_through`` tells the
        player to stop everything playing or queued up to the current seq, which covers the
        complete sentences already handed out. The current seq stays: a sentence whose
        first chunk arrives later still plays (unlike :meth:`interrupt`, the button, which
        also silences the rest of the seq)."""
        out = Outcome(stop_through=self.current_seq)
        for key in list(self._open):
            self._abandon(key, out)
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
        index = chunk.chunk_index
        if sentence.has(index):
            self.dropped_chunks += 1     # a duplicate: the first copy wins
            return
        if sentence.last_index is not None and index > sentence.last_index:
            self._drop(key, out, f"sentence {_name(key)} dropped: chunk {index} "
                                 f"after the last chunk {sentence.last_index}")
            return
        try:
            text = clean(chunk.audio_b64) if chunk.audio_b64 else ""
        except B64Error as exc:
            self._drop(key, out, f"sentence {_name(key)} dropped: chunk {index} has invalid "
                                 f"base64 audio ({exc})")
            return
        # Checked before the text is kept: memory stays bounded by the cap.
        sentence.chars += data_chars(text)
        if estimate_bytes(sentence.chars) > self.max_sentence_bytes:
            self._drop(key, out, f"sentence {_name(key)} dropped: over "
                                 f"{self.max_sentence_bytes} bytes of audio")
            return
        if chunk.is_last and sentence.max_index > index:
            self._drop(key, out, f"sentence {_name(key)} dropped: last chunk "
                                 f"{index} but chunk {sentence.max_index} exists")
            return
        sentence.texts[index] = text
        sentence.max_index = max(sentence.max_index, index)
        if chunk.text and not sentence.text:
            sentence.text = chunk.text
        if chunk.is_last:
            sentence.last_index = index
        self._join(key, sentence, out)

    def _join(self, key: Key, sentence: _Open, out: Outcome) -> None:
        # Decode the joined text as far as the chunks are contiguous.
        index = sentence.joined
        try:
            while index in sentence.texts:
                sentence.audio += sentence.decoder.feed(sentence.texts.pop(index))
                index = sentence.joined = index + 1
            if sentence.complete():
                sentence.audio += sentence.decoder.finish()
        except B64Error as exc:
            where = (f"at chunk {index}" if not sentence.complete()
                     else f"at its end (chunk {sentence.last_index})")
            self._drop(key, out, f"sentence {_name(key)} dropped: the joined audio is not "
                                 f"base64 {where}: {exc}")

    def answer_done(self, seq: int) -> Outcome:
        """final_answer for ``seq``: the seq rule only. It is a summary that may overtake
        the last chunks, so it never cuts a sentence: those still arriving complete with
        their own last chunk, or expire (:meth:`expire`)."""
        return self.observe_seq(seq)

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
            if not sentence.audio:
                out.warnings.append(f"sentence {_name(key)} skipped: it carried no audio")
                continue
            out.ready.append(Sentence(seq=key[0], sentence_id=key[1], mp3=bytes(sentence.audio),
                                      text=sentence.text, chunks=sentence.joined))

    def _stream(self, key: Key, sentence: _Open, out: Outcome) -> None:
        final = sentence.complete()
        data = bytes(sentence.audio)
        sentence.audio.clear()                  # handed out: the player holds it now
        first = not sentence.started
        if first and not data:
            if final:
                out.warnings.append(f"sentence {_name(key)} skipped: it carried no audio")
            return
        if data or final:
            sentence.started = True
            out.pieces.append(Piece(key[0], key[1], data, sentence.text,
                                    first=first, final=final))

    def _drop(self, key: Key, out: Outcome, warning: str) -> None:
        out.warnings.append(warning)
        self.dropped_sentences += 1
        self._abandon(key, out)

    def _abandon(self, key: Key, out: Outcome) -> None:
        sentence = self._open.get(key)
        if sentence is not None and sentence.started:
            out.aborted.append(key)        # its playback began: the player must drop it
        self._kill(key)

    def _kill(self, key: Key) -> None:
        self._open.pop(key, None)
        self._closed[key] = None
        while len(self._closed) > _MAX_DEAD:
            self._closed.popitem(last=False)


def _name(key: Key) -> str:
    return f"seq {key[0]} id {key[1]!r}"
