"""From capture blocks to protocol frames (framing.py): Framer, Converter, rms_dbfs."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio_helpers import (concat, from_bytes, interleave, peak_frequency, rms, sine, silence,
                           to_bytes, white_noise)
from soca_appliance.framing import Converter, Frame, Framer, rms_dbfs
from soca_appliance.protocol import frame_bytes


def convert_in_blocks(conv: Converter, pcm: bytes, block_bytes: int) -> bytes:
    out = []
    for off in range(0, len(pcm), block_bytes):
        out.append(conv.convert(pcm[off:off + block_bytes], last=off + block_bytes >= len(pcm)))
    return b"".join(out)


# --- Framer ----------------------------------------------------------------------------------

class TestFramer:
    def test_exact_frames_from_odd_blocks(self) -> None:
        data = bytes(range(256)) * 20                       # 5120 bytes = 8 frames of 640
        sizes = (1, 639, 1000, 333, 7, 1500, 1640)
        assert sum(sizes) == len(data)
        framer = Framer(640)
        out: list[bytes] = []
        pos = 0
        for size in sizes:
            got = framer.push(data[pos:pos + size])
            pos += size
            assert all(len(f) == 640 for f in got)
            out += got
            assert len(b"".join(out)) == pos - pos % 640     # the remainder is kept
        assert b"".join(out) == data
        assert len(out) == 8

    def test_small_blocks_return_nothing_until_a_frame_is_full(self) -> None:
        framer = Framer(640)
        assert framer.push(b"\x01" * 639) == []
        assert framer.push(b"") == []
        assert framer.push(b"\x02") == [b"\x01" * 639 + b"\x02"]
        assert framer.push(b"") == []

    def test_one_big_block_gives_many_frames_and_a_remainder(self) -> None:
        framer = Framer(1280)
        data = bytes(i % 251 for i in range(1280 * 3 + 100))
        got = framer.push(data)
        assert got == [data[i:i + 1280] for i in range(0, 1280 * 3, 1280)]
        assert framer.push(b"\x00" * 1180) == [data[3840:] + b"\x00" * 1180]

    def test_a_frame_sized_block_behind_a_remainder_keeps_the_order(self) -> None:
        """A block of exactly one frame is handed on as it is only when nothing waits
        before it (a bytearray block comes out as bytes)."""
        framer = Framer(640)
        assert framer.push(bytearray(b"\x01" * 640)) == [b"\x01" * 640]
        assert type(framer.push(bytearray(640))[0]) is bytes
        assert framer.push(b"\x02" * 100) == []
        assert framer.push(b"\x03" * 640) == [b"\x02" * 100 + b"\x03" * 540]
        assert framer.push(b"\x04" * 540) == [b"\x03" * 100 + b"\x04" * 540]
        assert framer.push(b"\x05" * 640) == [b"\x05" * 640]       # nothing waits now

    def test_reset_drops_the_remainder(self) -> None:
        framer = Framer(640)
        framer.push(b"\xff" * 600)
        framer.reset()
        assert framer.push(b"\x00" * 640) == [b"\x00" * 640]

    @pytest.mark.parametrize("ms", [20, 40, 50])
    def test_frame_sizes(self, ms: int) -> None:
        framer = Framer(frame_bytes(ms))
        got = framer.push(b"\x00" * 16000)                  # 0.5 s
        assert {len(f) for f in got} == {frame_bytes(ms)}
        assert len(got) == 500 // ms

    @settings(max_examples=200, deadline=None)
    @given(sizes=st.lists(st.integers(0, 3000), max_size=30),
           fb=st.sampled_from([640, 1280, 1600]))
    def test_property_frames_are_the_stream_cut_exactly(self, sizes: list[int], fb: int) -> None:
        total = sum(sizes)
        data = bytes((i * 7 + 3) % 256 for i in range(total))
        framer = Framer(fb)
        out, pos = [], 0
        for size in sizes:
            got = framer.push(data[pos:pos + size])
            pos += size
            assert all(len(f) == fb for f in got)
            out += got
        assert b"".join(out) == data[: total - total % fb]

    def test_frame_dataclass(self) -> None:
        f = Frame(pcm=b"\x00" * 640, t_capture=1.5, index=3)
        assert (f.index, f.t_capture, len(f.pcm)) == (3, 1.5, 640)


# --- Converter ------------------------------------------------------------------------------

class TestConverter:
    def test_identity_at_16k_mono(self) -> None:
        conv = Converter(16000, 1)
        assert conv.identity
        pcm = to_bytes(white_noise(0.1, -10, seed=1))
        assert conv.convert(pcm) == pcm
        assert conv.convert(pcm[:6], last=True) == pcm[:6]

    def test_stereo_16k_downmix_is_the_mean(self) -> None:
        rng = np.random.default_rng(5)
        left = rng.integers(-32768, 32768, 4000).astype(np.int16)
        right = rng.integers(-32768, 32768, 4000).astype(np.int16)
        left[:4] = [32767, -32768, 32767, 100]
        right[:4] = [32767, -32768, -32768, 101]
        conv = Converter(16000, 2)
        assert not conv.identity
        got = from_bytes(conv.convert(to_bytes(interleave(left, right))))
        want = np.rint((left.astype(np.float64) + right) / 2).astype(np.int16)
        assert np.array_equal(got, want)
        assert list(got[:3]) == [32767, -32768, 0]

    def test_stereo_with_one_silent_channel_halves_the_level(self) -> None:
        tone = sine(440, 0.2, 16000, 0.8)
        got = from_bytes(Converter(16000, 2).convert(to_bytes(interleave(tone, silence(0.2)))))
        assert np.max(np.abs(got.astype(int) - np.rint(tone / 2))) <= 1

    def test_48k_to_16k_keeps_a_1khz_tone_at_1khz(self) -> None:
        tone = sine(1000, 1.0, 48000, 0.5)
        got = from_bytes(Converter(48000, 1).convert(to_bytes(tone), last=True))
        assert len(got) == 16000
        assert peak_frequency(got[1600:-1600], 16000) == pytest.approx(1000, abs=2)
        # level preserved (passband)
        assert rms(got[1600:-1600]) == pytest.approx(rms(tone), rel=0.02)

    @pytest.mark.parametrize("rate", [48000, 44100, 32000])
    def test_tone_above_8khz_is_attenuated_at_least_40db(self, rate: int) -> None:
        tone = sine(10000, 1.0, rate, 0.9)
        got = from_bytes(Converter(rate, 1).convert(to_bytes(tone), last=True))
        inside = got[1600:-1600]
        level = rms(inside)
        assert level == 0 or 20 * math.log10(level / rms(tone)) <= -40.0

    def test_48k_stereo_to_16k(self) -> None:
        left, right = sine(1000, 0.5, 48000, 0.5), sine(1000, 0.5, 48000, 0.5)
        got = from_bytes(Converter(48000, 2).convert(to_bytes(interleave(left, right)), last=True))
        assert len(got) == 8000
        assert peak_frequency(got[800:-800], 16000) == pytest.approx(1000, abs=4)

    @pytest.mark.parametrize("rate, channels", [(48000, 1), (48000, 2), (44100, 1), (44100, 2),
                                                (32000, 1), (22050, 1)])
    def test_blockwise_equals_one_block(self, rate: int, channels: int) -> None:
        """20 ms blocks give the same audio as one block: no clicks at block edges."""
        mono = concat(sine(1000, 0.4, rate, 0.6), white_noise(0.3, -12, rate, seed=2),
                      sine(3000, 0.3, rate, 0.3, phase=1.0))
        signal = interleave(*[mono] * channels) if channels > 1 else mono
        pcm = to_bytes(signal)
        whole = from_bytes(Converter(rate, channels).convert(pcm, last=True))
        block = rate // 50 * channels * 2
        parts = from_bytes(convert_in_blocks(Converter(rate, channels), pcm, block))
        expected_len = round(len(mono) * 16000 / rate)
        assert abs(len(whole) - expected_len) <= 2
        assert abs(len(parts) - len(whole)) <= 2
        n = min(len(whole), len(parts))
        delay = 64                                          # skip the filter's start-up
        diff = np.abs(whole[delay:n].astype(int) - parts[delay:n].astype(int))
        assert diff.max() <= 2

    def test_blockwise_with_irregular_blocks(self) -> None:
        rng = np.random.default_rng(9)
        signal = concat(sine(700, 0.5, 48000, 0.7), white_noise(0.5, -15, 48000, seed=3))
        pcm = to_bytes(signal)
        whole = from_bytes(Converter(48000, 1).convert(pcm, last=True))
        conv, out, pos = Converter(48000, 1), [], 0
        while pos < len(pcm):
            size = int(rng.integers(1, 2000)) * 2
            out.append(conv.convert(pcm[pos:pos + size], last=pos + size >= len(pcm)))
            pos += size
        parts = from_bytes(b"".join(out))
        n = min(len(whole), len(parts))
        assert abs(len(whole) - len(parts)) <= 2
        assert np.abs(whole[64:n].astype(int) - parts[64:n].astype(int)).max() <= 2

    def test_the_block_test_would_see_clicks(self) -> None:
        """Sanity check of the test above: restarting the resampler per block is not equal."""
        pcm = to_bytes(sine(1000, 0.4, 48000, 0.6))
        whole = from_bytes(Converter(48000, 1).convert(pcm, last=True))
        block = 960 * 2
        fresh = from_bytes(b"".join(Converter(48000, 1).convert(pcm[o:o + block], last=True)
                                    for o in range(0, len(pcm), block)))
        n = min(len(whole), len(fresh))
        assert np.abs(whole[64:n].astype(int) - fresh[64:n].astype(int)).max() > 100

    def test_gain(self) -> None:
        x = np.array([0, 1000, -1000, 2500], dtype=np.int16)
        got = from_bytes(Converter(16000, 1, gain=2.0).convert(to_bytes(x)))
        assert list(got) == [0, 2000, -2000, 5000]

    def test_gain_clips_instead_of_wrapping(self) -> None:
        x = np.array([20000, -20000, 1000, 32767, -32768, 8192, -8193], dtype=np.int16)
        got = from_bytes(Converter(16000, 1, gain=4.0).convert(to_bytes(x)))
        assert list(got) == [32767, -32768, 4000, 32767, -32768, 32767, -32768]

    def test_gain_after_resampling_clips_overshoot(self) -> None:
        # a full-scale square wave overshoots after the anti-alias filter (Gibbs)
        square = np.where(np.arange(48000) // 24 % 2, 32767, -32768).astype(np.int16)
        for gain in (1.0, 8.0):
            got = from_bytes(Converter(48000, 1, gain=gain).convert(to_bytes(square), last=True))
            body = got[200:-200].astype(int)
            assert body.max() == 32767 and body.min() == -32768
            # no wrap-around: the sign follows the square wave (1 kHz at 16 kHz: runs of 8)
            assert np.count_nonzero(np.diff(np.sign(body)) != 0) <= 2 * (len(body) // 8 + 2)

    def test_gain_below_one(self) -> None:
        x = np.array([1000, -1001, 3], dtype=np.int16)
        got = from_bytes(Converter(16000, 1, gain=0.5).convert(to_bytes(x)))
        assert list(got) == [500, -500, 2]

    def test_output_is_pcm16le(self) -> None:
        got = Converter(16000, 2).convert(to_bytes(interleave(np.array([258], np.int16),
                                                              np.array([258], np.int16))))
        assert got == b"\x02\x01"


# --- rms_dbfs --------------------------------------------------------------------------------

def test_rms_dbfs() -> None:
    assert rms_dbfs(b"") == float("-inf")
    assert rms_dbfs(to_bytes(silence(0.02))) == float("-inf")
    square = np.where(np.arange(320) % 2, 32767, -32768).astype(np.int16)
    assert rms_dbfs(to_bytes(square)) == pytest.approx(0.0, abs=0.01)
    assert rms_dbfs(to_bytes(sine(1000, 0.1, 16000, 0.5))) == pytest.approx(-9.03, abs=0.05)
    assert rms_dbfs(to_bytes(white_noise(1.0, -30, seed=4))) == pytest.approx(-30.0, abs=0.2)
