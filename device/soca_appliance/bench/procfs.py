"""/proc readings (Linux): CPU, memory, threads and fds of a process; the machine."""
from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        data = fh.read()
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK     # utime, stime


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS/VmHWM in kB and Threads, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def proc_memory(pid: int | str = "self") -> dict[str, float]:
    """Proportional (PSS) and private memory in MB from /proc/PID/smaps_rollup: RSS counts
    every shared library page the process touched; these say what it costs on its own."""
    kb: dict[str, int] = {}
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("Pss", "Private_Clean", "Private_Dirty"):
                    kb[key] = int(value.split()[0])
    if not kb:
        return {}
    return {"pss_mb": round(kb.get("Pss", 0) / 1024.0, 1),
            "private_mb": round((kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0))
                                / 1024.0, 1)}


def proc_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_tasks_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Thread id -> (``comm``, CPU seconds) for every thread of a process."""
    out: dict[int, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm", encoding="utf-8") as fh:
                comm = fh.read().strip()
            out[int(tid)] = (comm, proc_cpu_s(f"{pid}/task/{tid}"))
        except OSError:
            continue
    return out


def threads_cpu_pct(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                    seconds: float, names: dict[str, str]) -> dict[str, float]:
    """% of one core per thread over an interval, by Python thread name where known
    (Python does not name its OS threads; SDL does)."""
    out: dict[str, float] = {}
    for tid, (comm, cpu) in after.items():
        name = names.get(str(tid), comm)
        used = cpu - before.get(tid, (comm, 0.0))[1]
        out[name] = out.get(name, 0.0) + 100.0 * used / seconds
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return float(sum(parts) - idle), float(sum(parts))


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model, "machine": platform.machine(), "kernel": platform.release(),
        "python": platform.python_version(),
        "sdl_audiodriver": os.environ.get("SDL_AUDIODRIVER", ""),
    }
    from ..player import pygame
    info["pygame"] = pygame.version.ver
    info["sdl"] = ".".join(map(str, pygame.get_sdl_version()))
    with contextlib.suppress(Exception):
        info["sdl_mixer"] = ".".join(map(str, pygame.mixer.get_sdl_mixer_version()))
    import websocket
    info["websocket_client"] = getattr(websocket, "__version__", "")
    with contextlib.suppress(OSError):
        info["loadavg_start"] = Path("/proc/loadavg").read_text().split()[:3]
    return info
