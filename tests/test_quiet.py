"""Logging that cannot disappear: the audio libraries' chatter stays off stderr, and
opening the speaker and the microphone at the same time never leaves stderr pointing at
/dev/null (it used to: two threads swapping fd 2 at once)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from soca_appliance import quiet

PACKAGE = str(Path(__file__).resolve().parent.parent / "device")

# A child process: the real Player and Microphone opened together from two threads, many
# times, with no sound card (SDL's ALSA driver and PortAudio both probe and fail, which is
# when the libraries print the most). After each round it writes a numbered line to stderr
# through logging and straight to fd 2.
CHILD = r"""
import logging, os, sys, threading
sys.path.insert(0, sys.argv[1])
from soca_appliance.microphone import Microphone
from soca_appliance.player import Player
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
log = logging.getLogger("child")
rounds = int(sys.argv[2])
for n in range(rounds):
    player = Player()
    mic = Microphone("no-such-mic", retry_initial=5, retry_max=5)
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=lambda: (barrier.wait(), player.start())),
               threading.Thread(target=lambda: (barrier.wait(), mic.start(lambda f: None)))]
    for t in threads: t.start()
    for t in threads: t.join()
    # wait until both have really tried (and failed) to open their device
    import time
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (getattr(mic, "reopens", 0) < 1
                                           or player.info is None and not player.alive()):
        time.sleep(0.005)
    time.sleep(0.05)
    mic.stop(); player.close()
    log.info("logged %d", n)
    os.write(2, b"raw %d\n" % n)
"""


def test_stderr_survives_player_and_mic_opening_together() -> None:
    rounds = 15
    env = {**os.environ, "SDL_AUDIODRIVER": "alsa", "PYGAME_HIDE_SUPPORT_PROMPT": "1"}
    env.pop("SOCA_NATIVE_NOISE", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, PACKAGE, str(rounds)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    for n in range(rounds):
        assert f"logged {n}" in lines, f"log line {n} never reached stderr"
        assert f"raw {n}" in lines, f"fd 2 lost after round {n}"
    noise = [line for line in lines if "ALSA lib" in line or "jack" in line.lower()]
    assert noise == [], noise[:5]


def test_quiet_never_touches_fd_2() -> None:
    before = os.fstat(2)
    with quiet.quiet():
        during = os.fstat(2)
        with quiet.quiet():             # re-entrant
            pass
    after = os.fstat(2)
    assert (before.st_ino, before.st_dev) == (during.st_ino, during.st_dev) \
        == (after.st_ino, after.st_dev)


def test_every_loaded_libasound_is_quietened() -> None:
    from soca_appliance import microphone
    import soca_appliance.player  # noqa: F401 - loads pygame's own libasound
    pa = microphone.open_pyaudio()          # loads the system's libasound and libjack
    microphone.close_pyaudio(pa)
    done = quiet.quietened()
    loaded = quiet._loaded("libasound")
    assert loaded and set(loaded) <= set(done)
    assert os.environ.get("JACK_NO_START_SERVER") == "1"
