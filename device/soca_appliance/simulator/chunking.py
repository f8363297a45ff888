"""How the simulator cuts a sentence's MP3 into ``audioBase64`` chunks. Pure functions.

``split_chunks`` cuts the MP3 bytes into 4 to 6 slices of about equal size (about 2 KB each).
"""
from __future__ import annotations


def split_chunks(data: bytes) -> list[bytes]:
    """Cut an MP3 into 4 to 6 slices of about equal size (about 2 KB each)."""
    count = chunk_count(len(data))
    bounds = [round(i * len(data) / count) for i in range(count + 1)]
    return [data[bounds[i]:bounds[i + 1]] for i in range(count)]


def chunk_count(size: int) -> int:
    """How many audio chunks a sentence of ``size`` MP3 bytes is sent in (4 to 6)."""
    count = max(4, min(6, -(-size // 2000)))
    return min(count, max(1, size))
