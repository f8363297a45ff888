"""The simulator's canned conversation: ``assets/manifest.json`` and its answer MP3s.

Owns reading and checking the assets folder (turns per language, each a user text and the
agent's sentences with their MP3 files) and measuring an MP3's duration from its frame
headers. No network, no threads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

LANGS = ("id", "en")
MAX_MP3_BYTES = 1 << 20
MAX_TURNS_PER_LANG = 64
MAX_SENTENCES_PER_TURN = 32


class AssetError(RuntimeError):
    """The simulator's assets folder is missing something or is malformed."""


@dataclass(frozen=True)
class _Sentence:
    text: str
    mp3: bytes
    duration_s: float


@dataclass(frozen=True)
class _Turn:
    you: str
    sentences: tuple[_Sentence, ...]


def default_assets_dir() -> Path:
    # the package's own assets folder, next to this subpackage
    return Path(__file__).resolve().parent.parent / "assets"


def mp3_duration(data: bytes) -> float:
    """Seconds of audio in an MPEG-1/2/2.5 Layer III stream, from its frame headers."""
    kbps_v1 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
    kbps_v2 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
    rates = (44100, 48000, 32000)
    i = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        i = 10 + ((data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14
                  | (data[8] & 0x7F) << 7 | (data[9] & 0x7F))
    seconds = 0.0
    while i + 4 <= len(data):
        b1, b2 = data[i + 1], data[i + 2]
        version = (b1 >> 3) & 3              # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5, 1: reserved
        layer = (b1 >> 1) & 3                # 1: Layer III
        br_idx, sr_idx, pad = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
        if (data[i] != 0xFF or (b1 & 0xE0) != 0xE0 or version == 1 or layer != 1
                or br_idx in (0, 15) or sr_idx == 3):
            i += 1
            continue
        if version == 3:
            rate, samples, size = rates[sr_idx], 1152, 144 * kbps_v1[br_idx] * 1000
        else:
            rate = rates[sr_idx] // (2 if version == 2 else 4)
            samples, size = 576, 72 * (kbps_v2[br_idx] * 1000)
        seconds += samples / rate
        i += size // rate + pad
    return seconds


def load_assets(assets_dir: Optional[Union[str, Path]] = None) -> dict[str, tuple[_Turn, ...]]:
    """Read ``manifest.json`` and its MP3 files; raise :class:`AssetError` on any problem."""
    base = Path(assets_dir) if assets_dir is not None else default_assets_dir()
    try:
        manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AssetError(f"cannot read {base / 'manifest.json'}: {exc}") from None
    if not isinstance(manifest, dict):
        raise AssetError("manifest.json is not a JSON object")
    out: dict[str, tuple[_Turn, ...]] = {}
    for lang in LANGS:
        turns = manifest.get(lang)
        if not isinstance(turns, list) or not 0 < len(turns) <= MAX_TURNS_PER_LANG:
            raise AssetError(f"manifest.json: '{lang}' must be a list of 1..{MAX_TURNS_PER_LANG} turns")
        loaded: list[_Turn] = []
        for n, turn in enumerate(turns, start=1):
            where = f"manifest.json: {lang} turn {n}"
            if not isinstance(turn, dict) or not isinstance(turn.get("you"), str) or not turn["you"]:
                raise AssetError(f"{where}: needs a non-empty 'you' text")
            agent = turn.get("agent")
            if not isinstance(agent, list) or not 0 < len(agent) <= MAX_SENTENCES_PER_TURN:
                raise AssetError(f"{where}: 'agent' must be a list of 1..{MAX_SENTENCES_PER_TURN} sentences")
            loaded.append(_Turn(turn["you"], tuple(_sentence(base, where, item) for item in agent)))
        out[lang] = tuple(loaded)
    return out


def _sentence(base: Path, where: str, item: object) -> _Sentence:
    if (not isinstance(item, dict) or not isinstance(item.get("text"), str)
            or not isinstance(item.get("file"), str)):
        raise AssetError(f"{where}: each sentence needs 'text' and 'file' strings")
    name = item["file"]
    if Path(name).name != name or name in ("", ".", ".."):
        raise AssetError(f"{where}: file {name!r} must be a plain file name")
    path = base / name
    try:
        size = path.stat().st_size
        if size > MAX_MP3_BYTES:
            raise AssetError(f"{where}: {name} is over {MAX_MP3_BYTES} bytes")
        mp3 = path.read_bytes()
    except OSError as exc:
        raise AssetError(f"{where}: cannot read {name}: {exc.strerror}") from None
    duration = mp3_duration(mp3)
    if duration <= 0:
        raise AssetError(f"{where}: {name} is not MP3")
    return _Sentence(item["text"], mp3, duration)
