"""The report: figures pooled over runs, verdicts against the targets, the table."""
from __future__ import annotations

import argparse
from typing import Any, Optional

from .common import TARGETS, jitter, median, summary


def _verdict(value: Optional[float], target: str) -> Optional[bool]:
    return None if value is None else value <= TARGETS[target][0]


def build_report(machine: dict[str, Any], runs_in: list[dict[str, Any]],
                 runs_sub: list[dict[str, Any]], startups: list[dict[str, float]],
                 args: argparse.Namespace) -> dict[str, Any]:
    period = args.frame_ms / 1000.0

    def pooled_jitter(series: list[list[float]]) -> dict[str, Any]:
        deviations = [abs((b - a) - period) for ts in series for a, b in zip(ts, ts[1:])]
        return {**summary(deviations),
                "gaps": sum(jitter(ts, period)["gaps"] for ts in series)}

    def drops(ups: list[dict[str, Any]]) -> dict[str, int]:
        return {k: sum(u[k] for u in ups)
                for k in ("frames_sent", "frames_dropped_not_ready", "frames_dropped_full")}

    ups_sub = [r["uplink"] for r in runs_sub]
    ups_in = [r["uplink"] for r in runs_in]
    measurable = all(r["server_arrivals"] is not None for r in runs_sub)
    uplink = {
        "scope": "latency_ms, send_jitter_ms, frames_*: the appliance alone (the subprocess); "
                 "*_in_process: during the in-process phase, the simulator sharing the GIL",
        "latency_ms": summary([v for u in ups_sub for v in u["latency_s"]]),
        "send_jitter_ms": pooled_jitter([u["send_times"] for u in ups_sub]),
        "server_jitter_ms": (pooled_jitter([r["server_arrivals"] for r in runs_sub])
                             if measurable else None),
        **drops(ups_sub),
        "latency_in_process_ms": summary([v for u in ups_in for v in u["latency_s"]]),
        "send_jitter_in_process_ms": pooled_jitter([u["send_times"] for u in ups_in]),
        "in_process": drops(ups_in),
    }
    server = summary([v for r in runs_in for v in r["server_barge_s"]])
    button = summary([v for r in runs_in for v in r["button_s"]])
    starts = summary([v for r in runs_in for v in r["sentence_start_s"]])
    mixer = runs_in[0]["mixer"] if runs_in else {}
    startup_s = [s["connected_s"] for s in startups]
    cost_pct = [r["cpu_pct_conversation"] for r in runs_sub]
    controls = [r["control"] for r in runs_in + runs_sub
                if r.get("control", {}).get("handoff_ms")]
    report: dict[str, Any] = {
        "bench": {"command": " ".join(["python -m soca_appliance.bench"] + args.argv),
                  "runs": args.runs, "quick": args.quick, "frame_ms": args.frame_ms,
                  "machine": machine},
        "control": {
            "what": "bare Python thread hand-off every 20 ms in another process during each "
                    "phase: this machine's scheduling noise, no appliance code",
            "handoff_ms": {"n": sum(c["handoff_ms"]["n"] for c in controls),
                           "p50": _r(median([c["handoff_ms"]["p50"] for c in controls]), 3),
                           "p99": _r(max((c["handoff_ms"]["p99"] for c in controls),
                                         default=None), 3),
                           "max": _r(max((c["handoff_ms"]["max"] for c in controls),
                                         default=None), 3)},
            "system_busy_pct": [r.get("control", {}).get("system_busy_pct")
                                for pair in zip(runs_in, runs_sub) for r in pair],
        },
        "uplink": uplink,
        "barge": {"server_ms": server, "button_ms": button,
                  "mixer_buffer": {"samples": mixer.get("buffer"), "ms": mixer.get("buffer_ms"),
                                   "frequency": mixer.get("frequency"),
                                   "driver": mixer.get("driver")}},
        "playback": {"sentence_start_ms": starts,
                     "sentences_queued_excluded": sum(r["sentences_queued"] for r in runs_in)},
        "startup": {"n": len(startup_s), "connected_s": [round(s, 3) for s in startup_s],
                    "median_s": _r(median(startup_s), 3),
                    "first_event_median_s": _r(median([s["first_event_s"] for s in startups]), 3),
                    "audio_output_median_s": _r(median([s["audio_output_s"] for s in startups
                                                        if s["audio_output_s"] is not None]), 3),
                    "cpu_s_median": _r(median([s["cpu_s"] for s in startups if "cpu_s" in s]), 3)},
        "cost": {"cpu_pct_streaming": _r(median(cost_pct), 2),
                 "cpu_pct_streaming_max": _r(max(cost_pct, default=None), 2),
                 "cpu_s_per_min": _r(median([r["cpu_s_per_min"] for r in runs_sub]), 3),
                 "cpu_pct_idle_streaming": _r(median([r["cpu_pct_idle"] for r in runs_sub]), 2),
                 "peak_rss_mb": _r(max((r["peak_rss_mb"] for r in runs_sub), default=None), 1),
                 "pss_mb": _r(median([r["pss_mb"] for r in runs_sub if "pss_mb" in r]), 1),
                 "private_mb": _r(median([r["private_mb"] for r in runs_sub
                                          if "private_mb" in r]), 1),
                 "threads_max": max((r["threads_max"] for r in runs_sub), default=None),
                 "fds": max((r["fds"] for r in runs_sub), default=None),
                 "conversation_s": _r(median([r["conversation_s"] for r in runs_sub]), 1),
                 "sentences_played": [r["sentences_played"] for r in runs_sub],
                 "cpu_by_thread_pct": _median_by_key([r["cpu_by_thread_pct"] for r in runs_sub]),
                 "scope": "the appliance alone: python -m soca_appliance run, /proc/PID"},
        "runs": [{"in_process": {k: v for k, v in r.items() if k != "uplink"} |
                  {"uplink": {k: v for k, v in r["uplink"].items()
                              if k not in ("latency_s", "send_times")}},
                  "subprocess": {k: v for k, v in s.items()
                                 if k not in ("server_arrivals", "uplink")}}
                 for r, s in zip(runs_in, runs_sub)],
        "notes": [],
    }
    for run in report["runs"]:
        for key in ("server_barge_s", "button_s", "sentence_start_s"):
            run["in_process"][key] = [round(v * 1000.0, 3) for v in run["in_process"][key]]
        run["in_process"]["units"] = "ms"
    report["targets"] = _targets(report)
    return report


