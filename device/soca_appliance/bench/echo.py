"""``soca-appliance bench --echo``: what the echo canceller does and costs (issue 12).

Two parts. In process, on a synthetic room (the bundled agent sentences through a
band-limited, soft-clipped, 48 ms, RT60 0.3 s room, 10 dB louder than an espeak-ng user;
a 16 kHz mixer model hands :class:`~soca_appliance.echo.EchoPath` its buffers a little
late, as SDL's audio thread does): echo return loss enhancement on the uplink, the share
of cleaned echo frames webrtcvad calls speech, CPU per 20 ms frame against the same path
without the canceller, and the RSS the binding adds (in a child). Through real audio paths
(:mod:`soca_appliance.room_scene`: PulseAudio null sinks, the room process, the simulator
deciding barges from what it receives): barges during agent speech with ``auto`` and,
as the baseline, ``full``; and the time from an interruption's first voiced sample to the
speaker going quiet, for ``--echo-barges`` interruptions at random points.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import percentile, progress

RSS_CHILD = r"""
import numpy as np
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
before = rss()
from soca_appliance.echo import Canceller
aec = Canceller()
z = np.zeros(320, dtype=np.int16)
for _ in range(100):
    aec.process(z, z)
print(rss() - before)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--echo", action="store_true",
                   help="echo cancellation instead: ERLE, false speech, CPU and RSS on a "
                        "synthetic room, then barges through PulseAudio null sinks")
    p.add_argument("--echo-minutes", type=float, default=1.0, metavar="M",
                   help="--echo: minutes of agent speech in the room (default 1)")
    p.add_argument("--echo-barges", type=int, default=10, metavar="N",
                   help="--echo: interruptions in the room (default 10; 0 skips the room)")


def echo_main(args: argparse.Namespace) -> int:
    report: dict[str, Any] = {"synthetic": synthetic()}
    if args.echo_barges > 0:
        from ..room_scene import have_room
        if have_room():
            report["room"] = room(args.echo_minutes, args.echo_barges)
        else:
            report["room"] = {"skipped": "needs pulseaudio, pacat, parec and espeak-ng"}
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return 0


def synthetic(seconds: float = 60.0) -> dict[str, Any]:
    from ..echo import Canceller, EchoPath, _webrtc_vad
    from ..echo_reference import ReferenceStream
    from ..room import BLOCK, Room, RoomSettings, level_for
    from ..room_scene import ASSETS, USER_LEVEL, USER_TEXT, decode_mp3s_16k, espeak
    progress("echo: synthetic room")
    with tempfile.TemporaryDirectory(prefix="soca-echo-") as tmp:
        user = espeak(USER_TEXT, Path(tmp)) * USER_LEVEL
    agent = decode_mp3s_16k(sorted(ASSETS.glob("answer-en-*.mp3")))
    speaker = np.tile(agent, int(np.ceil(seconds * 16000 / len(agent))))[:int(seconds * 16000)]
    settings = RoomSettings()
    settings.echo_gain = level_for(user, 10.0, agent, settings)
    results: dict[str, Any] = {}
    for name, make in (("aec", Canceller), ("none", _Passthrough)):
        room_ = Room(settings)
        path = EchoPath(make())
        path._stream = ReferenceStream(path._ring, 16000, 1)
        vad = _webrtc_vad()
        rng = np.random.default_rng(1)
        frames = [speaker[i:i + BLOCK] for i in range(0, len(speaker) - BLOCK + 1, BLOCK)]
        mic_e = out_e = 0.0
        voiced = counted = 0
        cpu: list[float] = []
        for k, frame in enumerate(frames):
            if k + 4 < len(frames):
                late = rng.uniform(0, 0.005)
                path.mixed(_i16(frames[k + 4]).tobytes(), (k + 1) * 0.02 + late)
            mic = room_.mic(frame)
            from ..framing import Frame
            t0 = time.process_time()
            out, _ = path.process(Frame(_i16(mic).tobytes(), (k + 1) * 0.02, k), False)
            cpu.append(time.process_time() - t0)
            if k * 0.02 > 10.0:                      # after the warm-up and convergence
                y = np.frombuffer(out.pcm, dtype="<i2").astype(np.float64)
                mic_e += float(np.sum(mic ** 2))
                out_e += float(np.sum(y ** 2))
                voiced += vad(out.pcm)
                counted += 1
        results[name] = {"erle_db": round(10 * np.log10(mic_e / max(out_e, 1.0)), 1),
                         "echo_frames_called_speech_pct": round(100.0 * voiced / counted, 2),
                         "cpu_ms_per_frame_median": round(1000 * float(np.median(cpu)), 3),
                         "cpu_ms_per_frame_p99": round(1000 * percentile(cpu, 99), 3)}
    results["cpu_ms_per_frame_added"] = round(results["aec"]["cpu_ms_per_frame_median"]
                                              - results["none"]["cpu_ms_per_frame_median"], 3)
    done = subprocess.run([sys.executable, "-c", RSS_CHILD], capture_output=True, text=True,
                          timeout=60)
    results["rss_added_kb"] = int(done.stdout.strip()) if done.returncode == 0 else None
    return results


