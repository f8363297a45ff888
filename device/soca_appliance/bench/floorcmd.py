"""``soca-appliance bench --floor``: the streaming cost against the floor, as a report and
a table (see :mod:`.floor` for what is measured and how)."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from .common import PROG, BenchError, progress
from .floor import run_floor
from .imports import aec_footprint
from .procfs import machine_info

# name: (limit, unit, where in the floor report); every figure is "at most"
FLOOR_TARGETS = {
    "cpu_vs_floor_ratio": (1.3, "x", ("ratio", "cpu_pct")),
    "peak_rss_all_features_mb": (60.0, "MB", ("appliance", "peak_rss_mb")),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--floor", action="store_true",
                   help="streaming cost instead: the appliance (every feature on) against a "
                        "bare one-thread websocket-client streamer of the same speech, "
                        "alternating rounds, ratios")
    p.add_argument("--floor-rounds", type=int, default=None, metavar="N",
                   help="rounds of each (default 5; --quick 2)")
    p.add_argument("--floor-window", type=float, default=None, metavar="S",
                   help="seconds measured per round (default 15; --quick 4)")
    p.add_argument("--wyoming", metavar="EXE", default=None,
                   help="with --floor: also wyoming-satellite (its executable, installed "
                        "apart) at 20 and 64 ms chunks in the same rounds")
    p.add_argument("--floor-duplex", choices=("auto", "aec", "half", "full"), default=None,
                   help="with --floor: the appliance's duplex (default aec, every feature "
                        "on; half measures the streaming path without the echo canceller)")
    p.add_argument("--instructions", action="store_true",
                   help="with --floor: also count instructions per frame under valgrind "
                        "(about 2 minutes more)")


def _dig(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        doc = doc.get(key) or {}
    return doc if isinstance(doc, (int, float)) else None


# What a target is about, said beside it when this run measured something else: the
# 1.3x is the stream's own cost (with the canceller on the figure is AEC3's), the 60 MB
# is with every feature on (the canceller included).
_SCOPE = {
    "cpu_vs_floor_ratio": (lambda duplex: duplex != "aec",
                           "the target is the stream's own cost; with the echo canceller on "
                           "this is AEC3's (measure the stream with --floor-duplex half)"),
    "peak_rss_all_features_mb": (lambda duplex: duplex in ("aec", ""),
                                 "the echo canceller was off: every feature on is the "
                                 "default --floor-duplex"),
}


def targets(floor: dict[str, Any]) -> dict[str, Any]:
    out = {}
    duplex = floor.get("duplex", "")
    for name, (limit, unit, path) in FLOOR_TARGETS.items():
        value = _dig(floor, path)
        if value is not None:
            out[name] = {"value": value, "limit": limit, "unit": unit, "pass": value <= limit}
            applies, why = _SCOPE[name]
            if not applies(duplex):
                out[name]["scope"] = f"duplex = {duplex}: {why}"
    wy = _dig(floor, ("wyoming_20ms", "cpu_pct"))
    app = _dig(floor, ("appliance", "cpu_pct"))
    if wy is not None and app is not None:     # measured in the same rounds
        out["cpu_below_wyoming_20ms_pct"] = {"value": app, "limit": wy, "unit": "%",
                                             "pass": app <= wy}
    return out


def floor_main(args: argparse.Namespace) -> int:
    rounds = args.floor_rounds or (2 if args.quick else 5)
    window = args.floor_window or (4.0 if args.quick else 15.0)
    if rounds < 1 or window <= 0:
        print(f"{PROG}: error: --floor-rounds and --floor-window must be positive",
              file=sys.stderr)
        return 2
    report: dict[str, Any] = {"bench": {"command": " ".join(["python -m soca_appliance.bench"]
                                                            + args.argv),
                                        "machine": machine_info()}, "errors": [], "notes": []}
    with tempfile.TemporaryDirectory(prefix="soca-bench-floor-") as tmp:
        try:
            floor = run_floor(Path(tmp), rounds, window, args.frame_ms,
                              instructions=args.instructions, wyoming=args.wyoming,
                              duplex=args.floor_duplex)
        except BenchError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 1
    progress("floor: the echo canceller's libraries on their own")
    floor["aec_footprint"] = aec_footprint()
    report["floor"] = floor
    report["targets"] = targets(floor)
    with contextlib.suppress(OSError):
        report["bench"]["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    table = "\n".join(render(report))
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table)
    missed = [n for n, t in report["targets"].items() if not t["pass"] and "scope" not in t]
    return 1 if (args.strict and missed) else 0


def _f(value: Optional[float], unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def render(report: dict[str, Any]) -> list[str]:
    f = report["floor"]
    m = report["bench"]["machine"]
    t = report.get("targets", {})
    lines = [f"soca-appliance bench: {report['bench']['command']}",
             f"machine: {m.get('cpu_model')} x{m.get('nproc')}, Python {m.get('python')}, "
             f"load {' '.join(m.get('loadavg_start', []))} at start, "
             f"{' '.join(m.get('loadavg_end', []))} at end",
             f"streaming cost against the floor: {f['frame_ms']} ms frames, "
             f"{f['rounds']} alternating rounds of {f['window_s']:g} s, medians",
             "", f"{'figure':<34} {'appliance':>11} {'floor':>11} {'ratio':>8}"]

    def row(label: str, key: str, unit: str = "", digits: int = 2, ratio: bool = True) -> None:
        a, b = f["appliance"].get(key), f["floor"].get(key)
        r = f["ratio"].get(key) if ratio else None
        lines.append(f"{label:<34} {_f(a, unit, digits):>11} {_f(b, unit, digits):>11} "
                     f"{_f(r, 'x'):>8}")

    row("CPU, % of a core", "cpu_pct", " %")
    row("CPU per frame", "us_per_frame", " us", 0)
    row("voluntary context switches /s", "vcs_per_s", "", 0)
    row("involuntary context switches /s", "nvcs_per_s", "", 0, ratio=False)
    row("threads", "threads", "", 0)
    row("frames at the sink /s", "frames_per_s", "", 1, ratio=False)
    row("peak RSS (VmHWM)", "peak_rss_mb", " MB", 1)
    row("PSS", "pss_mb", " MB", 1)
    row("private", "private_mb", " MB", 1, ratio=False)
    row("launch -> stt.ready", "startup_ready_s", " s", 3, ratio=False)
    row("launch -> first frame at the server", "startup_first_frame_s", " s", 3)
    row("launch -> first event (imports done)", "startup_first_event_s", " s", 3,
        ratio=False)
    for kind in ("wyoming_20ms", "wyoming_64ms"):
        if kind in f:
            w, r = f[kind], f["ratio"][kind]
            lines.append(f"{kind.replace('_', '-satellite ', 1):<34} CPU {_f(w['cpu_pct'], ' %')} "
                         f"({_f(r['cpu_pct'], 'x')} the floor), {_f(w['vcs_per_s'], '', 0)} "
                         f"switches/s, {_f(w['threads'], '', 0)} threads, RSS/PSS "
                         f"{_f(w['peak_rss_mb'], '', 1)}/{_f(w['pss_mb'], ' MB', 1)}")
    lines.append(f"{'CPU ratio, median of per-round pairs':<34} "
                 f"{_f(f['ratio'].get('cpu_pct_paired_median'), 'x'):>32}")
    busiest = [f"{k} {v:g}" for k, v in f["appliance"].get("cpu_by_thread_pct", {}).items()
               if v][:6]
    if busiest:
        lines.append("appliance CPU % by thread: " + ", ".join(busiest))
    ins = f.get("instructions")
    if ins:
        for kind in ("appliance", "floor"):
            i = ins.get(kind, {})
            if "skipped" in i:
                lines.append(f"instructions ({kind}): skipped: {i['skipped']}")
            else:
                lines.append(f"instructions per frame ({kind}){'':<8} {i['per_frame']:>12,} "
                             f"= {i['per_audio_second'] / 1e6:.2f} M per second of audio "
                             f"({i['frames_per_wall_s']} frames/s under valgrind)")
        lines.append(f"{'instructions per frame, ratio':<34} "
                     f"{_f(f['ratio'].get('instructions_per_frame'), 'x'):>32}")
    imp = f.get("imports")
    if imp:
        lines.append(f"start-up imports (-X importtime): {imp['total_import_ms']:.0f} ms; "
                     "biggest: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                             list(imp["biggest_ms"].items())[:8]))
        lines.append(f"  stt.ready at {imp['startup_ready_s']} s; first imported at (s): "
                     + ", ".join(f"{k} {v}" for k, v in imp["imported_at_s"].items()))
    aec = f.get("aec_footprint", {})
    if aec and "skipped" not in aec:
        lines.append(f"AEC libraries alone (numpy, soxr, AEC3): +{aec['aec_adds_mb']} MB "
                     f"peak RSS over a bare interpreter ({aec['bare_python_mb']} MB)")
    lines.append(f"appliance config: {f['appliance_config'].strip()!r}")
    for name, v in t.items():
        lines.append(f"target {name}: {v['value']:g} {v['unit']} <= {v['limit']:g} "
                     f"{'PASS' if v['pass'] else 'MISS'}"
                     + (f" (not this run's: {v['scope']})" if "scope" in v else ""))
    return lines
