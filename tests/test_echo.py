"""The echo canceller's pure parts (clock, reference ring, ducking, policy, echo-path
measurement) and WebRTC AEC3 itself on a synthetic room (espeak-ng speech, band-limited,
soft-clipped, delayed, reverberant, 10 dB louder than the user)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from audio_helpers import espeak, have_espeak, sine
from soca_appliance import echo
from soca_appliance.echo import (AEC_LATENCY, DUCK_GAIN, Ducker, EchoPath, MicClock,
                                 ReferenceRing, measure_echo_path, resolve_duplex,
                                 to_reference)
from soca_appliance.framing import Frame
from soca_appliance.room import BLOCK, Room, RoomSettings, level_for

HAVE_AEC = importlib.util.find_spec("pywebrtc_audio") is not None
needs_aec = pytest.mark.skipif(not HAVE_AEC, reason="pywebrtc-audio not installed")
needs_espeak = pytest.mark.skipif(not have_espeak(), reason="espeak-ng not installed")

AGENT_TEXT = ("Good morning. The weather today is sunny with a light breeze from the west, "
              "and temperatures will reach twenty five degrees by the afternoon. Tomorrow "
              "brings rain, so remember your umbrella when you leave the house.")
USER_TEXT = "Stop please, I want to ask something else."


# --- the clock --------------------------------------------------------------------------

def test_clock_maps_time_to_samples_despite_late_arrivals() -> None:
    rng = np.random.default_rng(0)
    clock = MicClock()
    t0 = 100.0
    for k in range(1, 500):                       # 10 s of 20 ms frames, 0-15 ms late
        clock.observe(k * 320, t0 + k * 0.02 + rng.uniform(0, 0.015))
    # Some frames arrive on time, so the estimate is within a millisecond of the truth.
    assert abs(clock.index_at(t0 + 12.0) - 12.0 * 16000) <= 16


def test_clock_follows_a_drifting_mic() -> None:
    clock = MicClock()
    rate = 16000 * 1.001                           # the mic 0.1 % fast: 10x the drift
    for k in range(1, 3000):                       # 60 s
        clock.observe(k * 320, k * 320 / rate)
    assert abs(clock.index_at(3000 * 320 / rate) - 3000 * 320) <= 16 * 2


def test_clock_before_any_frame_points_at_the_start() -> None:
    assert MicClock().index_at(123.0) == 0


# --- the reference ring -------------------------------------------------------------------

def test_ring_reads_what_was_written_where_and_silence_elsewhere() -> None:
    ring = ReferenceRing()
    ring.write(1000, np.full(500, 100.0, dtype=np.float32))
    out = ring.read(900, 700)
    assert not out[:100].any() and (out[100:600] == 100).all() and not out[600:].any()


def test_ring_mixes_overlapping_pieces_and_drops_what_is_played() -> None:
    ring = ReferenceRing()
    ring.write(0, np.full(320, 1000.0, dtype=np.float32))
    ring.write(160, np.full(320, 500.0, dtype=np.float32))      # the chime over speech
    out = ring.read(0, 640)
    assert (out[:160] == 1000).all() and (out[160:320] == 1500).all()
    assert (out[320:480] == 500).all() and not out[480:].any()
    assert ring.tail() == 0                                       # both consumed


def test_ring_puts_a_queued_piece_right_after_the_last_one() -> None:
    ring = ReferenceRing()
    ring.write(0, np.ones(1600, dtype=np.float32))
    # SDL plays a queued piece back to back; its start computed from time is off a bit.
    assert ring.write(1600 + 300, np.ones(800, dtype=np.float32), follow=True) == 1600
    assert ring.write(2400 - 200, np.ones(800, dtype=np.float32), follow=True) == 2400
    # A new sentence long after the last one is not glued to it.
    assert ring.write(20000, np.ones(10, dtype=np.float32), follow=True) == 20000


def test_ring_never_writes_behind_the_mic_and_counts_what_came_late() -> None:
    ring = ReferenceRing()
    ring.read(0, 1000)
    assert ring.write(800, np.full(400, 7.0, dtype=np.float32)) == 1000
    assert ring.late == 200
    assert (ring.read(1000, 200) == 7).all()


def test_ring_cut_silences_from_the_stop_on() -> None:
    ring = ReferenceRing()
    ring.write(0, np.full(16000, 300.0, dtype=np.float32))
    ring.write(20000, np.full(1000, 300.0, dtype=np.float32))   # a queued sentence
    ring.cut(4000)
    out = ring.read(0, 22000)
    assert (out[:4000] == 300).all() and not out[4000:].any()


def test_ring_scale_follows_the_speaker_volume() -> None:
    ring = ReferenceRing()
    ring.write(0, np.full(1000, 1000.0, dtype=np.float32))
    ring.scale_from(400, 0.25)
    out = ring.read(0, 1000)
    assert (out[:400] == 1000).all() and (out[400:] == 250).all()


def test_ring_is_bounded() -> None:
    ring = ReferenceRing(max_segments=8)
    for k in range(100):
        ring.write(k * 10, np.ones(5, dtype=np.float32))
    assert len(ring._segments) == 8


def test_reference_is_resampled_to_16k_mono_at_the_same_level() -> None:
    tone = sine(1000, 1.0, rate=22050, amplitude=0.5)
    stereo = np.repeat(tone, 2)
    ref = to_reference(stereo.astype("<i2").tobytes(), 22050, 2)
    assert abs(len(ref) - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(ref[1000:15000]))
    assert abs(np.argmax(spectrum) * 16000 / 14000 - 1000) < 5
    assert abs(np.sqrt(np.mean(ref[1000:15000] ** 2)) / np.sqrt(np.mean(tone.astype(float) ** 2))
               - 1) < 0.02


# --- ducking --------------------------------------------------------------------------------

def _feed(d: Ducker, pattern: list[bool], playing: bool = True) -> list[float]:
    return [v for v in (d.update(x, playing) for x in pattern) if v is not None]


def test_ducking_needs_five_of_ten_voiced_frames() -> None:
    d = Ducker()
    assert _feed(d, [True, False] * 4 + [False, False]) == []     # 4 of 10: stray residue
    d = Ducker()
    assert _feed(d, [True, False, True, False, True, False, True, False, True]) == [DUCK_GAIN]


def test_ducking_restores_after_one_and_a_half_seconds_without_a_barge() -> None:
    d = Ducker(frame_ms=20)
    changes = [(i, v) for i, v in enumerate(d.update(i < 40, True) for i in range(200))
               if v is not None]
    assert changes[0] == (4, DUCK_GAIN)
    assert changes[1] == (4 + 75, 1.0)
    assert len(changes) == 2            # no second duck: that talk-over was already heard


def test_ducking_ducks_again_for_a_new_talk_over_and_restores_when_the_agent_stops() -> None:
    d = Ducker()
    assert _feed(d, [True] * 120) == [DUCK_GAIN, 1.0]
    assert _feed(d, [False] * 10 + [True] * 5) == [DUCK_GAIN]     # a new one
    assert _feed(d, [True], playing=False) == [1.0]               # barged: the agent stopped
    assert _feed(d, [True] * 20, playing=False) == []             # nothing to duck


# --- policy ---------------------------------------------------------------------------------

def test_auto_is_aec_when_the_canceller_imports_and_half_otherwise() -> None:
    assert resolve_duplex("auto", lambda: (echo.Canceller, ""))[0] == "aec"
    mode, line = resolve_duplex("auto", lambda: (None, "ModuleNotFoundError: no wheel"))
    assert mode == "half" and "unavailable" in line and "no wheel" in line
    assert resolve_duplex("aec", lambda: (None, "x"))[0] == "half"      # never an echoing full
    assert resolve_duplex("half")[0] == "half" and resolve_duplex("full")[0] == "full"


@needs_aec
def test_load_canceller_finds_the_binding() -> None:
    factory, why = echo.load_canceller()
    assert factory is not None and why == ""


# --- the canceller on a synthetic room ------------------------------------------------------

@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    if not have_espeak():
        pytest.skip("espeak-ng not installed")
    work = tmp_path_factory.mktemp("speech")
    agent = espeak(AGENT_TEXT, work, rate=16000)
    user = espeak(USER_TEXT, work, rate=16000)
    return agent.astype(np.float64), user.astype(np.float64) * 0.3


def _room(agent: np.ndarray, user: np.ndarray, **kw: float) -> Room:
    settings = RoomSettings(**kw)
    settings.echo_gain = level_for(user, 10.0, agent, settings)
    return Room(settings)


def _frames(x: np.ndarray) -> list[np.ndarray]:
    n = len(x) // BLOCK * BLOCK
    return [x[i:i + BLOCK] for i in range(0, n, BLOCK)]


def _i16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


@needs_aec
def test_aec3_cancels_a_loud_room_echo_without_false_speech(speech) -> None:
    agent, user = speech
    far = np.concatenate([agent, agent])
    room = _room(agent, user)
    aec = echo.Canceller()
    vad = echo._webrtc_vad()
    mic = [room.mic(f) for f in _frames(far)]
    out = [aec.process(_i16(m), _i16(f)).astype(np.float64) for m, f in zip(mic, _frames(far))]
    settled = slice(len(out) // 3, None)           # after the first few seconds
    mic_e = np.mean(np.concatenate(mic[settled]) ** 2)
    out_e = np.mean(np.concatenate(out[settled]) ** 2)
    erle = 10 * np.log10(mic_e / out_e)
    false = np.mean([vad(_i16(o).tobytes()) for o in out[settled]])
    raw_voiced = np.mean([vad(_i16(m).tobytes()) for m in mic[settled]])
    assert raw_voiced > 0.5                        # the echo alone is "speech" uncancelled
    assert erle > 30.0, f"ERLE {erle:.1f} dB"
    assert false < 0.05, f"{false:.1%} of cleaned echo frames flagged speech"


@needs_aec
def test_aec3_fails_when_the_reference_is_late(speech) -> None:
    """Why the reference must lead: 100 ms late, nothing is cancelled (FACTS.md)."""
    agent, user = speech
    far = np.concatenate([agent, agent])
    results = {}
    for late in (0, 1600):
        room = _room(agent, user)
        aec = echo.Canceller()
        ref = np.concatenate([np.zeros(late), far])[:len(far)]
        out = [aec.process(_i16(room.mic(f)), _i16(r)).astype(np.float64)
               for f, r in zip(_frames(far), _frames(ref))]
        results[late] = 10 * np.log10(np.mean(np.concatenate(out[-200:]) ** 2))
    assert results[1600] - results[0] > 20.0


def _path_run(path: EchoPath, far: np.ndarray, mic: np.ndarray, t0: float = 50.0
              ) -> list[np.ndarray]:
    """Frames through an EchoPath the way the appliance drives it: the reference of a
    piece is written when it is queued, ``lead`` before it reaches the mic."""
    out = []
    for k, m in enumerate(_frames(mic)):
        frame = Frame(_i16(m).astype("<i2").tobytes(), t0 + (k + 1) * 0.02, k)
        pcm, _volume = path.process(frame, agent_playing=False)
        out.append(np.frombuffer(pcm.pcm, dtype="<i2").astype(np.float64))
    return out


@needs_aec
def test_echo_path_cancels_with_the_reference_placed_by_the_mic_clock(speech) -> None:
    agent, user = speech
    room = _room(agent, user)
    path = EchoPath(echo.Canceller(), learn_starts=1)
    silence = np.zeros(16000)
    # The player queues the agent's sentence at t = 51.0 s: the room hears it at once (the
    # room's own 40 ms delay makes the echo lag the reference, as a real speaker does).
    far = np.concatenate([silence, agent, agent])
    mic = np.concatenate([room.mic(f) for f in _frames(far)])
    frames = _frames(mic)
    out = []
    for k, m in enumerate(frames):
        if k == 50:         # the clock has seen 1 s of frames; queue the whole answer now
            path.reference(_i16(np.concatenate([agent, agent])).astype("<i2").tobytes(),
                           50.0 + (k + 1) * 0.02 - 0.02, 16000, 1)
        frame = Frame(_i16(m).astype("<i2").tobytes(), 50.0 + (k + 1) * 0.02, k)
        pcm, _ = path.process(frame, agent_playing=True)
        out.append(np.frombuffer(pcm.pcm, dtype="<i2").astype(np.float64))
    settled = slice(50 + 250, None)
    erle = 10 * np.log10(np.mean(np.concatenate(frames[settled]) ** 2)
                         / np.mean(np.concatenate(out[settled]) ** 2))
    assert np.concatenate(out[settled]).any()
    assert erle > 30.0, f"ERLE {erle:.1f} dB"
    assert path.stats.frames_warmup >= 140        # first 3 s of the agent: half duplex
    assert not np.concatenate(out[51:50 + 140]).any()   # after a 20 ms fade
    assert path.lag_ms is not None and 40 < path.lag_ms < 80    # the room's 48 ms + 20 ms


@needs_aec
def test_echo_path_passes_a_voice_untouched_when_no_echo_is_about(speech) -> None:
    _agent, user = speech
    path = EchoPath(echo.Canceller())
    out = np.concatenate(_path_run(path, np.zeros(len(user)), user))
    n = len(out) - AEC_LATENCY
    corr = np.corrcoef(out[AEC_LATENCY:], user[:n])[0, 1]
    assert corr > 0.999
    assert path.stats.frames_bypassed == path.stats.frames


@needs_aec
def test_switching_between_raw_and_cancelled_is_seamless() -> None:
    """The raw path is delayed by the canceller's latency: no jump where echo starts."""
    tone = sine(300, 6.0, amplitude=0.3).astype(np.float64)
    path = EchoPath(echo.Canceller(), warmup_s=0.0)
    out = []
    for k, m in enumerate(_frames(tone)):
        if k == 100:
            path.reference(_i16(np.full(16000, 1.0)).astype("<i2").tobytes(), 50.0 + k * 0.02,
                           16000, 1)
        frame = Frame(_i16(m).astype("<i2").tobytes(), 50.0 + (k + 1) * 0.02, k)
        out.append(np.frombuffer(path.process(frame, False)[0].pcm, dtype="<i2"))
    y = np.concatenate(out).astype(np.float64)
    step = np.max(np.abs(np.diff(y[90 * BLOCK:110 * BLOCK])))
    normal = np.max(np.abs(np.diff(y[40 * BLOCK:60 * BLOCK])))
    assert step < 1.5 * normal, "a click where the canceller's output takes over"


