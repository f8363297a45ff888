"""``--soak-hours N``: N hours of agent speech through the real :class:`Player`, faster
than real time, and proof that every sentence was heard.

A child process (so that its RSS is the player's alone) runs the real player on SDL's
``disk`` driver writing into a FIFO with ``SDL_DISKAUDIODELAY=1`` (about 20x real time
here; measured at start and given to the player as its ``speed``). A reader thread in the
same child takes everything SDL writes and checks, in order, that the decoded PCM of every
sentence that was allowed to finish is in it byte for byte (a known pygame complaint is
playback going silent after hours). Turns of one to four sentences, complete or fed
progressively in pieces; some turns end in a barge or a session reset (``stop_all`` as on
a reconnect, seqs starting again) while their last sentence plays. RSS, threads and open
fds are sampled; slopes are reported per hour of speech and per hour of wall time.
"""
from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .common import ASSETS, BenchError, progress
from .procfs import proc_fds, proc_status
from .soak import _slope

BYTES_PER_S = 22050 * 2          # the player's mixer: 22.05 kHz mono s16
ANCHOR = 400                     # bytes of a sentence's first sound that locate it
GIVE_UP_S = 120.0                # audio after which a sentence not found is missing
SILENCE_S = 10.0                 # silence inside a sentence after which it has ended


class Checker:
    """Finds each sentence's decoded PCM, in order, in the stream SDL writes.

    Silence inserted inside a sentence is allowed and counted (an underrun: the device
    outran the pieces arriving, then playback went on where it was); any other difference
    is a corrupt sentence. A sentence cut by a barge or a reset only has to match as far
    as it played.
    """

    def __init__(self) -> None:
        self.expected: deque[tuple[Any, bytes, int, bool]] = deque()
        self.matched = 0
        self.cut_heard = 0
        self.missing: list[Any] = []
        self.corrupt: list[Any] = []
        self.gaps = 0
        self.gap_bytes = 0
        self.bytes_seen = 0
        self._buf = bytearray()
        self._waited = 0            # bytes searched in vain for the head sentence
        self._at: Optional[tuple[int, int]] = None   # head sentence: (pcm, buf) compared to
        self._lock = threading.Lock()

    def expect(self, key: Any, pcm: bytes, onset: int, cut: bool = False) -> None:
        with self._lock:
            self.expected.append((key, pcm, onset, cut))

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self.expected)

    def feed(self, data: bytes) -> None:
        with self._lock:
            self.bytes_seen += len(data)
            self._buf += data
            while self._match_one():
                pass
            if not self.expected and len(self._buf) > ANCHOR:
                del self._buf[:len(self._buf) - ANCHOR]

    def _match_one(self) -> bool:
        if not self.expected:
            return False
        key, pcm, onset, cut = self.expected[0]
        if self._at is None:                            # where the head sentence begins
            at = self._buf.find(pcm[onset:onset + ANCHOR])
            if at < 0:
                if len(self._buf) > ANCHOR:             # keep what could be its beginning
                    self._waited += len(self._buf) - ANCHOR
                    del self._buf[:len(self._buf) - ANCHOR]
                if self._waited > GIVE_UP_S * BYTES_PER_S:
                    self._done(self.missing, key, 0)    # never heard: silence, or lost
                    return True
                return False
            self._at = (onset, at)
        i, j = self._at
        status, i, j, gaps, gap_bytes = _compare(self._buf, j, pcm, i)
        self.gaps += gaps
        self.gap_bytes += gap_bytes
        if status == "more":
            # Verified up to j: drop it, resume there (each byte is compared once).
            del self._buf[:j]
            self._at = (i, 0)
            if len(self._buf) < SILENCE_S * BYTES_PER_S:
                return False
            status = "differs"                          # silence for good: it ended here
            j = len(self._buf)
        if status == "match":
            self.matched += 1
            self._done(None, key, j)
        elif cut:
            self.cut_heard += 1                         # it played as far as it was let
            self._done(None, key, j)
        else:
            self._done(self.corrupt, key, j)
        return True

    def _done(self, bucket: Optional[list[Any]], key: Any, end: int) -> None:
        if bucket is not None:
            bucket.append(key)
        self.expected.popleft()
        self._waited = 0
        self._at = None
        del self._buf[:end]

    def finish(self) -> None:
        with self._lock:
            while self.expected:
                key, _pcm, _onset, cut = self.expected.popleft()
                if not cut:
                    self.missing.append(key)


