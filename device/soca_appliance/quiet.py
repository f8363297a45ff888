"""Keep the audio libraries' start-up chatter off stderr without ever touching fd 2.

ALSA (``ALSA lib confmisc.c:... cannot find card '0'``), JACK (``jack server is not
running``) and PortAudio print pages while probing for devices, most of all on a machine
with no sound card. The old way, swapping fd 2 for ``/dev/null`` around each call, is a
process-wide side effect: two threads doing it at once (the player and the microphone open
together at start) can leave fd 2 on ``/dev/null`` for the life of the process, and the
journal then gets no diagnostics and no tracebacks.

Here instead, once per library and under one lock:

* every loaded copy of libasound (the system's, and the one bundled in pygame's wheel) gets
  a no-op error handler through ``snd_lib_error_set_handler``; the system's is loaded and
  held first, because SDL's ALSA driver loads it afresh (and unloads it) on every attempt;
* libjack gets no-op error and info functions (``jack_set_error_function``,
  ``jack_set_info_function``) and ``JACK_NO_START_SERVER=1`` so no jackd is ever started.

The handler is a C function (libc's ``abs``: no side effects, ignores the extra arguments
under every Linux calling convention), not a ctypes callback: ALSA calls it from SDL's
audio thread too, and a Python callback there would need the GIL while another thread may
hold it waiting for that audio thread (``mixer.quit`` joins it): a deadlock.

``SOCA_NATIVE_NOISE=1`` leaves the libraries' own messages on (debugging a sound card).
:func:`quiet` is the context manager callers use around device probing (the player, the
microphone, ``soca-diag``); it only makes sure the handlers are installed, so it is cheap,
re-entrant and safe from any number of threads at once.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import threading
from typing import Iterator, Optional

log = logging.getLogger("soca.quiet")

_lock = threading.Lock()
_done: set[str] = set()         # library paths already given a handler
_noop: Optional[int] = None
_held: list[ctypes.CDLL] = []   # libraries kept loaded so that they keep their handler


def _noop_pointer() -> Optional[int]:
    global _noop
    if _noop is None:
        try:
            libc = ctypes.CDLL(None)
            _noop = ctypes.cast(libc.abs, ctypes.c_void_p).value
        except (OSError, AttributeError):
            _noop = 0
    return _noop or None


def _loaded(fragment: str) -> list[str]:
    """Paths of the shared objects mapped in this process whose name contains ``fragment``."""
    paths: set[str] = set()
    with contextlib.suppress(OSError):
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                path = line.rstrip("\n").split(None, 5)[-1] if line.count(" ") >= 5 else ""
                name = os.path.basename(path)
                if path.startswith("/") and name.startswith(fragment) and ".so" in name:
                    paths.add(path)
    return sorted(paths)


def _install(path: str, setters: tuple[str, ...], pointer: int) -> bool:
    try:
        lib = ctypes.CDLL(path)
        for name in setters:
            fn = getattr(lib, name)
            fn.argtypes = [ctypes.c_void_p]
            fn(pointer)
    except (OSError, AttributeError) as exc:
        log.debug("could not quieten %s: %s", path, exc)
        return False
    return True


def silence_native_noise() -> int:
    """Install the no-op handlers in every audio library loaded so far (idempotent).

    Returns how many libraries were quietened by this call. Call it again after loading
    another library (importing pygame or pyaudio); :func:`quiet` does.
    """
    if os.environ.get("SOCA_NATIVE_NOISE") == "1":
        return 0
    os.environ.setdefault("JACK_NO_START_SERVER", "1")
    with _lock:
        pointer = _noop_pointer()
        if pointer is None:
            return 0
        if not _held:
            # SDL's ALSA driver dlopens the system's libasound on each mixer.init and
            # dlcloses it after a failure: held here, it stays loaded (parsed once, and
            # with the handler installed) instead of printing afresh on every attempt.
            name = ctypes.util.find_library("asound")
            with contextlib.suppress(OSError):
                if name:
                    _held.append(ctypes.CDLL(name))
        count = 0
        for fragment, setters in (("libasound", ("snd_lib_error_set_handler",)),
                                  ("libjack", ("jack_set_error_function",
                                               "jack_set_info_function"))):
            for path in _loaded(fragment):
                if path not in _done and _install(path, setters, pointer):
                    _done.add(path)
                    count += 1
        return count


def refresh_alsa_config() -> None:
    """Re-read ALSA's configuration if its files changed (``snd_config_update``).

    PortAudio reads ALSA's global configuration only when nobody has yet: once SDL has
    parsed it in this process (libasound is held loaded, see above), a PortAudio
    initialised later would not see an edited ``asoundrc`` or ``ALSA_CONFIG_PATH``.
    """
    with _lock:
        for lib in _held:
            with contextlib.suppress(AttributeError, OSError):
                lib.snd_config_update()


def quietened() -> list[str]:
    """The libraries given a no-op handler so far (for soca-diag and tests)."""
    with _lock:
        return sorted(_done)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Around device probing: the audio libraries say nothing on stderr.

    Handlers are installed before the body (for libraries already loaded) and after it
    (for a library the body loaded, e.g. ``import pyaudio``: its own start-up output, if
    any, happened before a handler could exist, so import audio modules via
    :func:`import_pyaudio` where that matters). fd 2 is never touched.
    """
    silence_native_noise()
    try:
        yield
    finally:
        silence_native_noise()


def import_pyaudio():  # type: ignore[no-untyped-def]
    """``import pyaudio`` with its libraries quietened before anyone calls ``PyAudio()``."""
    import pyaudio          # loads libportaudio, libasound and libjack; prints nothing yet
    silence_native_noise()
    return pyaudio
