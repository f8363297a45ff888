"""systemd integration: READY, WATCHDOG and STOPPING notifications (``Type=notify``).

Speaks the sd_notify datagram protocol directly (a few lines, no extra dependency). The
watchdog is fed only while the appliance reports itself healthy, so a hung thread makes
systemd restart the service instead of leaving a silent kiosk.
"""
from __future__ import annotations

import logging
import socket
import time
from typing import Mapping, Optional

log = logging.getLogger("soca.service")


class Notifier:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.address: Optional[str] = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        # Feed at half the watchdog period, as sd_watchdog_enabled(3) recommends.
        self.interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> bool:
        if self.address is None:
            return False
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]          # abstract namespace
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(address)
                sock.sendall(message.encode())
            return True
        except OSError as exc:
            log.warning("systemd notification %r failed: %s", message.split("=")[0], exc)
            return False

    def ready(self) -> None:
        self.send("READY=1\nSTATUS=running")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def tick(self, healthy: bool, status: str = "") -> None:
        """Call often (about once a second): feeds the watchdog when due and healthy."""
        if self.interval is None or not healthy:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.interval:
            self._last_ping = now
            self.send("WATCHDOG=1" + (f"\nSTATUS={status}" if status else ""))