def _compare(buf: bytearray, j: int, pcm: bytes, i: int) -> tuple[str, int, int, int, int]:
    """Compare ``pcm[i:]`` with ``buf[j:]``, skipping runs of silence in ``buf`` where they
    differ. Returns (``match`` | ``more`` | ``differs``, i, j reached, gaps, gap bytes)."""
    gaps = gap_bytes = 0
    view = memoryview(buf)
    while i < len(pcm):
        n = min(len(pcm) - i, len(buf) - j)
        if n <= 0:
            return "more", i, j, gaps, gap_bytes
        a = np.frombuffer(pcm, np.uint8, n, i)
        b = np.frombuffer(view[j:j + n], np.uint8)
        diff = np.flatnonzero(a != b)
        if not len(diff):
            i, j = i + n, j + n
            continue
        k = int(diff[0]) & ~1                           # whole samples
        i, j = i + k, j + k
        nonzero = np.flatnonzero(np.frombuffer(view[j:], np.uint8))
        if not len(nonzero):
            return "more", i, j, gaps, gap_bytes        # silence up to now: wait
        z = int(nonzero[0]) & ~1
        if z == 0:
            return "differs", i, j, gaps, gap_bytes
        gaps += 1
        gap_bytes += z
        j += z
    return "match", i, j, gaps, gap_bytes


def _reader(fifo: Path, checker: Checker) -> None:
    with open(fifo, "rb", buffering=0) as fh:
        while True:
            data = fh.read(1 << 16)
            if not data:
                return                                   # SDL closed the file
            checker.feed(data)


