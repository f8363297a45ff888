"""Cheap checks of which sound devices exist, so a missing device is not probed in a loop.

Opening audio through SDL's ALSA driver with no sound card leaks about 141 kB per attempt
inside the libraries (``mixer.quit()`` does not return it), and PortAudio only rescans
devices when it is initialised again (a new ``PyAudio()``, which leaks about 12 kB). So the
player and the microphone look here first, at what the kernel and the sound servers show:
ALSA's device nodes (``/dev/snd/pcmC<card>D<device>p`` for playback, ``...c`` for capture)
and card list (``/proc/asound/cards``), and the sockets of PulseAudio and PipeWire. A
:class:`Presence` says whether a device can be there and carries a signature that changes
when a card comes or goes: retry when it changes, not on a timer.

Reading a directory and one small file costs a few microseconds; no udev needed.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import Callable, Optional

# SDL drivers that need no device: always "present".
VIRTUAL_DRIVERS = frozenset({"dummy", "disk", "dsp"})
SERVER_DRIVERS = frozenset({"pulse", "pulseaudio", "pipewire", "jack"})


@dataclass(frozen=True)
class Presence:
    """``present``: True (a device exists), False (none can exist), None (unknowable here,
    e.g. a sound server on another host). ``signature`` changes when devices change."""
    present: Optional[bool]
    signature: tuple[str, ...]
    what: str = ""

    def lost(self, before: "Presence") -> bool:
        """Something that was there before is gone (a card, a device node, a sound server):
        the device in use may have been it."""
        gone = set(before.signature) - set(self.signature)
        return any(not s.startswith("virtual:") for s in gone)


def _cards(root: str) -> list[str]:
    """``card:N:id`` for each card in /proc/asound/cards."""
    out: list[str] = []
    try:
        with open(os.path.join(root, "proc/asound/cards"), encoding="utf-8",
                  errors="replace") as fh:
            for line in fh:
                m = re.match(r"\s*(\d+)\s+\[([^\]]*)\]", line)
                if m:
                    out.append(f"card:{m.group(1)}:{m.group(2).strip()}")
    except OSError:
        pass
    return out


def _pcms(root: str, direction: str) -> list[str]:
    """``pcm:C0D0p`` for each ALSA PCM device node of that direction (``p`` or ``c``)."""
    nodes = glob.glob(os.path.join(root, "dev/snd", f"pcmC*D*{direction}"))
    return sorted("pcm:" + os.path.basename(n)[3:] for n in nodes)


def _sockets(root: str) -> list[str]:
    out: list[str] = []
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    candidates = {"pulse": [os.path.join(runtime, "pulse/native"), "/run/pulse/native",
                            "/var/run/pulse/native"],
                  "pipewire": [os.path.join(runtime, "pipewire-0")]}
    for name, paths in candidates.items():
        for path in paths:
            full = os.path.join(root, path.lstrip("/")) if root != "/" else path
            try:
                st = os.stat(full)
            except OSError:
                continue
            out.append(f"{name}:{full}:{st.st_ino}")
    if os.environ.get("PULSE_SERVER"):
        out.append("pulse:server:" + os.environ["PULSE_SERVER"])
    return out


def alsa(direction: str = "p", root: str = "/") -> Presence:
    """ALSA hardware: a PCM device node of that direction, and the card list."""
    cards = _cards(root)
    pcms = _pcms(root, direction)
    # /dev/snd may be missing in a container that still sees /proc/asound, and vice versa.
    present = bool(pcms) or bool(cards)
    what = (f"{len(cards)} sound card(s)" if cards else
            "no sound card (ALSA lists none)")
    return Presence(present, tuple(cards + pcms), what)


def output(driver: Optional[str] = None, root: str = "/") -> Presence:
    """Can SDL's audio driver ``driver`` (default: ``$SDL_AUDIODRIVER``) find an output?"""
    name = (driver if driver is not None else os.environ.get("SDL_AUDIODRIVER", "")).lower()
    if name in VIRTUAL_DRIVERS:
        return Presence(True, (f"virtual:{name}",), f"SDL's {name} driver")
    hw = alsa("p", root)
    servers = _sockets(root)
    if name == "alsa":
        return hw
    if name in SERVER_DRIVERS:
        mine = [s for s in servers if s.startswith(name[:5])]
        # A server on another host, or started on demand: cannot tell from here.
        return Presence(True if mine else None, tuple(mine + list(hw.signature)),
                        "sound server socket found" if mine else "no sound server socket")
    # SDL's default: it tries the sound servers, then ALSA.
    present: Optional[bool] = True if (hw.present or servers) else False
    if name:        # a driver this module does not know: never block its retries
        present = None
    return Presence(present, tuple(servers + list(hw.signature)),
                    hw.what if not servers else "sound server socket found")


def capture(root: str = "/") -> Presence:
    """Could PortAudio find an input: ALSA capture nodes, or a sound server (its ALSA
    plugin ``pulse``). PortAudio also lists ALSA config devices that need no hardware
    (``null``, files), so ``present`` is None when nothing is there rather than False."""
    hw = alsa("c", root)
    servers = _sockets(root)
    present = True if (hw.present or servers) else None
    return Presence(present, tuple(servers + list(hw.signature)), hw.what)


PresenceCheck = Callable[[], Presence]
