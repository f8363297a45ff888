"""Voice barge-in through real audio paths (issue 12): the appliance plays into a
PulseAudio null sink through SDL's pulse driver, a room process adds a band-limited,
soft-clipped, delayed, reverberant echo 10 dB louder than the user plus noise, and the
appliance records the result through PyAudio's pulse device. The simulator on the other
end decides barges from what it receives, as the service does. See tests/room.py.

Only the short cases run by default; the minute-long ones are ``slow``.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import wait_for
from room import Scene, have_room
from soca_appliance.room_measure import MonitorTap, fidelity
from servers import RecordingServer

pytestmark = pytest.mark.skipif(not have_room(), reason="needs pulseaudio, pacat, espeak-ng")


def _agent_talks(scene: Scene, seconds: float) -> None:
    """The user asks, the agent answers; wait ``seconds`` of its answer."""
    scene.say(scene.greeting_raw)
    scene.wait_count("sentence.play", 0, 20)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if scene.app is not None and scene.app.poll() is not None:
            raise AssertionError("the appliance exited")
        time.sleep(0.2)


def test_auto_says_which_echo_policy_is_in_force(tmp_path: Path) -> None:
    with Scene(tmp_path, "auto", sentences=2) as scene:
        lines = [line for line in scene.log_lines() if line.startswith("duplex ")]
    assert lines == ["duplex auto: echo cancellation on (pywebrtc-audio (WebRTC AEC3)); "
                     "voice barge-in enabled"]


def test_full_duplex_without_a_canceller_barges_on_its_own_voice(tmp_path: Path) -> None:
    """The baseline: today's ``full`` hears the agent in the room and the simulator barges."""
    with Scene(tmp_path, "full", sentences=12) as scene:
        _agent_talks(scene, 8.0)
        barges = scene.sim.stats()["barges_sent"] if scene.sim else 0
    assert barges >= 1


def test_an_interruption_is_timed_stage_by_stage_on_one_clock(tmp_path: Path) -> None:
    """The room, the simulator and the appliance's events each time a barge on
    time.monotonic(); their stages must add up to the latency the room measures on its own
    sample clock, or one of the clocks is wrong. No echo and nothing cancelling here (a
    perfect canceller), so this is also the rig's floor: measured 0.89-0.99 s, of which the
    simulator's gate 0.60-0.66 s of audio."""
    with Scene(tmp_path, "full", sentences=12, echo_over_user_db=-200.0) as scene:
        _agent_talks(scene, 2.0)
        scene.wait_event(lambda e: scene.speaking(), 10, "the agent speaking")
        it = scene.interrupt()
    assert it.latency is not None, "no barge"
    stages = it.stages()
    assert None not in stages.values(), stages
    total = it.up_s + it.gate_s + it.down_s + it.out_s            # type: ignore[operator]
    assert abs(total - it.latency) <= 0.06, (total, it)
    assert 0.0 < it.up_s < 0.5 and 0.0 <= it.down_s < 0.1 and 0.0 < it.out_s < 0.3, it
    assert it.gate_voiced_s >= 0.6 and it.gate_audio_s >= it.gate_voiced_s, it
    assert it.latency < 1.5, it


@pytest.mark.parametrize("duplex", ["auto", pytest.param("full", marks=pytest.mark.slow)])
def test_voice_goes_up_untouched_while_the_agent_is_silent(tmp_path: Path, duplex: str) -> None:
    """The uplink against what the room really played into the mic sink (its monitor,
    recorded alongside) and against the clean voice, each 250 ms window aligned to the
    sample. The 0.95 / 1 dB target holds against the mic sink: that is what the appliance
    was given (measured: 1.0000 and 0.00 dB, the uplink is bit-exact with auto as with full).
    Against the clean voice the rig's own stream into the mic sink now and then inserts or
    drops a few ms under load (measured 0.59-0.998 across runs with the same bit-exact
    uplink: 0.587 once in a clean CI run, 1.0000 against the mic sink), so that figure is
    printed and only checked for the utterance being there (noise alone reads about 0).
    (The first version read 0.61-0.86: its windows were aligned in steps of two samples,
    and a window the uplink had not reached yet counted as correlation -1.)"""
    with RecordingServer() as server, Scene(tmp_path, duplex, far_end=server) as scene:
        tap = MonitorTap(scene.rig, "mic")
        try:
            wait_for(lambda: len(server.frames()) >= 25, 10, "the uplink streaming")
            first = len(server.frames())
            scene.say()
            voice = scene.user_voice
            # The whole utterance in the uplink: its length plus 1 s of path, in frames.
            frames = first + int((len(voice) / 16000 + 1.0) * 50)
            wait_for(lambda: len(server.frames()) >= frames, 20, "the utterance uplinked")
        finally:
            heard = tap.close()
        up = np.frombuffer(b"".join(pcm for _, pcm in server.frames()[first:]), dtype="<i2")
    up = up.astype(np.float64)
    start = int(np.argmax(np.abs(voice) > 0))
    corr, loss = fidelity(up, voice[start:])
    corr_mic, loss_mic = fidelity(up, _utterance_in(heard, voice[start:]))
    print(f"duplex {duplex}: vs clean voice corr {corr:.4f} loss {loss:.2f} dB; "
          f"vs the mic sink corr {corr_mic:.4f} loss {loss_mic:.2f} dB")
    assert corr_mic >= 0.95 and abs(loss_mic) <= 1.0, (corr_mic, loss_mic)
    assert corr >= 0.3 and abs(loss) <= 1.0, f"the utterance: corr {corr:.3f}, {loss:.2f} dB"