def child_main(hours: float, seed: int) -> int:
    """The soak itself (in the child). Prints one JSON document."""
    from ..player import Piece, Player, PlayerCallbacks, Sentence, pygame
    fifo = Path(os.environ["SDL_DISKAUDIOFILE"])
    checker = Checker()
    reader = threading.Thread(target=_reader, args=(fifo, checker), name="soak-tap",
                              daemon=True)
    reader.start()
    cond = threading.Condition()
    started: deque[Any] = deque(maxlen=16)      # bounded: the soak must not grow itself
    errors: list[str] = []

    def on_start(s: Any) -> None:
        with cond:
            started.append((s.seq, s.sentence_id))
            cond.notify_all()

    def on_idle() -> None:
        with cond:
            cond.notify_all()

    player = Player(PlayerCallbacks(on_start=on_start, on_idle=on_idle,
                                    on_error=errors.append), max_queue=8)
    player.start()
    deadline = time.monotonic() + 15
    while player.info is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if player.info is None:
        raise BenchError(f"the player's output did not open: {errors}")
    b0, t0 = checker.bytes_seen, time.monotonic()
    time.sleep(1.0)
    measured = (checker.bytes_seen - b0) / (time.monotonic() - t0) / BYTES_PER_S
    # Told a little slower than measured: the player's end-of-sentence estimate must not
    # run ahead of a device that another process's load slows down now and then.
    player.speed = speed = max(1.0, 0.7 * measured)
    mp3s = [p.read_bytes() for p in sorted(ASSETS.glob("answer-*.mp3"))]
    pcms = [pygame.mixer.Sound(file=io.BytesIO(m)).get_raw() for m in mp3s]
    onsets = [next((i for i in range(0, len(p), 2) if abs(int.from_bytes(p[i:i + 2], "little",
                                                                          signed=True)) > 64),
                   0) for p in pcms]
    rng = random.Random(seed)
    counts = dict(turns=0, sentences=0, whole=0, progressive=0, barges=0, resets=0,
                  stuck=0)
    speech_s = 0.0
    target_s = hours * 3600.0
    samples: list[dict[str, float]] = []
    stuck_at: list[dict[str, Any]] = []
    seq, sid = 1, 0
    t_start = time.monotonic()
    next_note = t_start + 30.0

    def sample() -> None:
        st = proc_status()
        samples.append({"speech_h": speech_s / 3600.0, "wall_s": time.monotonic() - t_start,
                        "rss_kb": st.get("VmRSS", 0), "threads": st.get("Threads", 0),
                        "fds": proc_fds()})

    def wait_for(predicate: Any, timeout: float) -> bool:
        end = time.monotonic() + timeout
        with cond:
            while not predicate():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                cond.wait(min(left, 0.05))
        return True

    sample()
    while speech_s < target_s:
        counts["turns"] += 1
        n = rng.randint(1, 4)
        ending = rng.choices(["whole", "barge", "reset"], [0.8, 0.15, 0.05])[0]
        last_key = None
        for k in range(n):
            sid += 1
            i = rng.randrange(len(mp3s))
            key = (seq, sid)
            cut = ending != "whole" and k == n - 1
            duration = len(pcms[i]) / BYTES_PER_S
            checker.expect(key, pcms[i], onsets[i], cut)
            if not cut:
                speech_s += duration
            last_key, last_duration = key, duration
            counts["sentences"] += 1
            if rng.random() < 0.5:
                counts["progressive"] += 1
                _feed_progressive(player, Piece, seq, sid, mp3s[i], rng, speed)
            else:
                counts["whole"] += 1
                player.enqueue(Sentence(seq, sid, mp3s[i], "soak"))
        if ending == "whole":
            ok = wait_for(lambda: not player.busy, 20.0)
        else:
            ok = wait_for(lambda: last_key in started, 20.0)
            if ok:
                cut_after = rng.uniform(0.1, 0.9) * last_duration
                time.sleep(cut_after / speed)
                speech_s += cut_after
            if ending == "barge":
                counts["barges"] += 1
                player.stop_before(seq + 1, "barge")
                seq += 1
            else:
                counts["resets"] += 1
                player.stop_all("reconnect")
                seq = 1                                  # a new session numbers afresh
                sid += 1000                              # ids stay unique in the report
        if not ok:
            counts["stuck"] += 1
            stuck_at.append({"key": list(last_key), "ending": ending,
                             "speech_h": round(speech_s / 3600, 3), "busy": player.busy})
            player.stop_all("stuck")
        seq += 1 if ending == "whole" else 0
        if samples[-1]["speech_h"] + 1 / 60 <= speech_s / 3600.0:
            sample()                                     # every minute of speech
        if time.monotonic() >= next_note:
            next_note += 30.0
            progress(f"player soak: {speech_s / 3600:.2f} h of speech, RSS "
                     f"{samples[-1]['rss_kb'] / 1024:.1f} MB, heard {checker.matched}, "
                     f"missing {len(checker.missing)}")
    wait_for(lambda: not player.busy, 30.0)
    wait_for(lambda: not checker.pending, 30.0)         # the tail reaches the tap
    sample()
    underruns, dropped = player.underruns, player.dropped
    counts["stranded"] = player.stranded
    player.close(2.0)
    reader.join(5)
    checker.finish()
    summary = _summary(hours, speed, speech_s, time.monotonic() - t_start, counts, checker,
                       samples, underruns, dropped, errors)
    summary["stuck_at"] = stuck_at[:10]
    print(json.dumps(summary))
    return 0


def _feed_progressive(player: Any, piece: Any, seq: int, sid: int, mp3: bytes,
                      rng: random.Random, speed: float) -> None:
    """The network's pace, scaled: pieces of about a quarter second of audio arriving
    twice as fast as they play."""
    size = rng.choice([500, 1000, 2000])
    parts = [mp3[i:i + size] for i in range(0, len(mp3), size)]
    for j, part in enumerate(parts):
        player.feed(piece(seq, sid, part, "soak", j == 0, False))
        time.sleep(size / 4000.0 / 2 / speed)           # 32 kbps: 4000 bytes a second
    player.feed(piece(seq, sid, b"", "soak", False, True))


