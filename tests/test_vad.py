"""Speech gating (vad.py VadGate) on real synthetic speech from espeak-ng.

Speech is padded with known silences; the true onset and end are measured from the
signal's energy (audio_helpers.speech_bounds), not assumed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from audio_helpers import (RATE, concat, espeak, frames, have_espeak, silence, speech_bounds,
                           white_noise)
from soca_appliance.framing import Frame
from soca_appliance.vad import VadGate

pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not on PATH")

PHRASES = {
    "hello": ("en-us", "Hello, this is a test of the voice appliance."),
    "weather": ("en-us", "What is the weather in Jakarta today?"),
    "stop": ("en-us", "Stop."),
    "ibukota": ("id", "Apa ibu kota Indonesia?"),
}


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Each phrase as 16 kHz mono int16, generated once per module run."""
    workdir: Path = tmp_path_factory.mktemp("espeak")
    return {name: espeak(text, workdir, voice=voice, name=name)
            for name, (voice, text) in PHRASES.items()}


@dataclass
class Run:
    frame_ms: int
    started: list[int] = field(default_factory=list)     # frame indexes of onsets
    ended: list[int] = field(default_factory=list)       # frame indexes of utterance ends
    sent: list[list[int]] = field(default_factory=list)  # sent frame indexes, per utterance
    flags: list[bool] = field(default_factory=list)      # per-frame speech decisions

    def ms(self, index: int) -> int:
        return index * self.frame_ms


def run_gate(signal: np.ndarray, frame_ms: int = 20, **kwargs) -> tuple[Run, VadGate]:
    gate = VadGate(frame_ms=frame_ms, **kwargs)
    # webrtcvad adapts as it goes: a twin fed the same frames in the same order gives the
    # gate's own per-frame decisions
    twin = VadGate(frame_ms=frame_ms, aggressiveness=kwargs.get("aggressiveness", 2))
    run = Run(frame_ms)
    for i, pcm in enumerate(frames(signal, frame_ms)):
        run.flags.append(twin.is_speech(pcm))
        result = gate.process(Frame(pcm=pcm, t_capture=i * frame_ms / 1000, index=i))
        if result.started:
            run.started.append(i)
            run.sent.append([])
        if result.send:
            assert run.sent, "frames sent outside an utterance"
            run.sent[-1] += [f.index for f in result.send]
        if result.ended:
            run.ended.append(i)
    return run, gate


def padded(samples: np.ndarray, lead: float = 1.0, tail: float = 1.5) -> np.ndarray:
    return concat(silence(lead), samples, silence(tail))


# --- onset, pre-roll, hangover -------------------------------------------------------------

@pytest.mark.parametrize("frame_ms", [20, 40, 50])
@pytest.mark.parametrize("phrase", list(PHRASES))
def test_onset_found_within_100ms_of_the_true_onset(speech, phrase: str, frame_ms: int) -> None:
    signal = padded(speech[phrase])
    true_onset_ms = speech_bounds(signal)[0] * 1000 / RATE
    run, gate = run_gate(signal, frame_ms)
    assert len(run.started) == 1
    assert abs(run.ms(run.started[0]) - true_onset_ms) <= 100
    assert gate.utterances == 1


@pytest.mark.parametrize("frame_ms", [20, 40, 50])
def test_onset_rule_is_two_voiced_of_the_last_three(speech, frame_ms: int) -> None:
    run, _ = run_gate(padded(speech["weather"]), frame_ms)
    first = next(i for i in range(len(run.flags)) if sum(run.flags[max(0, i - 2):i + 1]) >= 2)
    assert run.started[0] == first


@pytest.mark.parametrize("frame_ms", [20, 40, 50])
@pytest.mark.parametrize("phrase", ["hello", "ibukota"])
def test_pre_roll_is_sent_and_no_frame_is_lost(speech, phrase: str, frame_ms: int) -> None:
    run, _ = run_gate(padded(speech[phrase]), frame_ms)
    onset = run.started[0]
    sent = run.sent[0]
    pre_roll_frames = 300 // frame_ms
    # the first frame sent is ~300 ms before the onset frame
    assert sent[0] == onset - pre_roll_frames
    assert 300 - frame_ms < run.ms(onset - sent[0]) <= 300
    # consecutive indexes from there to the end of the utterance: nothing lost, no repeats
    assert sent == list(range(sent[0], run.ended[0] + 1))


def test_pre_roll_is_shorter_when_speech_starts_early(speech) -> None:
    run, _ = run_gate(padded(speech["hello"], lead=0.1))
    assert run.started[0] < 15
    assert run.sent[0][0] == 0
    assert run.sent[0] == list(range(0, run.ended[0] + 1))


