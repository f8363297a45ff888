"""Where the appliance's start-up goes: ``-X importtime`` of a real launch against the sink,
and what the echo canceller's libraries weigh on their own."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .floor import Sink, Streamer, _env

# The CLI as ``python -m soca_appliance`` with an audit hook that notes (on stderr, with
# CLOCK_MONOTONIC, which the bench shares) when each heavy package is first imported.
_HOOKED = r"""
import sys, time
WATCH = {"pygame", "numpy", "soxr", "pywebrtc_audio", "webrtcvad", "websocket", "gpiozero",
         "http", "pyaudio", "ssl"}
seen = set()
def hook(event, args):
    if event == "import":
        root = str(args[0]).partition(".")[0]
        if root in WATCH and root not in seen:
            seen.add(root)
            sys.stderr.write("bench-import %s %.6f\n" % (root, time.monotonic()))
sys.addaudithook(hook)
from soca_appliance import cli
sys.exit(cli.main(sys.argv[1:]))
"""
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def parse_importtime(text: str) -> list[tuple[str, float, int]]:
    """(module, cumulative ms, nesting depth) of every line ``-X importtime`` printed."""
    out = []
    for m in _IMPORT_LINE.finditer(text):
        out.append((m.group(4), int(m.group(2)) / 1000.0, len(m.group(3)) // 2))
    return out


def import_profile(sink: Sink, workdir: Path, frame_ms: int) -> dict[str, Any]:
    """The appliance launched once with ``-X importtime``: the biggest imports (by
    cumulative time, outermost occurrence), and when each heavy package was first
    imported compared with stt.ready (an audit hook in the same launch)."""
    s = Streamer("appliance", sink.url, workdir, frame_ms,
                 extra_env={"PYTHONPROFILEIMPORTTIME": "1"}, launcher=("-c", _HOOKED))
    try:
        conn = sink.first_frame(s.t_launch, 60.0, s.proc)
        time.sleep(0.5)
        text = s.stderr()
    finally:
        s.stop()
        s.close()
    rows = parse_importtime(text)
    t_ready = conn.t_ready if conn.t_ready is not None else conn.arrivals[0]
    loaded = {m.group(1): round(float(m.group(2)) - s.t_launch, 3)
              for m in re.finditer(r"(?m)^bench-import (\S+) ([0-9.]+)$", text)}
    top: dict[str, float] = {}
    for name, cum_ms, _depth in rows:
        root = name.split(".")[0] if not name.startswith("soca_appliance") else name
        top[root] = max(top.get(root, 0.0), cum_ms)
    total = sum(cum for _n, cum, depth in rows if depth == 0)
    biggest = sorted(top.items(), key=lambda kv: -kv[1])[:12]
    return {"total_import_ms": round(total, 1),
            "biggest_ms": {k: round(v, 1) for k, v in biggest},
            "imported_at_s": dict(sorted(loaded.items(), key=lambda kv: kv[1])),
            "startup_ready_s": round(t_ready - s.t_launch, 3),
            "before_ready": sorted(k for k, v in loaded.items() if v < t_ready - s.t_launch),
            "note": "-X importtime slows imports; compare the shares, not the seconds"}




# What the echo canceller's libraries weigh in a bare interpreter (a canceller made, one
# frame processed): the share of the appliance's memory that AEC costs.
_AEC = r"""
import json, sys
def hwm():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM"))
before = hwm()
try:
    import numpy as np, soxr, pywebrtc_audio
    aec = pywebrtc_audio.EchoCanceller(sample_rate=16000, num_channels=1)
    z = np.zeros(320, dtype=np.int16)
    aec.process(z, z)
except Exception as exc:
    print(json.dumps({"skipped": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
print(json.dumps({"bare_python_mb": round(before / 1024, 1),
                  "with_aec_mb": round(hwm() / 1024, 1),
                  "aec_adds_mb": round((hwm() - before) / 1024, 1)}))
"""


def aec_footprint() -> dict[str, Any]:
    """Peak RSS of a bare interpreter before and after numpy, soxr and an AEC3 canceller."""
    try:
        done = subprocess.run([sys.executable, "-c", _AEC], capture_output=True, text=True,
                              timeout=60, env=_env())
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return {"skipped": f"the AEC probe failed: {exc}"}