# --- fresh starts on the mixer's grid ---------------------------------------------------

def test_estimate_lag_is_sample_exact_on_band_limited_speech(speech) -> None:
    agent, _ = speech
    room = Room(RoomSettings(echo_gain=0.5, drr_db=0.0))
    far = np.concatenate([np.zeros(3000), agent[:16000]])
    near = np.concatenate([room.mic(f) for f in _frames(far)])
    lag, score = echo.estimate_lag(near, far[:len(near)], 0, 8000)
    assert abs(lag - room.latency_ms * 16) <= 2 and score > 0.3


def test_aligner_learns_the_grid_and_places_fresh_starts_on_it() -> None:
    a = echo.Aligner()
    a.set_grid(512 / 22050)                       # 371.5 mic samples
    grid = 512 * 16000 / 22050
    rng = np.random.default_rng(3)
    latency = 4000
    misses = []
    for k in range(40):
        true_start = int(np.ceil((100_000 + k * 50_000) / grid) * grid)   # on the grid
        raw = true_start - int(rng.uniform(0, grid))      # the clock: up to a buffer early
        start = a.place(raw)
        assert start >= raw - a.margin                    # never behind the clock's guess
        echo_at = true_start + latency
        h0 = start - 1000
        x, y = np.zeros(12000), np.zeros(12000)
        burst = np.random.default_rng(k).standard_normal(2000) * 3000
        y[start - h0:start - h0 + 2000] = burst
        x[echo_at - h0:echo_at - h0 + 2000] = burst
        shift = a.measure(echo._Placed(start, raw, start), h0, x, y)
        if k >= a.learn and shift:
            misses.append(shift)
    assert a.target is not None and a.settled
    assert a.phase is not None and abs(a.phase - 4000 % grid) < 4     # echo onsets mod grid
    # After learning, a fresh start lands a buffer off only when it came sooner than any
    # seen before: rarely, and never by anything but whole buffers.
    assert len(misses) <= 4
    assert all(abs(abs(m) - grid) < 4 for m in misses)


