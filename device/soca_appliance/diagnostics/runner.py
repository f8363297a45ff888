"""The runner and the command line: the list of checks in order, running each so that nothing
it raises ends the report, the table or the JSON document, and ``main``."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TextIO

from .. import __version__, config
from .audio import check_mic_device, check_mic_level, check_speaker
from .config_key import check_config, check_key
from .echo_path import check_echo_path
from .context import Context
from .gpio import check_button, check_leds
from .network import check_dns, check_handshake, check_tcp, check_tls
from .result import (EXIT_FAIL, EXIT_OK, FAIL, INFO, PASS, SKIP, WARN, Result, describe,
                     failed)
from .service import check_disk, check_memory, check_power, check_service, check_temperature
from .system import (check_audio, check_board, check_echo, check_gpio_factory, check_install,
                     check_os)

CHECKS: list[tuple[str, Callable[[Context], Result]]] = [
    ("system.board", check_board),
    ("system.os", check_os),
    ("system.audio", check_audio),
    ("system.gpio", check_gpio_factory),
    ("system.echo", check_echo),
    ("system.install", check_install),
    ("config", check_config),
    ("key", check_key),
    ("mic.device", check_mic_device),
    ("mic.level", check_mic_level),
    ("speaker", check_speaker),
    ("echo.path", check_echo_path),
    ("gpio.leds", check_leds),
    ("gpio.button", check_button),
    ("net.dns", check_dns),
    ("net.tcp", check_tcp),
    ("net.tls", check_tls),
    ("net.handshake", check_handshake),
    ("service", check_service),
    ("pi.power", check_power),
    ("pi.temperature", check_temperature),
    ("pi.disk", check_disk),
    ("pi.memory", check_memory),
]
NAMES = [name for name, _ in CHECKS]


# --- running and reporting -----------------------------------------------------------------

def run_check(ctx: Context, name: str, func: Callable[[Context], Result]) -> Result:
    try:
        result = func(ctx)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a check must never end the report
        result = failed(name, f"check crashed: {describe(exc)}",
                        "please report this with the output of soca-diag --json")
    return _scrub(result, ctx.secrets())


def selected(only: Optional[str]) -> list[tuple[str, Callable[[Context], Result]]]:
    if not only:
        return list(CHECKS)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    chosen = [(n, f) for n, f in CHECKS
              if any(n == w or n.startswith(w.rstrip(".") + ".") for w in wanted)]
    return chosen


def run(args: argparse.Namespace, env: Optional[Mapping[str, str]] = None,
        on_result: Callable[[Result], None] = lambda r: None) -> list[Result]:
    ctx = Context(args, os.environ if env is None else env)
    results: list[Result] = []
    try:
        for name, func in selected(args.only):
            result = run_check(ctx, name, func)
            results.append(result)
            on_result(result)
    finally:
        ctx.close()
    return results


def _scrub(result: Result, secrets: list[str]) -> Result:
    def clean(value: Any) -> Any:
        if isinstance(value, str):
            for secret in secrets:
                value = value.replace(secret, "***")
            return value.replace("\n", " | ")
        if isinstance(value, float):
            return round(value, 2) if math.isfinite(value) else None
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value
    return Result(result.name, result.status, clean(result.detail), clean(result.hint),
                  clean(result.figures))


class TablePrinter:
    """Prints rows as they come, aligned: the names are known before the first check."""

    def __init__(self, names: list[str], out: TextIO) -> None:
        self.width = max([len(n) for n in names] + [5])
        self.out = out
        self.header = False

    def __call__(self, r: Result) -> None:
        if not self.header:
            print(f"{'CHECK':<{self.width}}  STATUS  DETAIL", file=self.out)
            self.header = True
        print(f"{r.name:<{self.width}}  {r.status:<6}  {r.detail}", file=self.out, flush=True)
        if r.hint:
            print(f"{'':<{self.width}}  {'':<6}  hint: {r.hint}", file=self.out, flush=True)


def summary(results: list[Result]) -> str:
    counts = {s: sum(1 for r in results if r.status == s) for s in (PASS, WARN, FAIL, SKIP, INFO)}
    text = (f"{counts[PASS]} passed, {counts[WARN]} warning(s), {counts[FAIL]} failed, "
            f"{counts[SKIP]} skipped")
    return text + (f", {counts[INFO]} info" if counts[INFO] else "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="soca-diag", description="Check the kiosk: the system (board, OS, audio path, GPIO "
        "factory, echo policy, install path), config, key, microphone, speaker, GPIO, network "
        "and handshake, service, Pi health. Exit 1 when a check fails.",
        epilog="checks: " + ", ".join(NAMES) + ". Run as root (sudo) to read the key and the "
        "journal; stop the service to test the mic and speaker.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help=f"config file (default {config.DEFAULT_CONFIG_PATH} when it exists)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--no-interactive", action="store_true",
                   help="skip what needs a person (the button); no prompts, no pauses")
    p.add_argument("--record-seconds", type=_positive, default=3.0, metavar="S",
                   help="seconds recorded from the microphone (default 3)")
    p.add_argument("--gpio", choices=("auto", "mock", "off"),
                   help="GPIO mode (default: the config's)")
    p.add_argument("--url", help="voice-ws endpoint to test instead of the config's")
    p.add_argument("--echo-test", action="store_true",
                   help="play the chime while recording to measure the room's echo path "
                   "(delay, echo return loss; always on a Raspberry Pi)")
    p.add_argument("--only", metavar="NAMES", help="comma-separated checks or groups "
                   "(system, config, key, mic, speaker, echo, gpio, net, service, pi)")
    return p


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError("must be above 0 and at most 60")
    return value


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.only and not selected(args.only):
        parser.error(f"--only {args.only!r} matches no check; checks: {', '.join(NAMES)}")
    names = [n for n, _ in selected(args.only)]
    printer: Callable[[Result], None] = (lambda r: None) if args.json \
        else TablePrinter(names, sys.stdout)
    try:
        results = run(args, on_result=printer)
    except KeyboardInterrupt:
        print("soca-diag: interrupted", file=sys.stderr)
        return 130
    ok = not any(r.status == FAIL for r in results)
    if args.json:
        doc = {"checks": [asdict(r) for r in results], "ok": ok}
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print(summary(results) + (": OK" if ok else ": FAILED"))
    return EXIT_OK if ok else EXIT_FAIL

