#!/usr/bin/env python3
"""Generate the audio bundled in ``device/soca_appliance/assets/``.

Owns the content of the assets folder: the simulator's answer sentences (MP3, 22.05 kHz
mono 32 kbps, like the real server's TTS), ``manifest.json`` (the simulator's canned turns),
the demo microphone recordings ``demo-en.wav`` / ``demo-id.wav`` (16 kHz mono PCM16, the
user's side of the canned turns), ``chime.wav`` (the appliance's "listening" cue) and the
appliance's spoken cues ``cue-NAME-LANG.mp3`` (:data:`CUES`: "cannot reach the assistant",
"ready"; same MP3 format as the sentences).

Speech comes from a real TTS, espeak-ng (run as a subprocess); MP3 is encoded in-process
with lameenc; resampling to 16 kHz uses soxr. The output depends only on the texts below
and on the versions of those tools, so re-running it gives the same files on one machine.

Usage: ``python scripts/make_assets.py [--out DIR]`` (needs ``espeak-ng`` on PATH and the
``assets`` extra: ``pip install lameenc``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

TTS_RATE = 22050          # espeak-ng's native rate, and the server's MP3 rate
MIC_RATE = 16000          # what the appliance streams up
MP3_KBPS = 32
ESPEAK_SPEED = {"en": 160, "id": 170}  # words per minute (espeak default is 175)
ESPEAK_TIMEOUT_S = 30.0
TRIM_THRESHOLD = 300      # |sample| below this counts as silence when trimming TTS output
TRIM_MARGIN_S = 0.04      # silence kept around trimmed speech

DEMO_LEAD_S = 0.5
DEMO_GAP_S = 9.0          # long enough for the three-sentence answer to play
DEMO_TAIL_S = 1.0

VOICES = {"en": "en-us", "id": "id"}

# Each language: two turns; "you" is the user's utterance (recorded into demo-LANG.wav and
# used as the simulator's canned transcript), "agent" the three sentences of the answer.
TURNS: dict[str, list[dict[str, object]]] = {
    "en": [
        {"you": "Hello, what is the weather like today?",
         "agent": ["It is sunny and warm today.",
                   "The temperature is about thirty degrees.",
                   "Remember to drink plenty of water."]},
        {"you": "Can you recommend a good book to read?",
         "agent": ["Try a short novel by a local author.",
                   "Many readers enjoy a good mystery.",
                   "Your library can suggest a few more."]},
    ],
    "id": [
        {"you": "Halo, bagaimana cuaca hari ini?",
         "agent": ["Hari ini cuacanya cerah dan hangat.",
                   "Suhunya sekitar tiga puluh derajat.",
                   "Jangan lupa minum air putih."]},
        {"you": "Tolong rekomendasikan buku yang bagus.",
         "agent": ["Coba baca novel karya penulis lokal.",
                   "Banyak pembaca suka cerita misteri.",
                   "Tanyakan juga di perpustakaan."]},
    ],
}

# The appliance's own spoken cues (soca_appliance.cues), in every language it speaks.
CUES: dict[str, dict[str, str]] = {
    "offline": {"en": "Sorry, I cannot reach the assistant right now.",
                "id": "Maaf, asisten sedang tidak dapat dihubungi."},
    "ready": {"en": "Ready.", "id": "Siap."},
}

CHIME_RATE = 22050
CHIME_S = 0.15


def espeak(text: str, lang: str, workdir: Path) -> np.ndarray:
    """Speak ``text`` with espeak-ng; int16 samples at 22.05 kHz, leading/trailing silence trimmed."""
    out = workdir / "tts.wav"
    cmd = ["espeak-ng", "-v", VOICES[lang], "-s", str(ESPEAK_SPEED[lang]), "-w", str(out), "--", text]
    subprocess.run(cmd, check=True, timeout=ESPEAK_TIMEOUT_S, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with wave.open(str(out), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, TTS_RATE):
            raise RuntimeError(f"espeak-ng wrote an unexpected format: {wav.getparams()}")
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > TRIM_THRESHOLD)
    if loud.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for {text!r}")
    margin = int(TRIM_MARGIN_S * TTS_RATE)
    start = max(0, int(loud[0]) - margin)
    end = min(pcm.size, int(loud[-1]) + margin)
    return pcm[start:end].copy()


def fade(pcm: np.ndarray, rate: int, seconds: float = 0.01) -> np.ndarray:
    """Linear fade-in/out so that cut speech starts and ends without a click."""
    n = min(int(seconds * rate), pcm.size // 2)
    out = pcm.astype(np.float64)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, endpoint=False)
        out[:n] *= ramp
        out[-n:] *= ramp[::-1]
    return np.round(out).astype("<i2")


def encode_mp3(pcm: np.ndarray) -> bytes:
    import lameenc  # the "assets" extra; only this script needs it

    enc = lameenc.Encoder()
    enc.set_bit_rate(MP3_KBPS)
    enc.set_in_sample_rate(TTS_RATE)
    enc.set_out_sample_rate(TTS_RATE)
    enc.set_channels(1)
    enc.set_quality(2)
    data = bytes(enc.encode(pcm.astype("<i2").tobytes()))
    data += bytes(enc.flush())
    return data


def resample(pcm: np.ndarray, src: int, dst: int) -> np.ndarray:
    import soxr

    out = soxr.resample(pcm.astype(np.float32) / 32768.0, src, dst, quality="HQ")
    return np.clip(np.round(out * 32768.0), -32768, 32767).astype("<i2")


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.astype("<i2").tobytes())


def chime() -> np.ndarray:
    """~150 ms two-tone chime (A5 then E6, a rising fifth) with soft attacks and decays."""
    n = int(CHIME_S * CHIME_RATE)
    t = np.arange(n) / CHIME_RATE
    out = np.zeros(n)
    for freq, start, level in ((880.0, 0.0, 0.30), (1318.51, 0.055, 0.26)):
        local = t - start
        on = local >= 0
        attack = np.clip(local / 0.006, 0.0, 1.0)
        decay = np.exp(-np.clip(local, 0.0, None) / 0.045)
        tone = np.sin(2 * np.pi * freq * np.clip(local, 0.0, None))
        tone += 0.15 * np.sin(2 * np.pi * 2 * freq * np.clip(local, 0.0, None))
        out += np.where(on, level * attack * decay * tone, 0.0)
    # final fade to exactly zero: no click at either end
    tail = int(0.02 * CHIME_RATE)
    out[-tail:] *= np.linspace(1.0, 0.0, tail)
    out[0] = 0.0
    return np.round(out * 32767).astype("<i2")


def mp3_frame_count(data: bytes) -> int:
    """Number of MPEG audio frames (for the progress line)."""
    count = 0
    i = 0
    rates = {0: 44100, 1: 48000, 2: 32000}
    v2_kbps = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160]
    while i + 4 <= len(data):
        if data[i] != 0xFF or (data[i + 1] & 0xE0) != 0xE0:
            i += 1
            continue
        version = (data[i + 1] >> 3) & 3        # 3: MPEG1, 2: MPEG2, 0: MPEG2.5
        br_idx = data[i + 2] >> 4
        sr_idx = (data[i + 2] >> 2) & 3
        pad = (data[i + 2] >> 1) & 1
        if version == 3 or br_idx in (0, 15) or sr_idx == 3:
            i += 1
            continue
        sr = rates[sr_idx] // (2 if version == 2 else 4)
        size = 72 * v2_kbps[br_idx] * 1000 // sr + pad
        count += 1
        i += size
    return count


def write_cues(out: Path, work: Path) -> int:
    """``cue-NAME-LANG.mp3`` for every cue and language; the bytes written."""
    total = 0
    for name, texts in CUES.items():
        for lang, text in texts.items():
            pcm = fade(espeak(text, lang, work), TTS_RATE)
            mp3 = encode_mp3(pcm)
            file = f"cue-{name}-{lang}.mp3"
            (out / file).write_bytes(mp3)
            total += len(mp3)
            print(f"wrote {file}: {pcm.size / TTS_RATE:.2f} s speech, {len(mp3)} bytes",
                  flush=True)
    return total


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=root / "device" / "soca_appliance" / "assets",
                        help="assets folder to write (default: %(default)s)")
    parser.add_argument("--only", choices=("all", "cues"), default="all",
                        help="write everything, or only the spoken cues (default: %(default)s)")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("make_assets: espeak-ng is not on PATH", file=sys.stderr)
        return 1
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, list[dict[str, object]]] = {}
    total = 0
    with tempfile.TemporaryDirectory(prefix="soca-assets-") as tmp:
        work = Path(tmp)
        total += write_cues(out, work)
        if args.only == "cues":
            print(f"done: {total} bytes in {out}", flush=True)
            return 0
        for lang, turns in TURNS.items():
            manifest[lang] = []
            demo_parts = [np.zeros(int(DEMO_LEAD_S * MIC_RATE), dtype="<i2")]
            marks: list[tuple[float, float]] = []
            cursor = DEMO_LEAD_S
            for t_idx, turn in enumerate(turns, start=1):
                agent: list[dict[str, str]] = []
                for s_idx, sentence in enumerate(turn["agent"], start=1):  # type: ignore[arg-type]
                    pcm = fade(espeak(str(sentence), lang, work), TTS_RATE)
                    mp3 = encode_mp3(pcm)
                    name = f"answer-{lang}-{t_idx}-{s_idx}.mp3"
                    (out / name).write_bytes(mp3)
                    total += len(mp3)
                    agent.append({"text": str(sentence), "file": name})
                    print(f"wrote {name}: {pcm.size / TTS_RATE:.2f} s speech, "
                          f"{mp3_frame_count(mp3)} MP3 frames, {len(mp3)} bytes", flush=True)
                manifest[lang].append({"you": turn["you"], "agent": agent})
                you = fade(resample(espeak(str(turn["you"]), lang, work), TTS_RATE, MIC_RATE),
                           MIC_RATE)
                demo_parts.append(you)
                marks.append((cursor, cursor + you.size / MIC_RATE))
                cursor += you.size / MIC_RATE
                gap = DEMO_GAP_S if t_idx < len(turns) else DEMO_TAIL_S
                demo_parts.append(np.zeros(int(gap * MIC_RATE), dtype="<i2"))
                cursor += gap
            demo = np.concatenate(demo_parts)
            name = f"demo-{lang}.wav"
            write_wav(out / name, demo, MIC_RATE)
            size = (out / name).stat().st_size
            total += size
            spans = ", ".join(f"{a:.2f}-{b:.2f} s" for a, b in marks)
            print(f"wrote {name}: {demo.size / MIC_RATE:.2f} s, utterances at {spans}, "
                  f"{size} bytes", flush=True)
    name = "manifest.json"
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    (out / name).write_text(text, encoding="utf-8")
    total += len(text.encode("utf-8"))
    print(f"wrote {name}: {sum(len(v) for v in manifest.values())} turns", flush=True)
    pcm = chime()
    write_wav(out / "chime.wav", pcm, CHIME_RATE)
    size = (out / "chime.wav").stat().st_size
    total += size
    print(f"wrote chime.wav: {pcm.size / CHIME_RATE * 1000:.0f} ms, {size} bytes", flush=True)
    print(f"done: {total} bytes in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
