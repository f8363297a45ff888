"""The ``soca-appliance`` command: run, demo, simulate, devices, ctl, bench.

Parses flags into configuration overrides, builds the pieces and hands them to the
orchestrator. Every failure a user can cause ends in one ``soca-appliance: error: ...``
line and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Optional

from . import __version__, config
from .config import Config, ConfigError

log = logging.getLogger("soca.cli")

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soca-appliance",
                                     description="Raspberry Pi voice appliance for Soca AI.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the appliance (the boot service runs this)")
    _appliance_flags(run)

    demo = sub.add_parser("demo", help="a whole conversation with the local simulator")
    _appliance_flags(demo, demo=True)
    demo.add_argument("--timeout", type=float, default=90.0,
                      help="give up after this many seconds (default 90)")

    sub.add_parser("simulate", add_help=False,
                   help="the local voice-ws simulator on 127.0.0.1 (simulate --help)")

    sub.add_parser("devices", help="list audio inputs and outputs with their native formats")

    sub.add_parser("ctl", add_help=False,
                   help="barge, mute, unmute or status of the running appliance (ctl --help)")
    sub.add_parser("bench", add_help=False,
                   help="latency and cost against the simulator (bench --help)")
    return parser


def _appliance_flags(p: argparse.ArgumentParser, demo: bool = False) -> None:
    p.add_argument("--config", type=Path, help="TOML config file "
                   f"(default {config.DEFAULT_CONFIG_PATH} when it exists)")
    if not demo:
        p.add_argument("--url", help="voice-ws endpoint (wss://...)")
        p.add_argument("--agent-id", help="Soca AI agent id")
    p.add_argument("--lang", choices=("id", "en"), help="conversation language")
    p.add_argument("--input", metavar="FILE.wav", help="a WAV file as the microphone")
    p.add_argument("--mic", metavar="NAME", help="microphone name substring")
    p.add_argument("--vad", action=argparse.BooleanOptionalAction, default=None,
                   help="send audio only around speech")
    p.add_argument("--duplex", choices=("auto", "aec", "half", "full"), help="echo policy")
    p.add_argument("--gpio", choices=("auto", "mock", "off"), help="button and LEDs")
    p.add_argument("--button-mode", choices=("barge", "push_to_talk"),
                   help="the button interrupts (barge) or is held to talk")
    p.add_argument("--control-socket", metavar="PATH", help="local control socket path")
    p.add_argument("--web-listen", metavar="HOST:PORT",
                   help='kiosk screen and /metrics address ("" for none)')
    p.add_argument("--log-format", choices=("text", "json"), help="event log format")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("url", "agent_id", "lang", "input", "mic", "vad", "duplex", "gpio",
            "button_mode", "control_socket", "log_format", "log_level")
    return {**{k: getattr(args, k, None) for k in keys},
            "web.listen": getattr(args, "web_listen", None)}


# Commands with their own argument parser: everything after the name is theirs (argparse's
# REMAINDER would refuse options placed first, such as "simulate --port 0").
_OWN_PARSER = ("simulate", "ctl", "bench")


def _delegate(name: str, rest: list[str]) -> int:
    if name == "ctl":
        from .control_client import ctl_main
        return ctl_main(rest)
    if name == "bench":
        from .bench import main as bench_main
        return bench_main(rest)
    from . import simulator
    return simulator.main(rest)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _OWN_PARSER:
        try:
            return _delegate(argv[0], argv[1:])
        except KeyboardInterrupt:
            return 130
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "devices":
            return cmd_devices()

    except ConfigError as exc:
        print(f"soca-appliance: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return EXIT_CONFIG


# --- run -------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, overrides=_overrides(args))
    key = config.read_private_key(cfg)
    if not cfg.agent_id:
        raise ConfigError("agent_id is not set (config file, SOCA_AGENT_ID or --agent-id)")
    return run_appliance(cfg, key)


def run_appliance(cfg: Config, key: str, stop: Optional[threading.Event] = None,
                  until_idle_after_input: bool = False, timeout: Optional[float] = None) -> int:
    """Run until SIGTERM/SIGINT (or, for the demo, until the input is spoken and answered)."""
    from .appliance import Appliance
    from .events import EventLog, Redactor, flush_logging, setup_logging
    from .service import Notifier

    events = EventLog(cfg.log_format, redactor=Redactor([key]))
    setup_logging(events, cfg.log_level, background=True)
    source = make_source(cfg)
    meter = None
    if cfg.web.listen:                      # the screen's mic level: a tap on the frames
        from .web.level import LevelTap
        source = LevelTap(source)
        meter = source.meter
    app = Appliance(cfg, events, source, key)
    notifier = Notifier(os.environ)
    stop = stop or threading.Event()
    with _signals(stop), _control(cfg, app), _web(cfg, app, events, meter, key):
        app.start()
        notifier.ready()
        if until_idle_after_input:
            watcher = threading.Thread(target=_stop_when_done, name="demo-watch", daemon=True,
                                       args=(app, source, stop, timeout))
            watcher.start()
        try:
            app.run(stop, notifier.tick)
        finally:
            notifier.stopping()
            app.shutdown()
            flush_logging()
    return 0


def make_source(cfg: Config) -> Any:
    from .protocol import frame_bytes
    if cfg.input:
        from .wavsource import WavSource, WavSourceError
        try:
            return WavSource(cfg.input, frame_bytes(cfg.frame_ms), cfg.mic_gain)
        except WavSourceError as exc:
            raise ConfigError(str(exc)) from None
    from .microphone import Microphone
    return Microphone(cfg.mic, frame_bytes(cfg.frame_ms), cfg.mic_gain,
                      rate=cfg.mic_rate, channels=cfg.mic_channels)


@contextlib.contextmanager
def _control(cfg: Config, app: Any) -> Iterator[None]:
    """The local control socket; the appliance runs without it when it cannot bind."""
    from .control import ControlError, make_handler
    from .control_server import ControlServer
    server = None
    if cfg.control_socket:
        try:
            server = ControlServer(cfg.control_socket, make_handler(app))
            server.start()
        except ControlError as exc:
            log.warning("control socket unavailable: %s; running without it", exc)
            server = None
    try:
        yield
    finally:
        if server is not None:
            server.close()


@contextlib.contextmanager
def _web(cfg: Config, app: Any, events: Any, meter: Any, key: str) -> Iterator[None]:
    """The kiosk screen and /metrics; the appliance runs without them when they cannot bind."""
    server = None
    if cfg.web.listen:
        from .web import serve              # only now: http.server costs memory
        host, port = config.parse_listen(cfg.web.listen)
        server = serve(host, port, cfg.web.token, cfg.lang, __version__, app, events, meter,
                       private_key=key)
    try:
        yield
    finally:
        if server is not None:
            server.close()


@contextlib.contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_when_done(app: Any, source: Any, stop: threading.Event,
                    timeout: Optional[float]) -> None:
    deadline = time.monotonic() + (timeout or 1e9)
    idle_since: Optional[float] = None
    while not stop.wait(0.2):
        now = time.monotonic()
        if now > deadline:
            log.warning("demo did not finish within %.0f s; stopping", timeout)
            stop.set()
            return
        ended = getattr(source, "ended", None)
        if ended is not None and ended.is_set() and app.idle():
            idle_since = idle_since or now
            if now - idle_since >= 2.0:
                stop.set()
                return
        else:
            idle_since = None


# --- demo ------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from .simulator import Simulator

    overrides = _overrides(args)
    lang = overrides.get("lang") or "en"
    overrides.update(lang=lang, agent_id="demo-agent", gpio=overrides.get("gpio") or "mock",
                     input=overrides.get("input") or str(_asset(f"demo-{lang}.wav")),
                     # an installed service may own the default socket: none unless asked
                     control_socket=overrides.get("control_socket") or "",
                     **{"web.listen": overrides.get("web.listen") or ""})
    key = "demo-" + os.urandom(8).hex()
    note = _ensure_audio_output()
    # The simulator's websockets library chats at INFO; the demo shows the conversation.
    logging.getLogger("soca.simulator.websockets").setLevel(logging.WARNING)
    with Simulator(expected_key=key) as sim:
        overrides["url"] = sim.url
        cfg = config.load(args.config or _no_file(), overrides=overrides)
        if cfg.log_format == "text":
            print(f"soca-appliance demo: simulator on {sim.url}; mic = {Path(cfg.input).name}"
                  f"{'; ' + note if note else ''}", flush=True)
        return run_appliance(cfg, key, until_idle_after_input=True, timeout=args.timeout)


def _no_file() -> Optional[Path]:
    # The demo ignores /etc/soca-appliance/config.toml unless --config names it: it must
    # work the same on a fresh machine and on an installed kiosk.
    return Path(os.devnull) if config.DEFAULT_CONFIG_PATH.exists() else None


def _asset(name: str) -> Path:
    return Path(str(resources.files("soca_appliance") / "assets" / name))


def _ensure_audio_output() -> str:
    """Use the speaker if SDL can open one; otherwise SDL's dummy driver, said in one line."""
    if os.environ.get("SDL_AUDIODRIVER"):
        return ""
    from .microphone import quiet_stderr
    from .player import pygame
    try:
        with quiet_stderr():        # SDL's ALSA backend lists every missing card
            pygame.mixer.init()
        pygame.mixer.quit()
        return ""
    except pygame.error:
        os.environ["SDL_AUDIODRIVER"] = "dummy"
        return "no sound card found, playing on SDL's dummy driver (silent)"


# --- devices ---------------------------------------------------------------------------

def cmd_devices() -> int:
    from .microphone import list_devices, open_pyaudio
    pa = open_pyaudio()
    try:
        devices = list_devices(pa)
    finally:
        pa.terminate()
    if not devices:
        print("no audio devices found (no sound card, or no permission: is the user in the "
              "'audio' group?)")
        return 1
    print(f"{'#':>3}  {'in':>3} {'out':>3}  {'rate':>6}  name")
    for d in devices:
        print(f"{d.index:>3}  {d.max_input_channels:>3} {d.max_output_channels:>3}  "
              f"{d.default_rate:>6}  {d.name}")
    return 0