def _utterance_in(heard: np.ndarray, voice: np.ndarray) -> np.ndarray:
    """The stretch of the mic sink's recording that carries ``voice`` (by cross-correlation)."""
    size = 1 << int(np.ceil(np.log2(len(heard) + len(voice))))
    full = np.fft.irfft(np.fft.rfft(heard, size) * np.conj(np.fft.rfft(voice, size)), size)
    lag = int(np.argmax(full[:max(1, len(heard) - len(voice) + 1)]))
    return heard[lag:lag + len(voice)]


@pytest.mark.slow
def test_a_minute_of_loud_echo_never_barges(tmp_path: Path) -> None:
    with Scene(tmp_path, "auto", sentences=28) as scene:
        _agent_talks(scene, 60.0)
        stats = scene.sim.stats() if scene.sim else {}
        played = scene.count("sentence.play")
    assert played >= 20
    assert stats["barges_sent"] == 0


@pytest.mark.slow
@pytest.mark.xfail(reason="measured (6 runs of 10, idle machine): p50 1.10-1.33 s, "
                   "max 1.39-2.15 s, 60 of 60 barged. Per stage, on one clock (Scene.interrupt): "
                   "voice -> the far end's onset p50 0.25 s (the rig's 0.12 s into the mic, "
                   "then the unvoiced 'St'), the gate's 0.6 s of voiced frames p50 0.92 s of "
                   "audio, barge -> appliance 1 ms, -> speaker quiet 0.07 s. The same rig with "
                   "no echo at all (a perfect canceller) gives p50 0.95 s, max 0.99 s, the gate "
                   "0.64 s of audio: 1.0 s leaves nothing for the canceller, and AEC3 takes "
                   "6-10 frames of the voice after its first word while the echo is still loud "
                   "(a duck reaches the mic 0.27 s after the mixer applies it: the rig's echo "
                   "path). "
                   "BENCHMARKS.md, issue 12 round 5", strict=False)
def test_ten_interruptions_barge_and_stop_the_agent_within_a_second(tmp_path: Path) -> None:
    rng = random.Random(12)
    done = []
    with Scene(tmp_path, "auto", sentences=28) as scene:
        _agent_talks(scene, 15.0)          # the canceller learns the room
        for _ in range(10):
            scene.wait_event(lambda e: scene.speaking(), 30, "the agent speaking")
            time.sleep(rng.uniform(0.5, 2.5))
            it = scene.interrupt()
            assert it.latency is not None, f"no barge after an interruption at {it.said:.2f} s"
            done.append(it)
            n = scene.count("sentence.play")
            scene.wait_count("sentence.play", n, 20)      # the next answer
    for it in done:
        print(f"barge {it.latency:.3f} s:", {k: None if v is None else round(v, 3)
                                              for k, v in it.stages().items()})
    # Every stage was timed: the far end barged on this voice, the appliance heard it.
    assert all(it.up_s is not None and it.out_s is not None for it in done), done
    assert max(it.latency for it in done if it.latency is not None) <= 1.0, done


# --- drift and latency (issue 12): the echo path moves under the canceller; no false barge --------

def _barges(scene: Scene) -> int:
    """Barges the simulator decided on from what it heard (it answers a client's barge,
    the button's, with one of its own: those are not counted)."""
    if scene.sim is None:
        return -1
    stats = scene.sim.stats()
    return int(stats["barges_sent"]) - int(stats.get("barges_received", 0))


@pytest.mark.slow
def test_clocks_differing_by_a_hundredth_of_a_percent_never_barge(tmp_path: Path) -> None:
    """The mic's clock 0.01 % faster than the speaker's (the room resamples by 1.0001):
    over 40 s the echo slides 4 ms against the reference."""
    with Scene(tmp_path, "auto", sentences=28, drift=1e-4) as scene:
        _agent_talks(scene, 40.0)
        assert scene.count("sentence.play") >= 15
        assert _barges(scene) == 0


