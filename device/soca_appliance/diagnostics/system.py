"""The ``system`` group: facts that tell someone reading a report over SSH what they are
looking at. Which board and OS (64- or 32-bit userland), which audio path SDL and ALSA
offer, which GPIO pin factory gpiozero would use, which echo policy is in force, and how
the appliance was installed (wheels, Debian packages, source).

Each is an INFO line with figures in ``--json``; a WARN only where a fact means a feature
is lost on a Raspberry Pi (no pin library, an echo canceller asked for and missing).
Nothing here opens an audio device or claims a pin.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import re
import struct
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

from .context import Context
from .result import Result, describe, info, warned

MODEL_PATH = "/proc/device-tree/model"
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")
ASOUND_CARDS = "/proc/asound/cards"
DEFAULT_PREFIX = "/opt/soca-appliance"
MARKER = "INSTALL_PATH"                       # written by install.sh into its prefix
ECHO_MODULE = "soca_appliance.echo"           # the appliance's echo policy, when it has one
CANCELLER_MODULE = "pywebrtc_audio"           # what echo.Canceller imports
FACTORY_NAMES = {"LGPIOFactory": "lgpio", "RPiGPIOFactory": "rpigpio",
                 "PiGPIOFactory": "pigpio", "NativeFactory": "native",
                 "MockFactory": "mock"}
PROBED_PACKAGES = ("numpy", "pygame", "pyaudio", "gpiozero", "lgpio")


# --- board and OS --------------------------------------------------------------------------

def check_board(ctx: Context) -> Result:
    name = "system.board"
    raw = _read_model(MODEL_PATH)
    machine = platform.machine()
    if raw and "Raspberry Pi" in raw:
        return info(name, raw, model=raw, raspberry_pi=True, machine=machine)
    detail = f"not a Raspberry Pi ({raw or 'no device-tree model'}; {machine})"
    return info(name, detail, model=raw, raspberry_pi=False, machine=machine)


def check_os(ctx: Context) -> Result:
    name = "system.os"
    release = os_release(OS_RELEASE_PATHS)
    pretty = release.get("PRETTY_NAME") or release.get("NAME") or platform.system()
    bits = struct.calcsize("P") * 8             # this Python's pointers: the userland's
    kernel = platform.machine()
    detail = f"{pretty}, {bits}-bit userland, kernel {platform.release()} {kernel}"
    if bits == 32 and kernel in ("aarch64", "arm64", "x86_64"):
        detail += " (a 32-bit userland on a 64-bit kernel)"
    return info(name, detail, pretty_name=pretty, id=release.get("ID", ""),
                version_codename=release.get("VERSION_CODENAME", ""), userland_bits=bits,
                kernel=platform.release(), kernel_arch=kernel,
                python=platform.python_version())


def os_release(paths: tuple[str, ...]) -> dict[str, str]:
    """The first os-release file found, as a dict (the format of os-release(5))."""
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        out = {}
        for line in text.splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key and not key.startswith("#"):
                out[key] = value.strip().strip("'\"")
        return out
    return {}


def _read_model(path: str) -> str:
    try:
        return Path(path).read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
    except OSError:
        return ""


# --- audio path ----------------------------------------------------------------------------

def check_audio(ctx: Context) -> Result:
    name = "system.audio"
    from .. import devices
    driver = ctx.env.get("SDL_AUDIODRIVER", "")
    cards = alsa_cards(ASOUND_CARDS)
    playback = [s[4:] for s in devices.alsa("p").signature if s.startswith("pcm:")]
    capture = [s[4:] for s in devices.alsa("c").signature if s.startswith("pcm:")]
    output = devices.output(driver)
    path = (f"SDL_AUDIODRIVER={driver}" if driver
            else "SDL_AUDIODRIVER unset (SDL tries PipeWire/PulseAudio, then ALSA)")
    listed = ", ".join(f"card {c['index']} {c['id']} ({c['name']})" for c in cards)
    detail = (f"{path}; ALSA: {listed or 'no sound card'}; {len(playback)} playback and "
              f"{len(capture)} capture device(s); output: {output.what or 'unknown'}")
    return info(name, detail, sdl_audiodriver=driver, alsa_cards=cards,
                playback_devices=playback, capture_devices=capture,
                output_present=output.present)


def alsa_cards(path: str) -> list[dict[str, Any]]:
    """``/proc/asound/cards`` as ``[{"index": 0, "id": "PCH", "name": "HDA Intel PCH"}]``."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    cards = []
    for line in text.splitlines():
        found = re.match(r"\s*(\d+)\s+\[([^\]]*)\]:\s*(.*)", line)
        if found:
            kind, _, long_name = found.group(3).partition(" - ")
            cards.append({"index": int(found.group(1)), "id": found.group(2).strip(),
                          "name": (long_name or kind).strip()})
    return cards


# --- GPIO pin factory ----------------------------------------------------------------------

def check_gpio_factory(ctx: Context) -> Result:
    name = "system.gpio"
    mode = ctx.gpio_mode
    forced = ctx.env.get("GPIOZERO_PIN_FACTORY", "")
    if mode == "off":
        return info(name, "gpio = off: the pins are not used", mode=mode, factory="")
    if mode == "mock":
        return info(name, "gpio = mock: gpiozero's MockFactory (simulated pins)", mode=mode,
                    factory="mock")
    factory, tried, error = default_pin_factory()
    source = f"GPIOZERO_PIN_FACTORY={forced}" if forced else "gpiozero's default order"
    reasons = "; ".join(t.replace("Falling back from ", "") for t in tried)
    figures: dict[str, Any] = dict(mode=mode, factory=factory, forced=forced, skipped=tried)
    if factory:
        detail = f"auto: {factory} ({source})" + (f"; skipped {reasons}" if reasons else "")
        return info(name, detail, **figures)
    detail = f"auto: no pin factory ({source}): " + (reasons or error)
    if _read_model(MODEL_PATH).startswith("Raspberry Pi"):
        return warned(name, detail, "install lgpio (python3-lgpio; install.sh does) and add "
                      "the service user to group gpio", **figures)
    return info(name, detail + " (normal off a Pi)", **figures)


