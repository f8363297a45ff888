"""``soca-appliance bench``: how fast the appliance reacts, and what it costs a small Pi.

Runs the real appliance against the real :class:`~soca_appliance.simulator.Simulator` on
127.0.0.1, with the bundled English speech (``assets/demo-en.wav``) as the microphone,
SDL's ``dummy`` audio driver unless ``SDL_AUDIODRIVER`` is set, and gpiozero's mock pins.

Phases, per run (``--runs N``):

* in-process (the appliance's objects in this process, so that the moments that matter
  can be timestamped in the very thread that handles them): a spoken turn answered by the
  simulator, then server barges and button presses while a sentence plays, each followed
  by a new sentence in a new seq. Timestamps come from a wrapper around the link's
  ``on_message`` callback (a barge, the last chunk of a sentence), from the gpiozero mock
  pin (the button's release), and from an event-log listener (``sentence.play`` and
  ``sentence.stop``, called synchronously in the emitting thread).
* subprocess: ``soca-appliance run`` alone (the simulator stays in this process), for
  start-up (Popen → ``connected``, which follows ``stt.ready``), the uplink (the link's
  ``stats.latencies``, saved at shutdown by a small launcher around the CLI), CPU from
  ``/proc/PID/stat`` and per thread, peak RSS (``VmHWM``), threads, open fds, and the
  frames' arrival times at the simulator.
* a control probe in its own process during each phase: a bare Python thread hand-off
  every 20 ms, i.e. what this machine's scheduler alone does to a waking thread.

``--minutes N`` runs a soak instead: the appliance for N minutes with a spoken turn about
every 11 s, sampling RSS, threads and open file descriptors. ``--soak-hours N`` runs the
player soak instead (:mod:`.player_soak`): N hours of agent speech through the real player
on SDL's disk driver, about 20x faster than real time, every sentence found in the output. ``--compare-progressive``
adds time to first audio with ``progressive_playback`` off and on. ``--floor`` measures
the streaming cost instead, against a bare one-thread websocket-client streamer in the same
run (:mod:`.floor`, :mod:`.floorcmd`; ``--instructions``, ``--wyoming EXE``).

Nothing here changes the appliance: the bench wraps callbacks and listens. See
``BENCHMARKS.md`` for figures and how to read them.

The package holds one module per measurement (in-process conversation, the appliance as a
subprocess, soak, progressive playback, the control probe) plus the /proc readings and the
report; this module re-exports what callers use (``bench.main``, ``bench.summary``...).
"""
from __future__ import annotations

from .child import Child, measure_startup
from .common import (ASSETS, FRAME_S, KEY, PROG, SEQ_BASE, SOAK_GAP_S, SPEECH_WAV, TARGETS,
                     BenchError, jitter, median, percentile, progress, summary)
from .cost import run_subprocess
from .inprocess import InProcess, arrivals, run_in_process
from .command import build_parser, main
from .probe import control_probe, probe_main
from .procfs import (machine_info, proc_cpu_s, proc_fds, proc_memory, proc_status,
                     proc_tasks_cpu, system_cpu, threads_cpu_pct)
from .progressive import has_progressive, run_progressive
from .report import build_report, render_table
from .player_soak import run_player_soak
from .soak import run_soak, soak_wav

__all__ = ["ASSETS", "FRAME_S", "KEY", "PROG", "SEQ_BASE", "SOAK_GAP_S", "SPEECH_WAV",
           "TARGETS", "BenchError", "Child", "InProcess", "arrivals", "build_parser",
           "build_report", "control_probe", "has_progressive", "jitter", "machine_info",
           "main", "measure_startup", "median", "percentile", "probe_main", "proc_cpu_s",
           "proc_fds", "proc_memory", "proc_status", "proc_tasks_cpu", "progress",
           "render_table", "run_in_process", "run_player_soak", "run_progressive", "run_soak",
           "run_subprocess",
           "soak_wav", "summary", "system_cpu", "threads_cpu_pct"]
