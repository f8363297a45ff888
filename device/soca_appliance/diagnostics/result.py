"""What a check returns (:class:`Result`: PASS, WARN, FAIL, SKIP or INFO, a one-line detail,
a hint and figures) and the small helpers every check group shares."""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
INFO = "INFO"                        # a fact about the machine (the system group), not a test
STATUSES = (PASS, WARN, FAIL, SKIP, INFO)
UNIT = "soca-appliance"
SERVICE_USER = "soca"
SILENT_DBFS = -60.0
CLIP_SHARE = 0.01                    # more than 1 % of samples at full scale
BUTTON_WAIT_S = 10.0
THROTTLE_BITS = {
    0: "under-voltage now", 1: "ARM frequency capped now", 2: "throttled now",
    3: "soft temperature limit now", 16: "under-voltage since boot",
    17: "frequency capped since boot", 18: "throttled since boot",
    19: "soft temperature limit since boot",
}
UNDER_VOLTAGE_NOW = 1 << 0
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


@dataclass
class Result:
    name: str
    status: str
    detail: str = ""
    hint: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


def passed(name: str, detail: str, **figures: Any) -> Result:
    return Result(name, PASS, detail, "", figures)


def warned(name: str, detail: str, hint: str = "", **figures: Any) -> Result:
    return Result(name, WARN, detail, hint, figures)


def failed(name: str, detail: str, hint: str = "", **figures: Any) -> Result:
    return Result(name, FAIL, detail, hint, figures)


def skipped(name: str, detail: str, hint: str = "") -> Result:
    return Result(name, SKIP, detail, hint)


def info(name: str, detail: str, hint: str = "", **figures: Any) -> Result:
    return Result(name, INFO, detail, hint, figures)


def with_timeout(func: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run ``func`` on a daemon thread; raise TimeoutError if it has not returned in time."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="soca-diag", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{what}: no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def describe(exc: BaseException) -> str:
    """One line for a failure: OS errors as the system says them, others with their type."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    if isinstance(exc, OSError):
        return (str(exc) or exc.__class__.__name__)[:300]
    return f"{exc.__class__.__name__}: {exc}"[:300]
