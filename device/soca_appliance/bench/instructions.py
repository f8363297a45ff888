"""Machine-independent cost: guest instructions per streamed frame, counted by valgrind's
callgrind inside a window (``callgrind_control --zero`` at its start, ``--dump`` at its
end), so that start-up is not counted. User-space instructions only: the kernel's share
(the loopback TCP stack, the scheduler) is not seen by valgrind."""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from .common import progress
from .floor import Sink, Streamer

def count_instructions(kind: str, sink: Sink, workdir: Path, frame_ms: int,
                       seconds: float = 10.0) -> dict[str, Any]:
    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if not valgrind or not control:
        return {"skipped": "valgrind (callgrind) not installed"}
    out_file = workdir / f"callgrind.{kind}.%p"
    progress(f"floor: {kind} under callgrind (slow: start-up takes about a minute)")
    s = Streamer(kind, sink.url, workdir, frame_ms,
                 prefix=(valgrind, "--tool=callgrind", "--trace-children=no",
                         f"--callgrind-out-file={out_file}", "--dump-instr=no",
                         "--collect-jumps=no", "--combine-dumps=yes"))
    try:
        conn = sink.first_frame(s.t_launch, 600.0, s.proc)
        time.sleep(2.0)
        subprocess.run([control, "--zero", str(s.pid)], capture_output=True, timeout=60)
        n_a, t_a = len(conn.arrivals), time.monotonic()
        time.sleep(seconds)
        subprocess.run([control, "--dump=window", str(s.pid)], capture_output=True, timeout=60)
        n_b, t_b = len(conn.arrivals), time.monotonic()
    finally:
        s.stop(60.0)
        s.close()
    instr = _callgrind_window_total(workdir, kind)
    frames = n_b - n_a
    if instr is None or not frames:
        return {"skipped": "callgrind wrote no window dump"}
    return {"instructions": instr, "frames": frames, "wall_s": round(t_b - t_a, 2),
            "per_frame": round(instr / frames),
            "per_audio_second": round(instr / frames * 1000 / frame_ms),
            "frames_per_wall_s": round(frames / (t_b - t_a), 1)}


def _callgrind_window_total(workdir: Path, kind: str) -> Optional[int]:
    """The ``totals:`` of the dump named "window" (instructions since --zero)."""
    for path in sorted(workdir.glob(f"callgrind.{kind}.*")):
        text = path.read_text(errors="replace")
        chunks = re.split(r"(?m)^# callgrind format", text)
        for chunk in chunks:
            if re.search(r"(?m)^desc: Trigger: .*window", chunk):
                m = re.search(r"(?m)^(?:totals|summary): (\d+)", chunk)
                if m:
                    return int(m.group(1))
    return None
