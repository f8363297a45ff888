"""The echo path's pure parts (echo_reference.py, echo_track.py): the mic clock, the
reference ring and stream, ducking, the noise floor and comfort noise, the lag tracker.
No canceller, no threads, no devices; the canceller itself is in test_echo.py."""
from __future__ import annotations

import numpy as np

from audio_helpers import sine, to_int16
from soca_appliance.echo_reference import (DUCK_GAIN, BurstGate, Ducker, MicClock, NoiseFloor,
                                           ReferenceRing, ReferenceStream, to_reference)
from soca_appliance.echo_track import LagTracker


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


def test_ring_never_writes_behind_the_mic_and_counts_what_came_late() -> None:
    ring = ReferenceRing()
    ring.read(0, 1000)
    assert ring.write(800, np.full(400, 7.0, dtype=np.float32)) == 1000
    assert ring.late == 200
    assert (ring.read(1000, 200) == 7).all()


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


def test_reference_stream_lays_buffers_end_to_end_despite_late_reports() -> None:
    ring = ReferenceRing()
    stream = ReferenceStream(ring, 22050, 1)
    rng = np.random.default_rng(2)
    tone = sine(500, 3.0, rate=22050, amplitude=0.3)
    for k in range(0, len(tone) - 512, 512):
        late = int(rng.uniform(0, 0.006) * 16000)            # the GIL, the scheduler
        stream.push(tone[k:k + 512].astype("<i2").tobytes(), 1000 + round(k * 16000 / 22050) + late)
    out = ring.read(0, 1000 + 46000).astype(np.float64)[1000:]
    ref = to_reference(tone.astype("<i2").tobytes(), 22050, 1)[:len(out)]
    # One piece end to end: the same lag all along (within the creep of a few samples),
    # no later than the first report's lateness.
    def best(a: int, b: int) -> tuple[int, float]:
        corr = {lag: np.corrcoef(out[a:b], ref[a - lag:b - lag])[0, 1] for lag in range(0, 110)}
        lag = max(corr, key=corr.get)
        return lag, corr[lag]
    (lag1, c1), (lag2, c2) = best(2000, 18000), best(30000, 46000)
    assert c1 > 0.999 and c2 > 0.999
    assert abs(lag1 - lag2) <= 12 and lag2 <= 100
    assert stream.anchors == 1


def test_reference_stream_follows_a_drifting_clock_and_a_restart() -> None:
    ring = ReferenceRing(max_segments=4096)
    stream = ReferenceStream(ring, 16000, 1)
    pos = 0.0
    for k in range(2000):                 # 40 s, the output clock 0.02 % slow (twice the issue's)
        stream.push(bytes(640), int(pos))
        pos += 320 * 1.0002
    assert abs((stream._anchor or 0) + stream._in - pos) < 30     # kept within 2 ms
    stream.push(bytes(640), int(pos) + 8000)                      # the mixer stalled 0.5 s
    for k in range(140):
        stream.push(bytes(640), int(pos) + 8000 + 320 * (k + 1))
    assert stream.anchors == 2


def test_noise_floor_is_the_rooms_not_silence_or_speech() -> None:
    rng = np.random.default_rng(4)
    floor = NoiseFloor()
    for k in range(600):
        if k < 20:
            frame = np.zeros(320)                       # a stream starting
        elif k % 50 < 20:
            frame = rng.standard_normal(320) * 3000     # someone speaking
        else:
            frame = rng.standard_normal(320) * 20.0
        floor.observe(frame.astype(np.int16))
    assert 17.0 < floor.rms < 21.0
    noise = floor.comfort(16000)
    assert abs(np.sqrt(np.mean(noise ** 2)) / floor.rms - 1) < 0.05


def test_a_source_whose_pauses_are_digital_zeros_has_a_floor_of_zero() -> None:
    """The demo's mic is a WAV file: speech, and digital silence between. Its floor is
    zero, not the quietest speech frames (the warm-up's comfort noise at that level made
    the simulator barge on the demo's first answer, 1 s into it)."""
    rng = np.random.default_rng(2)
    floor = NoiseFloor()
    for k in range(600):
        if k < 20 or k % 100 >= 40:
            frame = np.zeros(320)                       # start, and the pauses
        else:
            frame = rng.standard_normal(320) * 3000     # someone speaking
        floor.observe(frame.astype(np.int16))
    assert floor.rms == 0.0 and not floor.comfort(320).any()


