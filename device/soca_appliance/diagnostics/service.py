"""Checks: the boot service (systemd state, restarts, recent errors) and the Pi's health
(power and throttling, temperature, disk, memory)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .context import Context
from .result import (THROTTLE_BITS, UNDER_VOLTAGE_NOW, UNIT, Result, failed, passed,
                     skipped, warned)

def _run(argv: list[str], timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SYSTEMD_PAGER": "", "LC_ALL": "C"}, check=False)


def check_service(ctx: Context) -> Result:
    name = "service"
    if not os.path.isdir("/run/systemd/system"):
        return skipped(name, "systemd is not PID 1 here")
    if shutil.which("systemctl") is None:
        return skipped(name, "systemctl not found")
    active = _run(["systemctl", "is-active", UNIT]).stdout.strip() or "unknown"
    props = {}
    for line in _run(["systemctl", "show", UNIT, "--property=LoadState,SubState,NRestarts,"
                      "Result"]).stdout.splitlines():
        key, _, value = line.partition("=")
        props[key] = value
    if props.get("LoadState") == "not-found":
        return warned(name, f"{UNIT}.service is not installed", "run install.sh")
    restarts = int(props.get("NRestarts") or 0)
    errors = _journal_errors()
    figures = dict(active=active, sub_state=props.get("SubState", ""), restarts=restarts,
                   errors=errors)
    detail = f"{active} ({props.get('SubState', '?')}), restarted {restarts} time(s)"
    if errors:
        detail += "; last errors: " + " | ".join(errors[-3:])
    if active != "active":
        return failed(name, detail, f"journalctl -u {UNIT} -n 50; start it with "
                      f"sudo systemctl start {UNIT}", **figures)
    if restarts:
        return warned(name, detail, f"it crashed and restarted: journalctl -u {UNIT} -p err",
                      **figures)
    return passed(name, detail, **figures)


def _journal_errors() -> list[str]:
    if shutil.which("journalctl") is None:
        return []
    proc = _run(["journalctl", "-u", UNIT, "-p", "err", "-n", "5", "--no-pager", "-q",
                 "-o", "short-iso"])
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 and not lines:
        return [f"(journal not readable: {proc.stderr.strip()[:80] or 'no permission'})"]
    return lines[-5:]


def check_power(ctx: Context) -> Result:
    name = "pi.power"
    tool = shutil.which("vcgencmd")
    if tool is None:
        return skipped(name, "vcgencmd not found (not a Raspberry Pi OS image)")
    proc = _run([tool, "get_throttled"])
    text = proc.stdout.strip()
    if proc.returncode != 0 or "=" not in text:
        return skipped(name, "vcgencmd get_throttled failed: "
                       f"{(proc.stderr or text).strip()[:80]}",
                       "run as root, or add the user to group video")
    value = int(text.split("=", 1)[1], 16)
    flags = [label for bit, label in THROTTLE_BITS.items() if value & (1 << bit)]
    figures = dict(throttled=f"0x{value:x}", flags=flags)
    if value & UNDER_VOLTAGE_NOW:
        return failed(name, f"0x{value:x}: " + ", ".join(flags), "use the official 5 V "
                      "power supply (5.1 V, 3 A; 5 A on a Pi 5) and a short cable", **figures)
    if flags:
        return warned(name, f"0x{value:x}: " + ", ".join(flags), "under-voltage or heat "
                      "since boot: check the power supply and cooling", **figures)
    return passed(name, "0x0: no under-voltage or throttling since boot", **figures)


def check_temperature(ctx: Context) -> Result:
    name = "pi.temperature"
    path = Path("/sys/class/thermal/thermal_zone0/temp")
    try:
        celsius = int(path.read_text().strip()) / 1000.0
    except (OSError, ValueError) as exc:
        return skipped(name, f"{path} not readable ({exc.__class__.__name__})")
    detail = f"CPU {celsius:.1f} °C"
    if celsius >= 80.0:
        return failed(name, detail + ": throttling", "add a heatsink or fan; ventilate the "
                      "case", celsius=celsius)
    if celsius >= 70.0:
        return warned(name, detail + ": hot", "add a heatsink or fan", celsius=celsius)
    return passed(name, detail, celsius=celsius)


def check_disk(ctx: Context) -> Result:
    name = "pi.disk"
    usage = shutil.disk_usage("/")
    free_mb = usage.free / 1e6
    detail = f"/: {free_mb:.0f} MB free of {usage.total / 1e6:.0f} MB"
    figures = dict(free_mb=round(free_mb), total_mb=round(usage.total / 1e6))
    if free_mb < 50:
        return failed(name, detail, "free space: sudo journalctl --vacuum-size=50M; "
                      "sudo apt-get clean", **figures)
    if free_mb < 200:
        return warned(name, detail, "sudo journalctl --vacuum-size=50M; sudo apt-get clean",
                      **figures)
    return passed(name, detail, **figures)


def check_memory(ctx: Context) -> Result:
    name = "pi.memory"
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError as exc:
        return skipped(name, f"/proc/meminfo not readable ({exc.__class__.__name__})")
    values = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) / 1024.0         # kB -> MB (MiB)
    if "MemAvailable" not in values:
        return skipped(name, "MemAvailable not in /proc/meminfo")
    avail, total = values["MemAvailable"], values.get("MemTotal", 0.0)
    detail = f"{avail:.0f} MB available of {total:.0f} MB"
    figures = dict(available_mb=round(avail), total_mb=round(total))
    if avail < 40:
        return failed(name, detail, "something else uses the memory: top -o %MEM", **figures)
    if avail < 100:
        return warned(name, detail, "little memory left: top -o %MEM", **figures)
    return passed(name, detail, **figures)

