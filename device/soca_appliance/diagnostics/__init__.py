"""``soca-diag``: check a kiosk from an SSH session, one line per check.

Runs, in order: the system's facts (board, OS and its 32/64-bit userland, audio path, GPIO
pin factory, echo policy, install path: INFO lines), the configuration, the private key,
the microphone (found by name, then a few seconds recorded through the same
:class:`~soca_appliance.framing.Converter` path the appliance uses, with level, peak and
clipping), the speaker (pygame's mixer plays the bundled chime), the room's echo path (on a Pi or
with ``--echo-test``: the chime played while recording), the GPIO LEDs and button, the network (DNS, TCP, TLS, then a real ``start``
handshake with the voice agent), the boot service, and the Pi itself (power, temperature,
disk, memory).

Every check is a small function returning a :class:`Result` (PASS, WARN, FAIL, SKIP or
INFO, a one-line detail, a hint and optional figures); whatever it raises becomes a FAIL with the
reason, never a traceback. The exit status is 1 when any check FAILs, else 0. ``--json``
prints one document ``{"checks": [...], "ok": bool}``. The private key is never printed:
every text is scrubbed of it before it is shown.

One module per check group: :mod:`.system` (facts: board, OS, audio path, GPIO factory,
echo policy, install path), :mod:`.config_key`, :mod:`.audio`, :mod:`.gpio`,
:mod:`.echo_path`, :mod:`.network`, :mod:`.service` (the boot service and the Pi's health), and :mod:`.runner`
(the list of checks, the table, the JSON document, ``main``); :mod:`.context` holds what the
checks share and :mod:`.result` what they return. This package re-exports the names the
single ``diagnostics`` module had, so ``soca_appliance.diagnostics:main`` (the ``soca-diag``
console script) and ``python -m soca_appliance.diagnostics`` keep working.

The mic and the speaker cannot be shared with a running appliance on most USB devices: stop
the service first (``sudo systemctl stop soca-appliance``) for those two checks.
"""
from __future__ import annotations

from .audio import check_mic_device, check_mic_level, check_speaker, levels, record
from .config_key import check_config, check_key
from .context import Context
from .echo_path import check_echo_path
from .gpio import check_button, check_leds
from .network import HandshakeError, check_dns, check_handshake, check_tcp, check_tls, handshake
from .result import (BUTTON_WAIT_S, CLIP_SHARE, EXIT_FAIL, EXIT_OK, EXIT_USAGE, FAIL, INFO,
                     PASS, SERVICE_USER, SILENT_DBFS, SKIP, STATUSES, THROTTLE_BITS,
                     UNDER_VOLTAGE_NOW, UNIT, WARN, Result, failed, info, passed, skipped,
                     warned)
from .runner import (CHECKS, NAMES, TablePrinter, build_parser, main, run, run_check,
                     selected, summary)
from .service import (check_disk, check_memory, check_power, check_service,
                      check_temperature)
from .system import (check_audio, check_board, check_echo, check_gpio_factory, check_install,
                     check_os)

__all__ = [
    "BUTTON_WAIT_S", "CHECKS", "CLIP_SHARE", "EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "FAIL",
    "INFO", "NAMES", "PASS", "SERVICE_USER", "SILENT_DBFS", "SKIP", "STATUSES",
    "THROTTLE_BITS", "UNDER_VOLTAGE_NOW", "UNIT", "WARN", "Context", "HandshakeError",
    "Result", "TablePrinter", "build_parser", "check_audio", "check_board", "check_button", "check_config", "check_disk",
    "check_dns", "check_echo", "check_echo_path", "check_gpio_factory", "check_handshake", "check_install", "check_key", "check_leds", "check_memory",
    "check_mic_device", "check_mic_level", "check_os", "check_power", "check_service", "check_speaker",
    "check_tcp", "check_temperature", "check_tls", "failed", "handshake", "info", "levels",
    "main", "passed", "record", "run", "run_check", "selected", "skipped", "summary",
    "warned",
]
