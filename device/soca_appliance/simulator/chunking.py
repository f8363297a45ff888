"""How the simulator cuts a sentence's MP3 into ``audioBase64`` chunks. Pure functions.

Two ways (``Simulator(chunking=...)``, ``soca-appliance simulate --chunking``):

- ``text`` (the default), as the real service may: the whole sentence is base64-encoded
  once and that TEXT is cut into 4 to 6 pieces of random length (seeded, so a run can be
  repeated), every cut off a multiple of 4 characters. No chunk decodes on its own; the
  joined text does, as the vendor page's client decodes it (``chunks.join('')``, ``atob``).
- ``slices``: the MP3 bytes are cut into 4 to 6 slices and each slice is encoded on its
  own, so each chunk is valid base64 by itself, padded (``=``) where its size is not a
  multiple of 3. Joined, such texts carry ``=`` mid-string, which a strict decoder of the
  joined text (the browser's ``atob``) refuses.
"""
from __future__ import annotations

import base64
import random

CHUNKINGS = ("text", "slices")
_JITTER = 0.3                           # a cut moves up to 30 % of a piece's length


def chunk_count(size: int) -> int:
    """How many audio chunks a sentence of ``size`` MP3 bytes is sent in (4 to 6)."""
    count = max(4, min(6, -(-size // 2000)))
    return min(count, max(1, size))


def split_chunks(data: bytes) -> list[bytes]:
    """Cut an MP3 into 4 to 6 slices of about equal size (about 2 KB each)."""
    count = chunk_count(len(data))
    bounds = [round(i * len(data) / count) for i in range(count + 1)]
    return [data[bounds[i]:bounds[i + 1]] for i in range(count)]


def cut_text(text: str, count: int, rng: random.Random) -> list[str]:
    """Cut ``text`` into ``count`` non-empty pieces of random length, no cut at a multiple
    of 4 (when the text is long enough for that: 8 characters a piece)."""
    n = len(text)
    count = max(1, min(count, n))
    piece = n / count
    cuts: list[int] = []
    for i in range(1, count):
        pos = int(i * piece + rng.uniform(-_JITTER, _JITTER) * piece)
        if pos % 4 == 0:
            pos += rng.choice((1, 2, 3))
        low = cuts[-1] + 1 if cuts else 1
        high = n - (count - i)                 # room for the pieces still to come
        cuts.append(min(max(pos, low), high))
    bounds = [0, *cuts, n]
    return [text[bounds[i]:bounds[i + 1]] for i in range(count)]


def sentence_texts(mp3: bytes, chunking: str, rng: random.Random) -> list[str]:
    """The ``audioBase64`` texts of one sentence's audio chunks, in order."""
    if chunking == "slices":
        return [base64.b64encode(s).decode("ascii") for s in split_chunks(mp3)]
    if chunking == "text":
        return cut_text(base64.b64encode(mp3).decode("ascii"), chunk_count(len(mp3)), rng)
    raise ValueError(f"chunking must be one of {', '.join(CHUNKINGS)}, not {chunking!r}")
