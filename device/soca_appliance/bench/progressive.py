"""``--compare-progressive``: time to first audio with progressive playback off and on."""
from __future__ import annotations

import dataclasses
import random
import time
import wave
from pathlib import Path
from typing import Any

from .common import KEY, SEQ_BASE, summary
from .inprocess import InProcess, _answer_mp3s, _quiet_soca_logging, _sentence_messages


def has_progressive() -> bool:
    from ..config import Config
    return "progressive_playback" in {f.name for f in dataclasses.fields(Config)}


def run_progressive(workdir: Path, repeats: int, rng: random.Random) -> dict[str, Any]:
    """Time to first audio (first chunk of a sentence handled → sentence.play), off vs on.

    Sentences are injected the way the simulator sends them: its chunking, one chunk every
    ``chunk_delay``; the microphone is silence, so the simulator adds nothing of its own.
    """
    from ..simulator import Simulator, split_chunks
    silent = workdir / "silence.wav"
    with wave.open(str(silent), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(32000))
    mp3s = _answer_mp3s()
    out: dict[str, Any] = {}
    for on in (False, True):
        ttfa: list[float] = []
        with _quiet_soca_logging(), Simulator(expected_key=KEY) as sim, \
                InProcess(sim, silent, progressive_playback=on) as h:
            h.wait("connected", timeout=15)
            seq = SEQ_BASE
            for k in range(repeats):
                seq += 1
                sid = 20_000 + k
                mp3 = mp3s[k % len(mp3s)]
                mark = h.mark()
                msgs = _sentence_messages(seq, sid, mp3, "ttfa", split_chunks(mp3))
                for msg in msgs:
                    sim.inject(msg)
                    if not msg["isLastChunk"]:
                        time.sleep(sim.chunk_delay)
                t_play, _ = h.wait("sentence.play", timeout=10, since=mark, seq=seq,
                                   sentence_id=sid)
                ttfa.append(t_play - h.first_chunk[(seq, sid)])
                time.sleep(rng.uniform(0.05, 0.2))
                sim.inject({"type": "barge", "seq": seq + 1, "reason": "bench"})
                h.wait("sentence.stop", timeout=10, since=mark, seq=seq, sentence_id=sid)
                seq += 1
        out["on" if on else "off"] = summary(ttfa)
    return out
