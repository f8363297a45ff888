"""The ``soca-appliance bench`` command line: which measurements run, and the report."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from .common import BenchError, PROG, progress
from .child import measure_startup
from .cost import run_subprocess
from .inprocess import run_in_process
from .probe import probe_main
from .procfs import machine_info, system_cpu
from .progressive import has_progressive, run_progressive
from .report import _targets, build_report, render_table
from .player_soak import child_main, render, run_player_soak
from .soak import run_soak
from . import echo as echo_bench
from . import floorcmd


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Measure the appliance against the local simulator: uplink "
        "latency, barge and button stop time, sentence start, start-up, CPU and memory.")
    p.add_argument("--runs", type=int, default=1, help="scripted conversations (default 1)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document on stdout (the table goes to stderr)")
    p.add_argument("--quick", action="store_true",
                   help="one short turn, a few barges: a smoke test in about 20 s")
    p.add_argument("--barges", type=int, default=None,
                   help="server barges per run (default 15; --quick 3)")
    p.add_argument("--presses", type=int, default=None,
                   help="button presses per run (default 15; --quick 3)")
    p.add_argument("--startups", type=int, default=None,
                   help="start-up samples at least (default 3; --quick 1)")
    p.add_argument("--minutes", type=float, default=None, metavar="N",
                   help="soak instead: the appliance for N minutes, a turn about every 11 s")
    p.add_argument("--sample-every", type=float, default=None, metavar="S",
                   help="soak sampling period (default 5 s, 1 s under 2 minutes)")
    p.add_argument("--compare-progressive", action="store_true",
                   help="time to first audio with progressive_playback off and on "
                        "(when the config has that key)")
    p.add_argument("--frame-ms", type=int, choices=(20, 40, 50), default=20,
                   help="uplink frame size (the frame_ms key; default 20)")
    p.add_argument("--soak-hours", type=float, default=None, metavar="N",
                   help="player soak instead: N hours of agent speech through the real player "
                        "on SDL's disk driver, about 20x faster than real time, every sentence "
                        "checked in the output; RSS, threads and fds sampled")
    p.add_argument("--seed", type=int, default=11, help="random seed of the player soak")
    floorcmd.add_arguments(p)
    echo_bench.add_arguments(p)
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--player-soak-child", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--probe", type=float, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.probe is not None:
        return probe_main(args.probe)
    if args.player_soak_child is not None:
        return child_main(args.player_soak_child, args.seed)
    if args.soak_hours is not None:
        return _player_soak(args)
    if args.floor:
        return floorcmd.floor_main(args)
    if args.echo:
        return echo_bench.echo_main(args)
    if args.runs < 1:
        print(f"{PROG}: error: --runs must be at least 1", file=sys.stderr)
        return 2
    if args.minutes is not None and args.minutes <= 0:
        print(f"{PROG}: error: --minutes must be positive", file=sys.stderr)
        return 2
    if not Path("/proc/self/stat").exists():
        print(f"{PROG}: error: needs Linux /proc to measure CPU and memory", file=sys.stderr)
        return 2
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    barges = args.barges if args.barges is not None else (3 if args.quick else 15)
    presses = args.presses if args.presses is not None else (3 if args.quick else 15)
    want_startups = args.startups if args.startups is not None else (1 if args.quick else 3)
    rng = random.Random(6)
    machine = machine_info()
    sys0 = system_cpu()
    failed: list[str] = []
    report: dict[str, Any]
    with tempfile.TemporaryDirectory(prefix="soca-bench-") as tmp:
        workdir = Path(tmp)
        if args.minutes is not None:
            every = args.sample_every or (1.0 if args.minutes < 2 else 5.0)
            progress(f"soak: the appliance for {args.minutes:g} min, sampling every {every:g} s")
            report = {"bench": {"command": " ".join(["python -m soca_appliance.bench"]
                                                    + args.argv),
                                "machine": machine}, "notes": []}
            try:
                report["soak"] = run_soak(workdir, args.minutes, every, args.frame_ms)
            except BenchError as exc:
                failed.append(f"soak: {exc}")
            report["targets"] = _targets(report)
        else:
            runs_in: list[dict[str, Any]] = []
            runs_sub: list[dict[str, Any]] = []
            startups: list[dict[str, float]] = []
            for n in range(1, args.runs + 1):
                try:
                    progress(f"run {n}/{args.runs}: in-process conversation, {barges} server "
                             f"barges, {presses} button presses")
                    runs_in.append(run_in_process(barges, presses, rng, args.frame_ms))
                    progress(f"run {n}/{args.runs}: the appliance as a subprocess "
                             f"(start-up, CPU, memory)")
                    sub = run_subprocess(workdir, args.quick, args.frame_ms)
                    runs_sub.append(sub)
                    startups.append(sub["startup"])
                except BenchError as exc:
                    failed.append(f"run {n}: {exc}")
                    progress(f"run {n} failed: {exc}")
            extra = max(0, want_startups - len(startups))
            for n in range(extra):
                progress(f"start-up {n + 1}/{extra}: Popen -> connected")
                try:
                    startups.append(measure_startup(workdir, args.frame_ms))
                except BenchError as exc:
                    failed.append(f"start-up: {exc}")
            if not runs_in or not runs_sub:
                print(f"{PROG}: error: " + "; ".join(failed), file=sys.stderr)
                return 1
            report = build_report(machine, runs_in, runs_sub, startups, args)
            if args.compare_progressive:
                if has_progressive():
                    progress("progressive playback: time to first audio, off then on")
                    try:
                        report["progressive"] = run_progressive(
                            workdir, 4 if args.quick else 12, rng)
                    except BenchError as exc:
                        failed.append(f"progressive: {exc}")
                else:
                    report["progressive"] = {"skipped": "Config has no progressive_playback "
                                             "key yet: nothing to compare"}
            if report["uplink"]["server_jitter_ms"] is None:
                report["notes"].append("server-side jitter not measurable: the simulator "
                                       "session has no audio hook")
            report["notes"].append(
                "barge, button and sentence-start latencies are in-process (the simulator "
                "shares this process and the GIL); uplink, start-up and cost figures are the "
                "appliance alone, as a subprocess")
    busy, total = system_cpu()
    machine["system_busy_pct"] = round(100.0 * (busy - sys0[0]) / max(1.0, total - sys0[1]), 1)
    with contextlib.suppress(OSError):
        machine["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    report["errors"] = failed
    table = render_table(report)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table)
    for error in failed:
        print(f"{PROG}: error: {error}", file=sys.stderr)
    if failed:
        return 1
    missed = [name for name, t in report.get("targets", {}).items() if t["pass"] is False]
    return 1 if (args.strict and missed) else 0

def _player_soak(args: argparse.Namespace) -> int:
    if args.soak_hours <= 0:
        print(f"{PROG}: error: --soak-hours must be positive", file=sys.stderr)
        return 2
    progress(f"player soak: {args.soak_hours:g} h of speech through the real player")
    report: dict[str, Any] = {"bench": {"command": " ".join(["python -m soca_appliance.bench"]
                                                            + args.argv),
                                        "machine": machine_info()}, "errors": []}
    try:
        report["player_soak"] = soak = run_player_soak(args.soak_hours, args.seed)
    except BenchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    table = "\n".join(render(soak))
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table)
    failed = soak["missing"] or soak["corrupt"] or soak["stuck"] or soak["errors"]
    return 1 if failed else 0