def _summary(hours: float, speed: float, speech_s: float, wall_s: float,
             counts: dict[str, int], checker: Checker, samples: list[dict[str, float]],
             underruns: int, dropped: int, errors: list[str]) -> dict[str, Any]:
    warm = [s for s in samples if s["speech_h"] >= 0.05 * hours] or samples
    hx = [s["speech_h"] for s in warm]
    wx = [s["wall_s"] / 3600.0 for s in warm]
    rss = [s["rss_kb"] / 1024.0 for s in warm]
    fds = [float(s["fds"]) for s in warm]
    threads = [s["threads"] for s in samples]
    expected = checker.matched + len(checker.missing) + len(checker.corrupt)
    return {
        "speech_hours": round(speech_s / 3600.0, 3), "wall_s": round(wall_s, 1),
        "speed_x": round(speed / 0.7, 1), **counts,
        "expected_whole": expected, "heard_byte_exact": checker.matched,
        "missing": len(checker.missing), "corrupt": len(checker.corrupt),
        "missing_keys": [list(k) for k in checker.missing[:10]],
        "corrupt_keys": [list(k) for k in checker.corrupt[:10]],
        "cut_heard": checker.cut_heard, "silence_gaps": checker.gaps,
        "silence_gap_s": round(checker.gap_bytes / BYTES_PER_S, 3),
        "output_mb": round(checker.bytes_seen / 1e6, 1),
        "underruns": underruns, "player_dropped": dropped, "errors": errors[:10],
        "rss_first_mb": round(rss[0], 2), "rss_last_mb": round(rss[-1], 2),
        "rss_slope_mb_per_speech_hour": round(_slope(hx, rss), 3),
        "rss_slope_mb_per_wall_hour": round(_slope(wx, rss), 3),
        "fd_slope_per_speech_hour": round(_slope(hx, fds), 3),
        "fds_first": int(fds[0]), "fds_last": int(fds[-1]),
        "threads_min": min(threads), "threads_max": max(threads),
        "samples": len(samples),
        "series": [{"speech_h": round(s["speech_h"], 3), "rss_mb": round(s["rss_kb"] / 1024, 2),
                    "threads": s["threads"], "fds": s["fds"]} for s in samples[:: max(
                        1, len(samples) // 60)]],
    }


def run_player_soak(hours: float, seed: int = 11, timeout: Optional[float] = None
                    ) -> dict[str, Any]:
    """Run :func:`child_main` in a child process; relay its progress; return its figures."""
    with tempfile.TemporaryDirectory(prefix="soca-soak-") as tmp:
        fifo = Path(tmp) / "speaker.fifo"
        os.mkfifo(fifo)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOCA_")}
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]]
                                                       if env.get("PYTHONPATH") else []))
        env.update(SDL_AUDIODRIVER="disk", SDL_DISKAUDIOFILE=str(fifo),
                   SDL_DISKAUDIODELAY="1", PYGAME_HIDE_SUPPORT_PROMPT="1")
        cmd = [sys.executable, "-m", "soca_appliance.bench", "--player-soak-child",
               str(hours), "--seed", str(seed)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        tail: deque[str] = deque(maxlen=20)

        def relay() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if line.startswith("bench:"):
                    sys.stderr.write(line)
                    sys.stderr.flush()
                else:
                    tail.append(line.rstrip())
        relayer = threading.Thread(target=relay, name="bench-soak-relay", daemon=True)
        relayer.start()
        # stderr belongs to the relay thread alone (communicate() would read it too).
        limit = timeout or max(120.0, hours * 3600 / 5)
        killer = threading.Timer(limit, proc.kill)
        killer.start()
        try:
            assert proc.stdout is not None
            out = proc.stdout.read()
            proc.wait()
        finally:
            killer.cancel()
        if proc.returncode == -9:
            raise BenchError(f"the player soak did not finish within {limit:g} s")
        relayer.join(2)
        if proc.returncode != 0 or not out.strip():
            raise BenchError(f"the player soak failed ({proc.returncode}): "
                             + " | ".join(list(tail)[-5:]))
        return json.loads(out.strip().splitlines()[-1])


def render(k: dict[str, Any]) -> list[str]:
    return [
        f"player soak: {k['speech_hours']} h of speech in {k['wall_s']:.0f} s "
        f"(x{k['speed_x']}), {k['turns']} turns, {k['sentences']} sentences "
        f"({k['progressive']} progressive), {k['barges']} barges, {k['resets']} resets",
        f"  heard byte-exact: {k['heard_byte_exact']}/{k['expected_whole']}, missing "
        f"{k['missing']}, corrupt {k['corrupt']}, stuck {k['stuck']}, errors "
        f"{len(k['errors'])}; underruns {k['underruns']} ({k['silence_gaps']} silences "
        f"inside sentences, {k['silence_gap_s']} s in all)",
        f"  RSS {k['rss_first_mb']} -> {k['rss_last_mb']} MB, slope "
        f"{k['rss_slope_mb_per_speech_hour']} MB per speech hour "
        f"({k['rss_slope_mb_per_wall_hour']} per wall hour); fds {k['fds_first']} -> "
        f"{k['fds_last']}; threads {k['threads_min']}..{k['threads_max']}",
    ]