def _median_by_key(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for d in dicts for k in d}
    out = {k: round(median([d.get(k, 0.0) for d in dicts]) or 0.0, 2) for k in keys}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _r(value: Optional[float], digits: int) -> Optional[float]:
    return None if value is None else round(value, digits)


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    figures = {
        "uplink_p99_ms": report.get("uplink", {}).get("latency_ms", {}).get("p99"),
        "barge_server_p99_ms": report.get("barge", {}).get("server_ms", {}).get("p99"),
        "barge_button_p99_ms": report.get("barge", {}).get("button_ms", {}).get("p99"),
        "sentence_start_p99_ms": report.get("playback", {}).get("sentence_start_ms", {})
        .get("p99"),
        "cpu_streaming_pct": report.get("cost", {}).get("cpu_pct_streaming"),
        "peak_rss_mb": report.get("cost", {}).get("peak_rss_mb"),
        "startup_median_s": report.get("startup", {}).get("median_s"),
        "soak_rss_growth_mb_per_10min": (report.get("soak") or {}).get("rss_growth_mb_per_10min"),
    }
    return {name: {"value": value, "limit": TARGETS[name][0], "unit": TARGETS[name][1],
                   "pass": _verdict(value, name)}
            for name, value in figures.items() if value is not None}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def render_table(report: dict[str, Any]) -> str:
    t = report.get("targets", {})
    lines: list[str] = []

    def verdict(name: str) -> str:
        if name not in t:
            return ""
        return f"<= {t[name]['limit']:g} {t[name]['unit']}  " + ("PASS" if t[name]["pass"]
                                                                 else "MISS")

    def row(label: str, s: Optional[dict[str, Any]], unit: str, target: str = "",
            extra: str = "") -> None:
        s = s or {}
        lines.append(f"{label:<44} {_fmt(s.get('p50'), unit):>10} {_fmt(s.get('p99'), unit):>10} "
                     f"{_fmt(s.get('max'), unit):>10} {str(s.get('n', '')):>5}  "
                     f"{verdict(target) if target else extra}")

    def line(label: str, value: str, target: str = "") -> None:
        lines.append(f"{label:<44} {value:>32}  {verdict(target) if target else ''}".rstrip())

    m = report["bench"]["machine"]
    frame_ms = report["bench"].get("frame_ms", 20)
    lines.append(f"soca-appliance bench: {report['bench']['command']}")
    lines.append(f"machine: {m.get('cpu_model')} x{m.get('nproc')}, Python {m.get('python')}, "
                 f"pygame {m.get('pygame')} (SDL {m.get('sdl')}, SDL_mixer {m.get('sdl_mixer')}), "
                 f"SDL_AUDIODRIVER={m.get('sdl_audiodriver') or '(SDL default)'}")
    if m.get("loadavg_start"):
        lines.append(f"load average {' '.join(m['loadavg_start'])} at start, "
                     f"{' '.join(m.get('loadavg_end', []))} at end; whole machine "
                     f"{m.get('system_busy_pct', '-')} % busy during the bench "
                     "(other jobs share it)")
    lines.append("")
    lines.append(f"{'figure':<44} {'p50':>10} {'p99':>10} {'max':>10} {'n':>5}  target")
    if "control" in report:
        ctl = report["control"]
        row("control: bare thread hand-off (no appliance)", ctl["handoff_ms"], "ms",
            extra="machine busy % per run: " + ", ".join(
                _fmt(v) for v in ctl["system_busy_pct"]))
    if "uplink" in report:
        up = report["uplink"]
        row("uplink: capture -> socket write", up["latency_ms"], "ms", "uplink_p99_ms")
        row(f"uplink: send jitter |interval-{frame_ms}ms|", up["send_jitter_ms"], "ms",
            extra=f"gaps>{1.5 * frame_ms:g}ms: {up['send_jitter_ms'].get('gaps')}")
        if up.get("server_jitter_ms"):
            row("uplink: arrival jitter at the simulator", up["server_jitter_ms"], "ms",
                extra=f"gaps>{1.5 * frame_ms:g}ms: {up['server_jitter_ms'].get('gaps')}")
        line("uplink: frames sent / dropped not-ready/full",
             f"{up['frames_sent']} / {up['frames_dropped_not_ready']} / "
             f"{up['frames_dropped_full']}")
        row("  in-process (simulator shares the GIL)", up["latency_in_process_ms"], "ms")
    if "barge" in report:
        b = report["barge"]
        row("barge: server barge -> channel stopped", b["server_ms"], "ms",
            "barge_server_p99_ms")
        row("barge: button release -> channel stopped", b["button_ms"], "ms",
            "barge_button_p99_ms")
        mb = b["mixer_buffer"]
        line("  + audible: up to one mixer buffer",
             f"{mb.get('samples')} samples = {mb.get('ms')} ms ({mb.get('driver')})")
    if "playback" in report:
        row("playback: last chunk -> sentence.play", report["playback"]["sentence_start_ms"],
            "ms", "sentence_start_p99_ms")
    if "startup" in report:
        s = report["startup"]
        line("start-up: Popen -> connected (stt.ready)",
             f"median {_fmt(s['median_s'], 's')} (n={s['n']})", "startup_median_s")
        line("  of which: Popen -> first event (imports)", _fmt(s["first_event_median_s"], "s"))
        line("  CPU spent until connected", _fmt(s["cpu_s_median"], "s"))
    if "cost" in report:
        c = report["cost"]
        line("cost: CPU during a conversation",
             f"{_fmt(c['cpu_pct_streaming'], '%')} of a core "
             f"({_fmt(c['cpu_s_per_min'], 'CPU-s/min')})", "cpu_streaming_pct")
        line("cost: CPU idle streaming (silence)", f"{_fmt(c['cpu_pct_idle_streaming'], '%')}")
        line("cost: peak RSS (VmHWM)", _fmt(c["peak_rss_mb"], "MB"), "peak_rss_mb")
        if c.get("pss_mb") is not None:
            line("  of which its own: PSS / private", f"{_fmt(c['pss_mb'], 'MB')} / "
                 f"{_fmt(c['private_mb'], 'MB')}")
        line("cost: threads / open fds", f"{c['threads_max']} / {c['fds']}")
        busiest = [f"{k} {v:g}" for k, v in c.get("cpu_by_thread_pct", {}).items() if v > 0][:5]
        if busiest:
            lines.append(f"  CPU % by thread: {', '.join(busiest)}")
    if "soak" in report:
        k = report["soak"]
        line(f"soak: RSS growth over {k['rss_measured_span_min']} min",
             f"{_fmt(k['rss_growth_mb'], 'MB')} ({k['rss_first_mb']} -> {k['rss_last_mb']} MB)")
        line("soak: RSS trend, per 10 min", _fmt(k["rss_growth_mb_per_10min"], "MB"),
             "soak_rss_growth_mb_per_10min")
        line("soak: threads min/max, fds first/last",
             f"{k['threads_min']}/{k['threads_max']}, {k['fds_first']}/{k['fds_last']}")
        line("soak: CPU, turns, sentences, errors",
             f"{_fmt(k['cpu_pct'], '%')}, {k['turns']}, {k['sentences_played']}, {k['errors']}")
        line("soak: peak RSS (incl. the input WAV in memory)", _fmt(k["peak_rss_mb"], "MB"))
    if "progressive" in report:
        p = report["progressive"]
        if "skipped" in p:
            line("progressive playback", "skipped")
        else:
            row("time to first audio, progressive off", p["off"], "ms")
            row("time to first audio, progressive on", p["on"], "ms")
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
