"""Who may use the kiosk's web server, and how much a request may cost.

:func:`token_offered` finds the ``[web] token`` in ``Authorization: Bearer``, the
``soca_token`` cookie or a ``?token=`` query, compared in constant time. :func:`host_ok`
refuses a ``Host`` that is a name (a DNS-rebinding page) for clients without the token.
:class:`CappedReader` is a connection's reader that refuses more than :data:`MAX_HEAD`
bytes or a request that has not arrived whole within :data:`HEAD_DEADLINE` seconds.
"""
from __future__ import annotations

import hmac
import http.client
import ipaddress
import time
from http.cookies import CookieError, SimpleCookie
from typing import Any

MAX_HEAD = 16 * 1024            # request line + headers + body of one connection
READ_TIMEOUT = 5.0              # one read or write
HEAD_DEADLINE = 10.0            # the whole request, however slowly it trickles in
COOKIE = "soca_token"


def token_offered(token: str, headers: Any, query: dict[str, list[str]]) -> bool:
    offered: list[str] = []
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        offered.append(auth[7:].strip())
    cookie = cookie_value(headers.get("Cookie", ""))
    if cookie:
        offered.append(cookie)
    offered += query.get("token", [])[:1]
    good = token.encode("utf-8")
    # every offer is compared (a list, not any()): timing tells nothing about which matched
    return True in [hmac.compare_digest(t.encode("utf-8", "replace"), good) for t in offered]


class HeadTooLarge(http.client.LineTooLong):
    """The client sent more than :data:`MAX_HEAD` bytes."""


class CappedReader:
    """The connection's reader: at most ``left`` bytes in all, all before ``deadline``
    (so 16 slow clients cannot hold every connection slot)."""

    def __init__(self, raw: Any, sock: Any, left: int = 0, deadline: float = 0.0) -> None:
        self.raw, self.sock = raw, sock
        self.left = left or MAX_HEAD
        self.deadline = deadline or time.monotonic() + HEAD_DEADLINE

    def _time(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not complete in time")
        self.sock.settimeout(min(READ_TIMEOUT, remaining))

    def readline(self, size: int = -1) -> bytes:
        self._time()
        if self.left <= 0:
            raise HeadTooLarge(f"more than {MAX_HEAD} bytes")
        want = self.left + 1 if size is None or size < 0 else min(size, self.left + 1)
        line = self.raw.readline(want)
        self.left -= len(line)
        if self.left < 0:
            raise HeadTooLarge(f"more than {MAX_HEAD} bytes")
        return line

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self.left:
            raise HeadTooLarge(f"more than {MAX_HEAD} bytes")
        self._time()
        data = self.raw.read(size)
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.raw.close()


def cookie_value(header: str) -> str:
    try:
        jar = SimpleCookie(header)
    except CookieError:
        return ""
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else ""


def is_loopback(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


def host_ok(host: str) -> bool:
    """``Host`` names the kiosk by address or as localhost (not a rebinding domain)."""
    name = host.strip()
    if not name:
        return True                 # HTTP/1.0 tools omit it; browsers always send one
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False