def test_lag_tracker_reports_a_jump_once_and_ignores_a_voice() -> None:
    rng = np.random.default_rng(6)
    tracker = LagTracker()
    far_all = rng.standard_normal(16000 * 12) * 2000
    lag = 2400                                          # 150 ms
    changes = []
    for k in range(len(far_all) // 320):
        if k == 300:
            lag += 1120                                 # +70 ms from 6 s
        a = k * 320
        far = far_all[a:a + 320]
        near = far_all[a - lag:a - lag + 320] * 0.5 if a >= lag else np.zeros(320)
        if 150 <= k < 250:                              # someone talks over it
            near = near + rng.standard_normal(320) * 3000
        clean = near * (0.5 if 300 <= k < 330 else 0.01)    # it lost the echo at the jump
        moved = tracker.update(to_int16(near), to_int16(far), to_int16(clean))
        if moved:
            changes.append((k, moved))
    assert len(changes) == 1
    k, moved = changes[0]
    assert abs(moved - 1120) <= 32 and 300 < k <= 300 + 25      # within half a second
    assert tracker.lag == 3520


def test_ring_moves_the_unread_reference_later_replaying_what_was_read() -> None:
    ring = ReferenceRing()
    ring.write(0, np.arange(1000, dtype=np.float32))
    first = ring.read(0, 400)
    ring.move(100, first.astype(np.float32))           # later: the last 100 again first
    out = ring.read(400, 700).astype(np.int32)
    assert list(out[:100]) == list(range(300, 400))
    assert list(out[100:700]) == list(range(400, 1000))
    ring.write(2000, np.arange(500, dtype=np.float32))
    ring.read(1100, 1000)
    ring.move(-200, np.zeros(0, dtype=np.float32))     # sooner: 200 samples skipped
    assert list(ring.read(2100, 300).astype(np.int32)) == list(range(300, 500)) + [0] * 100


# --- the burst gate: residual echo's short bursts kept out of the uplink ---------------------

FLOOR = 20.0                                 # the room's floor, RMS


def _db(over: float) -> float:
    return FLOOR * 10 ** (over / 20)


def _gate(gate: BurstGate, frames: list[tuple[float, bool]], playing: bool = True) -> list[bool]:
    """(dB over the floor, voiced) per frame; which frames the gate replaced."""
    return [gate.update(_db(over), FLOOR, voiced, playing) for over, voiced in frames]


def test_burst_gate_keeps_residue_bursts_out_while_the_agent_plays() -> None:
    """The bursts recorded through the room: 1-3 frames 6-13 dB over the floor, voiced,
    then webrtcvad's hangover on frames at the floor; none of them goes up."""
    gate = BurstGate()
    quiet = [(0.0, False)] * 10
    burst = [(7.0, True), (13.0, True), (11.0, True), (0.5, True), (0.0, True)]
    gated = _gate(gate, quiet + burst + quiet + burst[:1] + quiet)
    assert gated == [False] * 10 + [True, True, True, False, False] + [False] * 10 + [True] + \
        [False] * 10
    assert gate.gated == 4


def test_burst_gate_lets_a_voice_through_after_its_first_frames() -> None:
    """A talk-over that starts soft loses its first three frames, then passes whole,
    through the dips between syllables; after half a second of quiet it is a new run."""
    gate = BurstGate()
    syllable = [(8.0, True)] * 6 + [(1.0, False)] * 4     # dips under the floor's margin
    gated = _gate(gate, syllable * 3)
    assert gated[:3] == [True] * 3 and not any(gated[3:])
    later = _gate(gate, [(0.0, False)] * 30 + [(8.0, True)] * 4)
    assert later[30:] == [True, True, True, False]


def test_burst_gate_opens_at_once_for_a_loud_voice_and_never_cuts_one_going_on() -> None:
    gate = BurstGate()
    assert _gate(gate, [(20.0, True)] * 5) == [False] * 5           # louder than any burst
    gate = BurstGate()
    _gate(gate, [(8.0, True)] * 5, playing=False)                   # the user talks first
    assert _gate(gate, [(8.0, True)] * 5) == [False] * 5            # then the agent starts


def test_burst_gate_ignores_a_steady_sound_and_never_gates_without_the_agent() -> None:
    gate = BurstGate()
    hum = [(1.0, True)] * 50                 # a fan the VAD calls voiced: it is the floor
    assert not any(_gate(gate, hum))
    assert not any(_gate(BurstGate(), [(13.0, True)] * 3, playing=False))