@pytest.mark.slow
def test_a_2048_sample_mixer_buffer_never_barges(tmp_path: Path) -> None:
    """SDL's buffer 2048 instead of 512: 93 ms of output latency instead of 23. (It failed
    2 of 2 runs, a false barge 4-9 s into the answer, for two reasons, measured from a
    recording of EchoPath's inputs: reference buffers landing behind the mic moved the
    reference 10 ms later mid-speech, twice, and AEC3 fell from 33 to 13 dB for seconds;
    and the warm-up's digital zeros taught the simulator's VAD a floor the room's noise
    then exceeded. Fixed by an 80 ms lead and comfort noise, tests/test_echo.py.)"""
    with Scene(tmp_path, "auto", sentences=28, mixer_buffer=2048) as scene:
        _agent_talks(scene, 30.0)
        assert scene.count("sentence.play") >= 10
        assert _barges(scene) == 0


@pytest.mark.slow
def test_an_output_latency_jump_mid_speech_never_barges(tmp_path: Path) -> None:
    """While the agent speaks, the speaker's sound reaches the mic 70 ms later from one
    block to the next (what SDL's buffer going 512 -> 2048 does to the echo path, at
    22.05 kHz): AEC3 must re-find the delay without passing echo as speech. Alone it took
    over a second (a false barge ~1.3 s after the jump, 2 of 2 runs); the lag tracker
    (echo_track.py) sees the jump within about 0.4 s and moves the reference with it."""
    with Scene(tmp_path, "auto", sentences=28) as scene:
        _agent_talks(scene, 10.0)
        assert scene.room is not None
        scene.room.delay_more(70.0)
        deadline = time.monotonic() + 20.0
        wait_for(lambda: time.monotonic() > deadline or _barges(scene) > 0, 25,
                 "20 s of speech after the jump")
        assert scene.speaking() or scene.count("sentence.play") >= 8
        assert _barges(scene) == 0
        moved = [line for line in scene.log_lines() if line.startswith("echo path +")]
    assert moved and 60.0 <= float(moved[0].split()[2]) <= 80.0, moved     # followed


@pytest.mark.slow
@pytest.mark.xfail(reason="measured this round (issue 12 round 5, idle machine): the scene "
                   "repeated 10 times gave 0 false barges but 4 'answered' phantom utterances "
                   "in 3 of the runs (and 10 too short to answer); this test passed 1 of its 2 "
                   "runs. A phantom answer is what fails it: the test's user then asks over "
                   "it, a real barge on the user's voice. The phantoms are AEC3's residue, "
                   "5-10 frames up to 22 dB over the floor, where its linear filter loses the "
                   "echo for a moment: the burst gate (3 frames) cut them from 14 in 15 runs "
                   "to 4 in 10; a longer hold costs the barge latency. Needs a canceller that "
                   "exposes its linear output or suppressor gain (BENCHMARKS.md)", strict=False)
def test_the_reference_stopping_and_starting_at_barges_never_barges(tmp_path: Path) -> None:
    """Three button barges mid-sentence (the reference stops at once, the room's echo tail
    rings on), each followed by the user's next question and a fresh answer (the reference
    starts again): the simulator never barges on its own."""
    import subprocess
    import sys
    rng = random.Random(5)
    with Scene(tmp_path, "auto", sentences=28) as scene:
        _agent_talks(scene, 6.0)
        for _ in range(3):
            scene.wait_event(lambda e: scene.speaking(), 30, "the agent speaking")
            time.sleep(rng.uniform(0.3, 1.5))
            done = subprocess.run([sys.executable, "-m", "soca_appliance", "ctl", "barge",
                                   "--control-socket", str(tmp_path / "ctl.sock")],
                                  capture_output=True, text=True, timeout=20)
            assert done.returncode == 0, done.stderr
            t = scene.room.t if scene.room else 0.0
            assert scene.stopped_after(t - 1.0, timeout=5.0) is not None, \
                f"no stop: {done.stdout} {scene.events_of('barge')} {scene.room.quiet_at[-3:]} {scene.room.loud_at[-3:]} {scene.room.t}"
            n = scene.count("sentence.play")
            scene.say(scene.greeting_raw)
            scene.wait_count("sentence.play", n, 20)                # the next answer
            deadline = time.monotonic() + 4.0
            wait_for(lambda: time.monotonic() > deadline or _barges(scene) > 0, 10,
                     "4 s of the new answer")
        assert _barges(scene) == 0