def test_ring_shift_moves_the_unread_rest_of_a_piece_only() -> None:
    ring = ReferenceRing()
    ring.write(0, np.arange(1, 1001, dtype=np.float32))
    ring.write(5000, np.full(100, 9.0, dtype=np.float32))      # another fresh start
    ring.read(0, 400)
    ring.shift(0, 50, until=5000)
    out = ring.read(400, 5100)
    assert not out[:50].any() and out[50] == 401                # the rest, 50 later
    assert (out[4600:4700] == 9).all()                          # the other piece stays


@needs_aec
def test_fresh_starts_with_mixer_jitter_raise_no_false_speech(speech) -> None:
    """Sentences start on a 23 ms mixer grid the clock cannot see: placed by the clock
    alone the canceller re-learns each jump and residual echo reads as speech; with the
    aligner the canceller always sees one lag."""
    agent, user = speech
    grid = 512 * 16000 / 22050
    pieces = [agent[i:i + 40000] for i in range(0, len(agent) - 40000, 20000)] * 3
    far = np.zeros(16000)
    starts = []
    for p in pieces:
        st = int(np.ceil((len(far) + 4800) / grid) * grid)
        far = np.concatenate([far, np.zeros(st - len(far)), p])
        starts.append(st)
    far = np.concatenate([far, np.zeros(8000)])
    rng = np.random.default_rng(11)
    queued = {st - 3200 - int(rng.uniform(0, grid)): n for n, st in enumerate(starts)}
    results = {}
    for aligned in (False, True):
        room = _room(agent, user)
        path = EchoPath(echo.Canceller(), align=aligned)
        order = sorted(queued)
        out = []
        for k, m in enumerate(_frames(far)):
            i = k * BLOCK
            while order and order[0] <= i + BLOCK:
                q = order.pop(0)
                path.reference(_i16(pieces[queued[q]]).astype("<i2").tobytes(), q / 16000,
                               16000, 1, 512 / 22050)
            frame = Frame(_i16(room.mic(m)).astype("<i2").tobytes(), (i + BLOCK) / 16000, k)
            out.append(np.frombuffer(path.process(frame, False)[0].pcm, dtype="<i2"))
        vad = echo._webrtc_vad()
        learnt = int(starts[7] / BLOCK)                          # after the learning starts
        voiced = [vad(o.tobytes()) for o in out[learnt:]]
        runs = max((len(r) for r in "".join("1" if v else "0" for v in voiced).split("0")),
                   default=0)
        results[aligned] = (float(np.mean(voiced)), runs)
    assert results[True][0] < 0.01 and results[True][1] < 5, results
    assert results[False][0] > 2 * results[True][0], results


# --- measuring the echo path ------------------------------------------------------------------

def test_measure_echo_path_finds_delay_and_return_loss(speech) -> None:
    agent, user = speech
    chime = agent[:16000 * 2]
    room = Room(RoomSettings(echo_gain=0.25, delay_ms=45.0, drr_db=6.0))
    rec = np.concatenate([room.mic(f) for f in _frames(np.concatenate([chime, np.zeros(8000)]))])
    report = measure_echo_path(chime, rec)
    assert abs(report.delay_ms - room.latency_ms) <= 2.0
    assert 8.0 < report.erl_db < 20.0 and report.ok, report


def test_measure_echo_path_warns_on_clipping_loud_echo_and_silence(speech) -> None:
    agent, _ = speech
    chime = agent[:16000 * 2]
    loud = Room(RoomSettings(echo_gain=6.0, noise_dbfs=-90))
    rec = np.clip(np.concatenate([loud.mic(f) for f in _frames(chime)]), -32768, 32767)
    report = measure_echo_path(chime, rec)
    assert not report.ok and "clips" in report.message
    quiet = np.random.default_rng(1).standard_normal(len(chime)) * 10
    report = measure_echo_path(chime, quiet)
    assert not report.ok and "no echo" in report.message