@pytest.mark.parametrize("frame_ms", [20, 40, 50])
@pytest.mark.parametrize("phrase", list(PHRASES))
def test_ended_once_after_the_hangover(speech, phrase: str, frame_ms: int) -> None:
    signal = padded(speech[phrase])
    true_end_ms = speech_bounds(signal)[1] * 1000 / RATE
    run, gate = run_gate(signal, frame_ms)
    assert len(run.ended) == 1
    hangover_frames = 600 // frame_ms
    # exactly the hangover after the last frame judged speech...
    last_speech = max(i for i in range(run.ended[0]) if run.flags[i])
    assert run.ended[0] - last_speech == hangover_frames
    # ...which is about 600 ms after the speech's energy ends
    assert 500 <= run.ms(run.ended[0]) - true_end_ms <= 800
    assert not gate.active


def test_short_pause_inside_an_utterance_does_not_end_it(speech) -> None:
    words = concat(speech["stop"], silence(0.3), speech["stop"])
    run, _ = run_gate(padded(words))
    assert len(run.started) == 1 and len(run.ended) == 1


def test_two_utterances(speech) -> None:
    signal = concat(silence(1.0), speech["hello"], silence(1.5), speech["ibukota"], silence(1.5))
    run, gate = run_gate(signal)
    assert len(run.started) == 2
    assert len(run.ended) == 2
    assert gate.utterances == 2
    assert run.started[0] < run.ended[0] < run.started[1] < run.ended[1]
    for onset, end, sent in zip(run.started, run.ended, run.sent):
        assert sent == list(range(onset - 15, end + 1))
    # the second utterance's onset is near the second phrase's energy onset
    second_start = (RATE * 1.0 + len(speech["hello"]) + RATE * 1.5) * 1000 / RATE
    offset = speech_bounds(speech["ibukota"])[0] * 1000 / RATE
    assert abs(run.ms(run.started[1]) - (second_start + offset)) <= 100


def test_utterance_cut_short_by_the_end_of_input_has_no_end(speech) -> None:
    run, gate = run_gate(concat(silence(0.5), speech["hello"]))
    assert len(run.started) == 1 and run.ended == []
    assert gate.active


def test_reset_forgets_the_pre_roll_and_the_utterance(speech) -> None:
    gate = VadGate()
    for i, p in enumerate(frames(silence(1.0))):          # fills the pre-roll with 0..49
        assert gate.process(Frame(p, 0.0, i)).send == []
    gate.reset()
    assert not gate.active
    sent: list[int] = []
    for i, p in enumerate(frames(padded(speech["hello"], lead=0.2)), start=1000):
        sent += [f.index for f in gate.process(Frame(p, 0.0, i)).send]
    assert sent and sent[0] == 1000                      # no stale frame from before the reset
    assert sent == list(range(1000, sent[-1] + 1))


def test_reset_mid_utterance_stops_sending(speech) -> None:
    gate = VadGate()
    pcm = list(frames(padded(speech["hello"])))
    for i, p in enumerate(pcm[:70]):                      # into the utterance
        gate.process(Frame(p, 0.0, i))
    assert gate.active
    gate.reset()
    assert not gate.active
    assert gate.utterances == 1


def test_digital_silence_after_a_reset_mid_utterance_starts_nothing(speech) -> None:
    gate = VadGate()
    pcm = list(frames(padded(speech["hello"])))
    for i, p in enumerate(pcm[:70]):
        gate.process(Frame(p, 0.0, i))
    gate.reset()
    results = [gate.process(Frame(p, 0.0, i))
               for i, p in enumerate(frames(silence(1.0)), start=1000)]
    assert [i for i, r in enumerate(results) if r.started] == []
    assert all(r.send == [] and not r.ended for r in results)


def test_is_speech(speech) -> None:
    gate = VadGate()
    voiced = [gate.is_speech(p) for p in frames(speech["weather"])]
    assert np.mean(voiced) > 0.7
    assert not any(VadGate().is_speech(p) for p in frames(silence(1.0)))


# --- no utterance without speech -------------------------------------------------------------

@pytest.mark.parametrize("frame_ms", [20, 40, 50])
@pytest.mark.parametrize("aggressiveness", [0, 2, 3])
def test_digital_silence_never_starts_an_utterance(frame_ms: int, aggressiveness: int) -> None:
    run, gate = run_gate(silence(10.0), frame_ms, aggressiveness=aggressiveness)
    assert run.started == [] and run.sent == [] and run.ended == []
    assert gate.utterances == 0


def test_silence_after_an_utterance_stays_quiet(speech) -> None:
    run, _ = run_gate(concat(silence(1.0), speech["stop"], silence(10.0)))
    assert len(run.started) == 1 and len(run.ended) == 1


@pytest.mark.parametrize("dbfs", [-60.0, -40.0])
def test_white_noise_never_starts_an_utterance(dbfs: float) -> None:
    for seed in range(5):
        run, gate = run_gate(white_noise(10.0, dbfs, seed=seed))
        assert run.started == [], f"seed {seed}: utterance started at frames {run.started}"