class _Passthrough:
    """The same path with no canceller: the baseline for CPU and for ERLE (0 dB)."""

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        return near


def _i16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2")


def room(minutes: float, interruptions: int) -> dict[str, Any]:
    from ..room_scene import Scene
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="soca-echo-room-") as tmp:
        for duplex, seconds in (("full", 30.0), ("auto", minutes * 60.0)):
            progress(f"echo: {seconds:.0f} s of agent speech in the room, duplex {duplex}")
            work = Path(tmp) / duplex
            work.mkdir()
            with Scene(work, duplex, sentences=28) as scene:
                spoken = _agent_speaks(scene, seconds)
                barges = scene.sim.stats()["barges_sent"] if scene.sim else 0
            out[duplex] = {"agent_speech_s": round(spoken, 1), "barges": barges,
                           "barges_per_hour": round(barges * 3600.0 / max(spoken, 1.0), 1)}
        progress(f"echo: {interruptions} interruptions in the room")
        work = Path(tmp) / "barges"
        work.mkdir()
        with Scene(work, "auto", sentences=28) as scene:
            out["interruptions"] = _interruptions(scene, interruptions)
        # The same interruptions with no echo at all and nothing cancelling (full duplex):
        # what a perfect canceller would give in this rig, with this voice and the
        # service's gate, measured in the same run.
        progress(f"echo: {interruptions} interruptions in a room without echo (the floor)")
        work = Path(tmp) / "floor"
        work.mkdir()
        with Scene(work, "full", sentences=28, echo_over_user_db=-200.0) as scene:
            out["interruptions_no_echo"] = _interruptions(scene, interruptions)
    return out


def _agent_speaks(scene: Any, seconds: float) -> float:
    """Ask, and ask again whenever the agent has finished, until ``seconds`` of its
    speech went by (counted while the room hears the speaker)."""
    spoken = 0.0
    last = time.monotonic()
    scene.say(scene.greeting_raw)
    while spoken < seconds:
        time.sleep(0.2)
        now = time.monotonic()
        if scene.speaking():
            spoken += now - last
        elif scene.idle_for() > 2.0:
            scene.say(scene.greeting_raw)
        last = now
        if scene.app is not None and scene.app.poll() is not None:
            raise RuntimeError("the appliance exited")
    return spoken


