"""Joined base64: one sentence's chunk texts are one base64 text, decoded as it grows.

Pure logic, no I/O. The vendor page's client joins a sentence's ``audioBase64`` strings in
chunkIndex order and decodes the joined text once (``chunks.join('')``, then ``atob``), so
the service may cut the text anywhere, not only at multiples of 4 characters.
:class:`B64Joiner` is fed the texts in order and hands out the bytes of the longest
complete 4-character prefix at each step, carrying the rest (at most 3 characters) to the
next text; what it hands out in total is the decoding of the joined text, however it was
cut. The decoding itself is the standard library's (``binascii.a2b_base64``, strict).

What is accepted, as ``atob`` does, and a little more:
- ASCII whitespace (space, tab, LF, FF, CR) anywhere is ignored;
- the text may end without its padding (``"QUI"`` is ``b"AB"``); one lone final
  character is not base64;
- a padded quantum (``"QQ=="``, ``"QUI="``) also in the middle: it ends that segment and
  decoding goes on after it, so chunks that were base64-encoded one by one decode to the
  concatenation of their bytes (``atob`` would refuse those).
Anything else (a character outside ``A-Z a-z 0-9 + /``, misplaced padding) is
:class:`B64Error`.
"""
from __future__ import annotations

import binascii
import re

_WHITESPACE = str.maketrans("", "", " \t\n\r\f")
_ALPHABET = re.compile(r"[A-Za-z0-9+/=]*")


class B64Error(ValueError):
    """Not base64; the text says why (never quotes the data)."""


def clean(text: str) -> str:
    """``text`` (any piece of a base64 text) without ASCII whitespace; :class:`B64Error`
    if a character is not base64 or it holds more padding than a piece can.

    In base64 each run of at most two '=' follows at least two data characters of its
    quantum, so a piece holds at most its data characters plus 2 (a run whose data is in
    the piece before): the check keeps '='-only floods out of memory, since the size cap
    counts data characters only."""
    text = text.translate(_WHITESPACE)
    match = _ALPHABET.match(text)
    if match is None or match.end() != len(text):
        bad = text[match.end() if match else 0]
        where = match.end() if match else 0
        raise B64Error(f"character {_describe(bad)} at position {where} is not base64")
    pads = text.count("=")
    if pads > len(text) - pads + 2:
        raise B64Error(f"{pads} padding characters for {len(text) - pads} of data")
    return text


def data_chars(text: str) -> int:
    """Base64 characters of a cleaned text that carry data (padding excluded)."""
    return len(text) - text.count("=")


def estimate_bytes(chars: int) -> int:
    """An upper bound of the bytes that ``chars`` data characters decode to."""
    return chars * 3 // 4


class B64Joiner:
    """Decode one base64 text fed in consecutive pieces (already :func:`clean`)."""

    __slots__ = ("_carry",)

    def __init__(self) -> None:
        self._carry = ""        # the incomplete last quantum (0 to 3 characters)

    @property
    def carried(self) -> int:
        return len(self._carry)

    def feed(self, text: str) -> bytes:
        """The bytes of every complete quantum so far; the remainder waits for more text."""
        buf = self._carry + text if self._carry else text
        out = []
        pos = 0
        while True:
            pad = buf.find("=", pos)
            if pad < 0:
                end = pos + (len(buf) - pos) // 4 * 4
                break
            quantum = pad - (pad - pos) % 4          # the quantum holding that padding
            if len(buf) < quantum + 4:
                end = quantum                        # its padding may continue in the next text
                break
            out.append(_decode(buf[pos:quantum + 4]))
            pos = quantum + 4
        out.append(_decode(buf[pos:end]))
        self._carry = buf[end:]
        return b"".join(out)

    def finish(self) -> bytes:
        """The end of the text: decode an unpadded last quantum, as ``atob`` does."""
        carry, self._carry = self._carry, ""
        if not carry:
            return b""
        if "=" in carry or len(carry) == 1:
            raise B64Error(f"the text ends in an incomplete quantum ({carry.count('=')} of "
                           f"{len(carry)} characters are padding)")
        return _decode(carry + "=" * (4 - len(carry)))


def decode_joined(texts: list[str]) -> bytes:
    """The bytes of the joined texts, decoded at once (what :class:`B64Joiner` amounts to)."""
    joiner = B64Joiner()
    data = joiner.feed(clean("".join(texts)))
    return data + joiner.finish()


def _decode(text: str) -> bytes:
    if not text:
        return b""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise B64Error(str(exc).split(":")[0].lower()) from None


def _describe(char: str) -> str:
    code = ord(char)
    return repr(char) if 32 < code < 127 else f"U+{code:04X}"