def default_pin_factory() -> tuple[str, list[str], str]:
    """(name of the factory gpiozero picks, its fallback messages, error if none).

    The factory is the one the appliance would then use too (gpiozero keeps it). Its
    fallback warnings are collected, never printed.
    """
    from gpiozero import Device
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            Device.ensure_pin_factory()
            error = ""
        except Exception as exc:  # noqa: BLE001 - BadPinFactory, ImportError, OSError...
            error = describe(exc)
    tried = [str(w.message) for w in caught]
    if error:
        return "", tried, error
    cls = type(Device.pin_factory).__name__
    return FACTORY_NAMES.get(cls, cls), tried, ""


# --- echo policy ---------------------------------------------------------------------------

def check_echo(ctx: Context) -> Result:
    name = "system.echo"
    duplex = str(getattr(ctx.cfg, "duplex", ""))
    if duplex in ("half", "full"):
        return info(name, f"{duplex} (duplex = {duplex}: no echo canceller used)",
                    duplex=duplex, policy=duplex, canceller="")
    if importlib.util.find_spec(ECHO_MODULE) is None:
        return info(name, f"duplex = {duplex} (this version has no echo canceller)",
                    duplex=duplex, policy=duplex, canceller="")
    module = CANCELLER_MODULE
    why = canceller_missing(module)
    if not why:
        return info(name, f"aec (canceller importable: {module}; duplex = {duplex})",
                    duplex=duplex, policy="aec", canceller=module)
    detail = f"half (no canceller: {why}; duplex = {duplex})"
    figures = dict(duplex=duplex, policy="half", canceller="", reason=why)
    if duplex == "aec":
        return warned(name, detail, "duplex = aec needs the echo canceller: install.sh "
                      "installs it where a wheel exists (or builds it); voice barge-in is "
                      "off until then", **figures)
    return info(name, detail, **figures)


def canceller_missing(module: str) -> str:
    """Why ``module`` cannot be imported ("" when it can)."""
    try:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - ImportError, OSError from a native library
        return f"{module} does not load ({describe(exc)})"
    return ""


# --- install path --------------------------------------------------------------------------

def check_install(ctx: Context) -> Result:
    name = "system.install"
    marker = find_marker(ctx.env)
    if marker is not None:
        data, origins = read_marker(marker)
        kinds: dict[str, list[str]] = {}
        for package, origin in origins.items():
            kinds.setdefault(origin.split(" ", 1)[0], []).append(package)
        parts = [f"{len(v)} {k}" if k == "wheels" else f"{k}: {', '.join(sorted(v))}"
                 for k, v in sorted(kinds.items())]
        path = data.get("path", "?")
        detail = f"{path} (install.sh, {marker})"
        if data.get("reason"):
            detail += f": {data['reason']}"
        if parts:
            detail += "; " + "; ".join(parts)
        return info(name, detail, path=path, marker=str(marker), reason=data.get("reason", ""),
                    arch=data.get("arch", ""), date=data.get("date", ""), packages=origins)
    venv = sys.prefix != sys.base_prefix
    system_site = _system_site_packages(Path(sys.prefix)) if venv else True
    found = {p: _package_location(p) for p in PROBED_PACKAGES}
    where = ", ".join(f"{p} {loc}" for p, loc in found.items() if loc)
    detail = (f"no {MARKER} file (not installed by install.sh?): "
              + (f"venv {sys.prefix}, system site-packages "
                 f"{'on' if system_site else 'off'}" if venv else f"no venv ({sys.prefix})")
              + (f"; {where}" if where else ""))
    return info(name, detail, path="", marker="", venv=venv, system_site_packages=system_site,
                packages=found)


def find_marker(env: Any) -> Optional[Path]:
    """install.sh's ``PREFIX/INSTALL_PATH``: ``$SOCA_PREFIX``, this venv, or the default."""
    candidates = [env.get("SOCA_PREFIX", ""), sys.prefix, DEFAULT_PREFIX]
    for prefix in candidates:
        if prefix and (Path(prefix) / MARKER).is_file():
            return Path(prefix) / MARKER
    return None


def read_marker(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(the path/reason/arch/python/date lines, {distribution: origin line})."""
    meta_keys = {"path", "reason", "arch", "python", "date"}
    data: dict[str, str] = {}
    origins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        (data if key in meta_keys else origins)[key] = value.strip()
    return data, origins


def _system_site_packages(prefix: Path) -> bool:
    try:
        text = (prefix / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    found = re.search(r"^include-system-site-packages\s*=\s*(\w+)", text, re.M)
    return bool(found) and found.group(1).lower() == "true"


def _package_location(package: str) -> str:
    """Where ``package`` would be imported from, in words; "" when it is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return ""
    origin = (spec.origin or "") if spec is not None else ""
    if not origin:
        return ""
    if "/dist-packages/" in origin:
        return "from Debian (dist-packages)"
    if os.path.realpath(origin).startswith(os.path.realpath(sys.prefix) + os.sep):
        return "in the venv (site-packages)"
    return f"from {os.path.dirname(os.path.dirname(origin))}"