def _interruptions(scene: Any, count: int) -> dict[str, Any]:
    rng = random.Random(12)
    _agent_speaks(scene, 15.0)                     # the canceller learns the room
    done = []
    for k in range(count):
        scene.wait_event(lambda e: scene.speaking(), 30, "the agent speaking")
        time.sleep(rng.uniform(0.5, 2.5))
        done.append(scene.interrupt())
        progress(f"echo: interruption {k + 1}/{count}: "
                 + (f"{done[-1].latency:.2f} s" if done[-1].latency is not None else "missed"))
        n = scene.count("sentence.play")
        scene.wait_count("sentence.play", n, 20)
    latencies = [i.latency for i in done if i.latency is not None]
    ms = sorted(round(1000 * x) for x in latencies)
    stages: dict[str, Any] = {}
    for name in (done[0].stages() if done else {}):
        xs = [v for v in (i.stages()[name] for i in done) if v is not None]
        stages[name[:-len("_s")] + "_ms"] = {
            "p50": round(1000 * percentile(xs, 50)) if xs else None,
            "min": round(1000 * min(xs)) if xs else None,
            "max": round(1000 * max(xs)) if xs else None}
    return {"count": count, "missed": count - len(latencies), "latency_ms": ms,
            "p50_ms": round(1000 * percentile(latencies, 50)) if latencies else None,
            "p90_ms": round(1000 * percentile(latencies, 90)) if latencies else None,
            "max_ms": max(ms) if ms else None, "stages": stages}


def render(report: dict[str, Any]) -> str:
    s = report["synthetic"]
    lines = ["echo cancellation (issue 12)", "",
             "synthetic room (echo 10 dB over the user, RT60 0.3 s, 48 ms):",
             f"  ERLE on the uplink             {s['aec']['erle_db']} dB "
             f"(without the canceller {s['none']['erle_db']} dB)",
             f"  cleaned echo called speech     {s['aec']['echo_frames_called_speech_pct']} % "
             f"of frames (raw echo {s['none']['echo_frames_called_speech_pct']} %)",
             f"  CPU per 20 ms frame            {s['aec']['cpu_ms_per_frame_median']} ms median, "
             f"{s['aec']['cpu_ms_per_frame_p99']} ms p99 (+{s['cpu_ms_per_frame_added']} ms "
             "over the same path without it)",
             f"  RSS added by the binding       {s['rss_added_kb']} kB"]
    r = report.get("room")
    if r and "skipped" not in r:
        lines += ["", "room (PulseAudio null sinks, the simulator decides barges):"]
        for duplex in ("full", "auto"):
            d = r[duplex]
            lines.append(f"  duplex {duplex:5s} {d['agent_speech_s']:6.0f} s of agent speech: "
                         f"{d['barges']} barges ({d['barges_per_hour']} per hour)")
        i = r["interruptions"]
        lines.append(f"  {i['count']} interruptions: {i['missed']} missed; speaker quiet after "
                     f"p50 {i['p50_ms']} ms, p90 {i['p90_ms']} ms, max {i['max_ms']} ms "
                     f"({i['latency_ms']})")
        f = r.get("interruptions_no_echo")
        if f and f["p50_ms"] and i["p50_ms"]:
            lines.append(f"  the same without any echo (a perfect canceller's floor): p50 "
                         f"{f['p50_ms']} ms, p90 {f['p90_ms']} ms, max {f['max_ms']} ms; "
                         f"ratio of the p50s {i['p50_ms'] / f['p50_ms']:.2f}x")
        names = {"up_ms": "voice -> far end's onset", "gate_ms": "onset -> its barge",
                 "gate_audio_ms": "  audio the gate took", "gate_voiced_ms": "  of it voiced",
                 "down_ms": "barge -> appliance", "out_ms": "appliance -> speaker quiet"}
        lines.append(f"    {'stage':27s} {'auto, p50 (min-max)':22s} without echo, p50")
        for key, label in names.items():
            st = i.get("stages", {}).get(key)
            base = (f or {}).get("stages", {}).get(key) or {}
            if st and st["p50"] is not None:
                lines.append(f"    {label:27s} {st['p50']:5d} ms ({st['min']}-{st['max']})"
                             .ljust(54) + (f"{base['p50']:5d} ms" if base.get("p50") is not None
                                           else ""))
    elif r:
        lines += ["", f"room: skipped ({r['skipped']})"]
    return "\n".join(lines)
