"""The echo canceller: the duplex policy, WebRTC AEC3 and :class:`EchoPath` on a synthetic
room (espeak-ng speech, band-limited, soft-clipped, delayed, reverberant, 10 dB louder
than the user), replays of the room's recorded timing, the echo-path measurement and the
tap on SDL_mixer. The pure parts (clock, ring, ducking, noise floor, lag tracker) are in
test_echo_reference.py."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from audio_helpers import espeak, have_espeak, sine, to_int16
from soca_appliance import echo
from soca_appliance.echo import AEC_LATENCY, EchoPath, measure_echo_path, resolve_duplex
from soca_appliance.echo_reference import ReferenceRing, ReferenceStream, estimate_lag
from soca_appliance.framing import Frame
from soca_appliance.room import BLOCK, Room, RoomSettings, level_for

HAVE_AEC = importlib.util.find_spec("pywebrtc_audio") is not None
needs_aec = pytest.mark.skipif(not HAVE_AEC, reason="pywebrtc-audio not installed")
needs_espeak = pytest.mark.skipif(not have_espeak(), reason="espeak-ng not installed")

AGENT_TEXT = ("Good morning. The weather today is sunny with a light breeze from the west, "
              "and temperatures will reach twenty five degrees by the afternoon. Tomorrow "
              "brings rain, so remember your umbrella when you leave the house.")
USER_TEXT = "Stop please, I want to ask something else."


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


@needs_aec
def test_aec3_cancels_a_loud_room_echo_without_false_speech(speech) -> None:
    agent, user = speech
    far = np.concatenate([agent, agent])
    room = _room(agent, user)
    aec = echo.Canceller()
    vad = echo._webrtc_vad()
    mic = [room.mic(f) for f in _frames(far)]
    out = [aec.process(to_int16(m), to_int16(f)).astype(np.float64) for m, f in zip(mic, _frames(far))]
    settled = slice(len(out) // 3, None)           # after the first few seconds
    mic_e = np.mean(np.concatenate(mic[settled]) ** 2)
    out_e = np.mean(np.concatenate(out[settled]) ** 2)
    erle = 10 * np.log10(mic_e / out_e)
    false = np.mean([vad(to_int16(o).tobytes()) for o in out[settled]])
    raw_voiced = np.mean([vad(to_int16(m).tobytes()) for m in mic[settled]])
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
        out = [aec.process(to_int16(room.mic(f)), to_int16(r)).astype(np.float64)
               for f, r in zip(_frames(far), _frames(ref))]
        results[late] = 10 * np.log10(np.mean(np.concatenate(out[-200:]) ** 2))
    assert results[1600] - results[0] > 20.0


def _through_mixer(path: EchoPath, speaker: np.ndarray, room: Room, near: np.ndarray = None,
                   latency_frames: int = 4, seed: int = 0, agent_playing: bool = False
                   ) -> list[np.ndarray]:
    """Drive ``path`` as the appliance does: a 16 kHz mixer mixes 20 ms buffers
    ``latency_frames`` ahead of the speaker and reports each late by 0-5 ms (sometimes
    15: the GIL), the room hears the speaker, the mic frame comes in."""
    rng = np.random.default_rng(seed)
    path.mixer_opened(16000, 1) if path._stream is None and False else None
    frames = _frames(speaker)
    out = []
    for k in range(len(frames)):
        ahead = k + latency_frames
        if ahead < len(frames):
            late = rng.uniform(0, 0.005) + (0.015 if rng.random() < 0.05 else 0.0)
            path.mixed(to_int16(frames[ahead]).astype("<i2").tobytes(), 50.0 + (k + 1) * 0.02 + late)
        mic = room.mic(frames[k], None if near is None else near[k * BLOCK:(k + 1) * BLOCK])
        frame = Frame(to_int16(mic).astype("<i2").tobytes(), 50.0 + (k + 1) * 0.02, k)
        pcm, _volume = path.process(frame, agent_playing)
        out.append(np.frombuffer(pcm.pcm, dtype="<i2").astype(np.float64))
    return out


def _path(**kw: float) -> EchoPath:
    path = EchoPath(echo.Canceller(), **kw)
    path._stream = ReferenceStream(path._ring, 16000, 1)     # what mixer_opened sets up
    return path


@needs_aec
def test_echo_path_cancels_with_the_mixers_output_as_reference(speech) -> None:
    agent, user = speech
    room = _room(agent, user)
    path = _path()
    speaker = np.concatenate([np.zeros(16000), agent, agent])
    mic_room = _room(agent, user)          # the same room, to measure the raw echo
    raw = [mic_room.mic(f) for f in _frames(speaker)]
    out = _through_mixer(path, speaker, room)
    settled = slice(50 + 250, None)
    erle = 10 * np.log10(np.mean(np.concatenate(raw[settled]) ** 2)
                         / np.mean(np.concatenate(out[settled]) ** 2))
    assert erle > 30.0, f"ERLE {erle:.1f} dB"
    assert path.stats.frames_warmup >= 140        # first 3 s of the agent: half duplex
    # ... sent as the room's noise floor (-65 dBFS: 18.4 RMS), none of the echo
    warm = np.concatenate(out[55:50 + 140])
    assert 12.0 < np.sqrt(np.mean(warm ** 2)) < 25.0
    assert path.stats.anchors == 1                # one lag for the whole run


@needs_aec
def test_echo_path_passes_a_voice_untouched_when_no_echo_is_about(speech) -> None:
    _agent, user = speech
    path = _path()
    room = Room(RoomSettings(echo_gain=1.0, noise_dbfs=-200))
    out = np.concatenate(_through_mixer(path, np.zeros(len(user)), room, near=user))
    n = len(out) - AEC_LATENCY
    corr = np.corrcoef(out[AEC_LATENCY:], user[:n])[0, 1]
    assert corr > 0.999
    assert path.stats.frames_bypassed == path.stats.frames


@needs_aec
def test_switching_between_raw_and_cancelled_is_seamless() -> None:
    """The raw path is delayed by the canceller's latency and crossfaded: no click where
    echo starts."""
    tone = sine(300, 6.0, amplitude=0.3).astype(np.float64)
    path = _path(warmup_s=0.0)
    speaker = np.zeros(len(tone))
    speaker[100 * BLOCK:150 * BLOCK] = 1000.0 * np.sin(np.arange(50 * BLOCK) * 0.3)
    room = Room(RoomSettings(echo_gain=0.0, noise_dbfs=-200))
    y = np.concatenate(_through_mixer(path, speaker, room, near=tone))
    step = np.max(np.abs(np.diff(y[90 * BLOCK:110 * BLOCK])))
    normal = np.max(np.abs(np.diff(y[40 * BLOCK:60 * BLOCK])))
    assert step < 1.5 * normal, "a click where the canceller's output takes over"


def test_estimate_lag_is_sample_exact_on_band_limited_speech(speech) -> None:
    agent, _ = speech
    room = Room(RoomSettings(echo_gain=0.5, drr_db=0.0))
    far = np.concatenate([np.zeros(3000), agent[:16000]])
    near = np.concatenate([room.mic(f) for f in _frames(far)])
    lag, score = estimate_lag(near, far[:len(near)], 0, 8000)
    assert abs(lag - room.latency_ms * 16) <= 2 and score > 0.3


class _Passthrough:
    """A canceller that cancels nothing (pure logic tests: placement, modes, levels)."""

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        return near.copy()

    def reset(self) -> None:
        pass


DATA = Path(__file__).parent / "data" / "echo"


@pytest.mark.parametrize("buffer", [512, 2048])
def test_the_reference_never_lands_behind_the_mic_with_the_rooms_own_timing(buffer: int) -> None:
    """The mixing times and mic frame times of a real run through the room (SDL's pulse
    driver, 22.05 kHz, ``mixer_buffer`` 512 and 2048; recorded from EchoPath's inputs),
    replayed in order: no buffer lands behind the mic's read position, so the reference
    never jumps 10 ms later mid-speech. With a 30 ms lead it landed up to 31 ms late (soxr
    hands its output over in lumps, the GIL delays the tap) and jumped 2-3 times in 30 s,
    each time collapsing AEC3's cancellation from 33 to 13 dB for seconds: a false barge."""
    rec = np.load(DATA / f"echo-timing-mixer{buffer}.npz")
    path = EchoPath(_Passthrough(), is_speech=lambda pcm: False)
    path._stream = ReferenceStream(path._ring, int(rec["rate"]), int(rec["channels"]))
    lead = path._ahead
    silence = {n: bytes(2 * n) for n in set(rec["n"].tolist())}
    for k, (kind, t, n) in enumerate(zip(rec["kind"], rec["t"], rec["n"])):
        if kind == 0:
            path.mixed(silence[int(n)], 100.0 + float(t))
        else:
            path.process(Frame(bytes(2 * int(n)), 100.0 + float(t), k), True)
    assert path.stats.buffers > 300
    assert path._ring.late == 0
    assert path._ahead == lead                      # never moved


def test_the_reference_streams_first_placement_settles_in_seconds_whatever_the_buffer() -> None:
    """2048-sample buffers (93 ms): the first is reported 10 ms earlier than the rest. The
    stream settles on the rest within its first windows of 1.5 s of audio, before an
    answer could start; counted in buffers (64), a window was 6 s and the reference moved
    well into the first answer."""
    ring = ReferenceRing(max_segments=4096)
    stream = ReferenceStream(ring, 22050, 1)
    step = 2048 * 16000 / 22050
    stream.push(bytes(4096), 0)
    for k in range(1, 50):                           # 4.6 s
        stream.push(bytes(4096), int(round(k * step)) + 160)
    assert abs((stream._anchor or 0) - 160) <= 6


def test_the_warm_up_sends_the_rooms_noise_floor_not_digital_silence() -> None:
    """Until the canceller has learnt the room the uplink carries no echo, but the far
    end's VAD must not learn digital zeros: after them, the noise floor that follows reads
    as speech (measured through the room: 59 of 60 frames voiced, a false barge)."""
    rng = np.random.default_rng(5)
    path = EchoPath(_Passthrough(), is_speech=lambda pcm: False, warmup_s=3.0)
    path._stream = ReferenceStream(path._ring, 16000, 1)
    out = []
    for k in range(250):
        if k >= 100:                                     # the agent speaks from 2 s
            path.mixed((rng.standard_normal(320) * 3000).astype("<i2").tobytes(),
                       50.0 + (k + 1) * 0.02)
        mic = (rng.standard_normal(320) * 20.0).astype("<i2").tobytes()
        pcm, _ = path.process(Frame(mic, 50.0 + (k + 1) * 0.02, k), True)
        out.append(np.frombuffer(pcm.pcm, dtype="<i2").astype(np.float64))
    assert path.stats.frames_warmup >= 100
    warm = out[110:250]
    assert all(np.any(f) for f in warm)
    level = np.sqrt(np.mean(np.concatenate(warm) ** 2))
    assert 15.0 < level < 25.0


def test_a_short_burst_of_residual_echo_goes_up_as_the_rooms_floor() -> None:
    """A burst of two frames 13 dB over the floor while the agent plays (what AEC3 lets
    through at the agent's word onsets, recorded through the room) goes up as comfort noise
    at the floor; before, it went up as it was, and with a second one within half a second
    the far end heard an utterance and answered it. A voice over the agent passes."""
    rng = np.random.default_rng(8)

    def level(pcm: bytes) -> float:
        return float(np.sqrt(np.mean(np.frombuffer(pcm, dtype="<i2").astype(np.float64) ** 2)))

    path = EchoPath(_Passthrough(), is_speech=lambda pcm: level(pcm) > 40.0, warmup_s=0.0)
    path._stream = ReferenceStream(path._ring, 16000, 1)
    out = []
    for k in range(260):
        if k >= 60:                                      # the agent speaks from 1.2 s
            path.mixed((rng.standard_normal(320) * 3000).astype("<i2").tobytes(),
                       50.0 + (k + 1) * 0.02)
        gain = 90.0 if k in (150, 151) else 400.0 if 200 <= k < 230 else 20.0
        mic = np.clip(rng.standard_normal(320) * gain, -32768, 32767).astype("<i2").tobytes()
        frame, _ = path.process(Frame(mic, 50.0 + (k + 1) * 0.02, k), True)
        out.append(level(frame.pcm))
    assert all(out[k] < 30.0 for k in (150, 151)), out[148:154]      # the floor, not 90
    assert all(out[k] > 300.0 for k in range(200, 230)), out[198:232]  # the voice, whole
    assert path.stats.frames_gated == 2


class _JumpRoom:
    """A room whose speaker reaches the mic ``extra`` samples later from frame ``at`` on
    (an output latency jump, as ``room.py``'s ``delay`` command)."""

    def __init__(self, room: Room, at: int, extra: int) -> None:
        self.room, self.at, self.extra = room, at, extra
        self._k = 0
        self._line = np.zeros(0)

    def mic(self, speaker: np.ndarray, near: np.ndarray = None) -> np.ndarray:
        self._k += 1
        if self._k == self.at:
            self._line = np.zeros(self.extra)
        if self._k >= self.at:
            self._line = np.concatenate([self._line, speaker])
            speaker, self._line = self._line[:len(speaker)], self._line[len(speaker):]
        return self.room.mic(speaker, near)


@needs_aec
def test_echo_path_follows_a_70_ms_jump_of_the_echo_path_without_voiced_residue(speech) -> None:
    """Mid-speech the echo comes 70 ms later (SDL's buffer 512 -> 2048): the lag tracker
    sees it and the reference moves with it, so AEC3 keeps the lag it learnt, and the
    uplink holds comfort noise while it settles. Left to re-learn alone, AEC3's residue
    passed as speech for over a second (through the room: a false barge 1.3 s later)."""
    import webrtcvad
    agent, user = speech
    speaker = np.concatenate([agent, agent, agent])
    at = 500                                             # 10 s in
    room = _JumpRoom(_room(agent, user), at, 1120)
    path = _path()
    out = _through_mixer(path, speaker, room, agent_playing=True)
    vad = webrtcvad.Vad(2)
    after = [vad.is_speech(to_int16(o).tobytes(), 16000) for o in out[at:at + 75]]
    assert abs(path._track.stats.last_change - 1120) <= 32        # 70 ms, to 2 ms
    # The simulator barges on 30 voiced frames within 75 of an onset; without the tracker
    # 45 of these 75 were voiced, with it 14 (the half second before it sees the jump).
    assert sum(after) < 20, f"{sum(after)} of 75 frames voiced after the jump"


@needs_aec
def test_the_reference_stays_where_the_lag_tracker_moved_it(speech) -> None:
    """After the tracker moved the reference with a 70 ms jump, the reference stream's own
    clock-following must not walk it back: it saw buffers "mixed early" by the move and
    crept 6 samples a window towards its old place (the synthetic bench: a false move
    after the first placement settled, then a minute of creeping, false speech 0.4 ->
    4.8 % of frames). The lag AEC3 learnt holds."""
    agent, user = speech
    speaker = np.concatenate([agent, agent, agent, agent])
    at = 500
    room = _JumpRoom(_room(agent, user), at, 1120)
    path = _path()
    anchors: list[float] = []
    original = path._follow

    def follow(moved: int) -> None:
        original(moved)
        anchors.append(float(path._stream._anchor))
    path._follow = follow                                    # type: ignore[method-assign]
    _through_mixer(path, speaker, room, agent_playing=True)
    assert path.stats.moves == 1 and anchors, path.stats
    drift = float(path._stream._anchor) - anchors[0]
    assert abs(drift) <= 8, f"the reference walked {drift:+.0f} samples after the move"


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


def test_measure_echo_path_says_clips_even_when_clipping_hides_the_echo(speech) -> None:
    """A mic driven hard into clipping no longer records the chime's shape: the echo is
    not found, but the mic clipping is what the technician must hear about (the loud room
    of test_echo_diag read 'no echo of the chime found' in 1 run of 3 before)."""
    agent, _ = speech
    chime = agent[:16000 * 2]
    rng = np.random.default_rng(2)
    clipped = np.clip(rng.standard_normal(len(chime)) * 60000, -32768, 32767)
    report = measure_echo_path(chime, clipped)
    assert not report.ok and "clips" in report.message, report


def test_measure_echo_path_finds_a_chime_cut_by_an_output_dropout() -> None:
    """Under load the chime's playback can underrun for a buffer or two, so that what the
    mic hears is the chime in two parts 46 ms apart. GCC-PHAT's top peak then fell on a
    lag whose plain correlation was 0.02, and soca-diag said 'no echo of the chime found'
    on a quiet room (test_echo_diag, once in a clean CI run; 0.16 in a loaded rerun)."""
    from soca_appliance.diagnostics.echo_path import chime_16k
    _, chime = chime_16k()
    chime = chime * 20000 / np.max(np.abs(chime))
    room = Room(RoomSettings(echo_gain=0.3))
    lead, cut, gap = 200 * 16, 1000, 736
    played = np.concatenate([np.zeros(lead), chime[:cut], np.zeros(gap), chime[cut:],
                             np.zeros(16000)])
    rec = np.concatenate([room.mic(f) for f in _frames(played)])
    report = measure_echo_path(chime, rec)
    assert report.ok, report
    assert abs(report.delay_ms - (200 + room.latency_ms)) <= 2.0, report
    assert 5.0 < report.erl_db < 20.0, report


# --- the tap on SDL_mixer ---------------------------------------------------------------------

TAP_CHILD = r"""
import os, sys, time
os.environ["SDL_AUDIODRIVER"] = "dummy"
import numpy as np, pygame
from soca_appliance.echo import MixerTap
pygame.mixer.init(22050, -16, 1, 512)
pygame.mixer.set_num_channels(2)
tap = MixerTap()
assert tap.install()
tone = (np.sin(np.arange(22050) * 2 * np.pi * 440 / 22050) * 10000).astype("<i2")
channel = pygame.mixer.Channel(0)
channel.play(pygame.mixer.Sound(buffer=tone.tobytes()))
time.sleep(0.4)
channel.set_volume(0.25)
time.sleep(0.3)
channel.stop()
time.sleep(0.2)
tap.remove()
n = len(tap.buffers)
time.sleep(0.2)
assert len(tap.buffers) == n, "the hook is still called after remove()"
pcm = np.frombuffer(b"".join(b for _, b in tap.buffers), "<i2")
times = np.diff([t for t, _ in tap.buffers])
print(len(tap.buffers), len(tap.buffers[0][1]), int(np.abs(pcm[:4000]).max()),
      int(np.abs(pcm[-2000:]).max()), round(float(np.median(times)) * 1000, 1))
"""


def test_mixer_tap_hands_over_what_sdl_mixer_mixes_at_the_volume_it_plays() -> None:
    """Mix_SetPostMix through ctypes on the SDL_mixer pygame loaded (SDL's dummy driver,
    in a child so this process's mixer stays untouched)."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", TAP_CHILD], capture_output=True, text=True,
                          timeout=60, env={**__import__("os").environ,
                                           "PYGAME_HIDE_SUPPORT_PROMPT": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    count, size, loud, end, period_ms = map(float, done.stdout.split())
    assert count >= 30 and size == 1024                 # 512 mono samples per buffer
    assert loud == 10000 - 1 or abs(loud - 10000) <= 2  # the tone as mixed
    assert end == 0                                      # stopped: the reference is silence
    assert abs(period_ms - 23.2) < 3.0


def test_echo_path_records_its_inputs_and_outputs_only_when_asked(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """SOCA_ECHO_RECORD (the rig's diagnostic, issue 12): every frame's mic, reference,
    canceller output and uplink, with the path's decisions, for offline replays."""
    from soca_appliance.echo_record import ENV, load
    monkeypatch.delenv(ENV, raising=False)
    assert EchoPath(_Passthrough(), is_speech=lambda pcm: False)._record is None
    target = tmp_path / "echo.rec"
    monkeypatch.setenv(ENV, str(target))
    path = EchoPath(_Passthrough(), is_speech=lambda pcm: True, warmup_s=0.0)
    path._stream = ReferenceStream(path._ring, 16000, 1)
    rng = np.random.default_rng(1)
    mics = [to_int16(rng.standard_normal(BLOCK) * 300) for _ in range(60)]
    for k, mic in enumerate(mics):
        path.mixed(to_int16(np.full(BLOCK, 1000.0)).astype("<i2").tobytes(), 10.0 + k * 0.02)
        path.process(Frame(mic.astype("<i2").tobytes(), 10.0 + (k + 1) * 0.02, k), True)
    path.close()
    rec = load(target)
    assert len(rec.t) == 60 and rec.index.tolist() == list(range(60))
    assert np.array_equal(rec.near, np.stack(mics))
    assert np.array_equal(rec.clean, np.stack(mics))            # the canceller's output
    assert rec.far[-1].max() == 1000 and rec.voiced.all()
    assert {int(m) for m in rec.mode} <= {0, 1, 2} and 1 in set(rec.mode.tolist())
