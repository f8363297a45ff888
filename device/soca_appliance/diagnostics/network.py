"""Checks: the network path to the voice agent (DNS, TCP, TLS) and a real ``start``
handshake up to ``stt.ready``."""
from __future__ import annotations

import contextlib
import socket
import ssl
import time
import uuid
from typing import Any

from .context import Context
from .result import Result, describe, failed, passed, skipped, warned

def check_dns(ctx: Context) -> Result:
    name = "net.dns"
    _scheme, host, port = ctx.endpoint()
    try:
        infos = ctx.resolve()
    except OSError as exc:
        return failed(name, f"{host}: {exc}", "check the network (ip addr; ping 1.1.1.1) and "
                      "the DNS server (/etc/resolv.conf)", ms=round(ctx._dns_ms, 1))
    addresses = sorted({info[4][0] for info in infos})
    return passed(name, f"{host} -> {', '.join(addresses[:4])} in {ctx._dns_ms:.0f} ms",
                  ms=round(ctx._dns_ms, 1), addresses=addresses)


def _connect(ctx: Context) -> tuple[socket.socket, Any, float]:
    """A TCP connection to the first address that answers; (socket, address, ms)."""
    errors = []
    for family, kind, proto, _canon, address in ctx.resolve():
        sock = socket.socket(family, kind, proto)
        sock.settimeout(ctx.cfg.connect_timeout)
        start = time.monotonic()
        try:
            sock.connect(address)
            return sock, address, (time.monotonic() - start) * 1000.0
        except OSError as exc:
            sock.close()
            errors.append(f"{address[0]}: {describe(exc)}")
    raise OSError("; ".join(errors) or "no address")


def check_tcp(ctx: Context) -> Result:
    name = "net.tcp"
    _scheme, host, port = ctx.endpoint()
    try:
        ctx.resolve()
    except OSError:
        return skipped(name, "needs DNS (see net.dns)")
    try:
        sock, address, ms = _connect(ctx)
    except OSError as exc:
        return failed(name, f"{host}:{port}: {exc}", "a firewall or proxy may block the port; "
                      "is the url's host and port right?")
    sock.close()
    return passed(name, f"{address[0]}:{port} connected in {ms:.0f} ms", ms=round(ms, 1),
                  address=address[0], port=port)


def check_tls(ctx: Context) -> Result:
    name = "net.tls"
    scheme, host, port = ctx.endpoint()
    if scheme != "wss":
        return skipped(name, "ws:// is not encrypted")
    try:
        ctx.resolve()
    except OSError:
        return skipped(name, "needs DNS (see net.dns)")
    context = ssl.create_default_context(cafile=ctx.cfg.ca_file or None)
    try:
        sock, _address, _ms = _connect(ctx)
    except OSError as exc:
        return skipped(name, f"needs a TCP connection (see net.tcp): {exc}")
    start = time.monotonic()
    try:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            ms = (time.monotonic() - start) * 1000.0
            cert = tls.getpeercert() or {}
            version = tls.version() or "?"
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        return failed(name, f"certificate not trusted: {exc.verify_message or exc}",
                      "is the clock right ('date'; a Pi has no RTC until NTP syncs)? for a "
                      "private CA set ca_file")
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        return failed(name, f"TLS handshake failed: {describe(exc)}",
                      "a proxy may intercept TLS; check the url")
    figures: dict[str, Any] = dict(ms=round(ms, 1), version=version)
    detail = f"{version} handshake in {ms:.0f} ms"
    expires = cert.get("notAfter")
    if expires:
        days = (ssl.cert_time_to_seconds(str(expires)) - time.time()) / 86400.0
        figures["cert_days_left"] = round(days, 1)
        detail += f"; certificate valid {days:.0f} more days"
        if days < 14:
            return warned(name, detail, "the server certificate expires soon: tell the "
                          "endpoint's operator", **figures)
    return passed(name, detail, **figures)


def handshake(ctx: Context) -> dict[str, Any]:
    """Send ``start`` and wait for ready and stt.ready; figures in ms. Raises on refusal."""
    import websocket
    from .. import protocol
    cfg = ctx.cfg
    sslopt: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED}
    if cfg.ca_file:
        sslopt["ca_certs"] = cfg.ca_file
    start = time.monotonic()
    ws = websocket.create_connection(cfg.url, timeout=cfg.connect_timeout, sslopt=sslopt,
                                     skip_utf8_validation=True)
    out: dict[str, Any] = {"connect_ms": (time.monotonic() - start) * 1000.0}
    try:
        session_id = cfg.session_id or str(uuid.uuid4())
        assert ctx.key is not None
        ws.send(protocol.start_message(private_key=ctx.key, session_id=session_id,
                                       agent_id=cfg.agent_id, lang=cfg.lang,
                                       key_field=cfg.key_field))
        sent = time.monotonic()
        deadline = sent + cfg.connect_timeout
        while True:
            ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                opcode, frame = ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                raise HandshakeError(f"no stt.ready within {cfg.connect_timeout:g} s") from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else 1005
                reason = frame.data[2:].decode("utf-8", "replace")
                raise HandshakeError(f"server closed during start ({code} {reason})".strip())
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            message = protocol.parse(frame.data)
            now_ms = (time.monotonic() - sent) * 1000.0
            if isinstance(message, protocol.ServerError):
                raise HandshakeError(f"server error: {message.message}", auth=message.is_auth)
            if isinstance(message, protocol.Ready):
                out["ready_ms"] = now_ms
                out["session_id"] = message.session_id or session_id
            elif isinstance(message, protocol.SttReady):
                out["stt_ready_ms"] = now_ms
                out.setdefault("session_id", session_id)
                return out
    finally:
        with contextlib.suppress(Exception):
            ws.close(timeout=1.0)


class HandshakeError(RuntimeError):
    def __init__(self, message: str, auth: bool = False) -> None:
        super().__init__(message)
        self.auth = auth


def check_handshake(ctx: Context) -> Result:
    name = "net.handshake"
    import websocket
    if ctx.key is None:
        return skipped(name, "no private key (see key)")
    if not ctx.cfg.agent_id:
        return failed(name, "agent_id is not set", "set agent_id in the config")
    try:
        ctx.resolve()
    except OSError:
        return skipped(name, "needs DNS (see net.dns)")
    try:
        figures = handshake(ctx)
    except HandshakeError as exc:
        hint = (f"the key from {ctx.key_source} is wrong or expired: put the right one in "
                f"{ctx.cfg.private_key_file} (install.sh --key-file FILE)" if exc.auth
                else "check agent_id and lang; the server said why")
        return failed(name, str(exc), hint)
    except websocket.WebSocketBadStatusException as exc:
        return failed(name, f"server refused the upgrade: HTTP {exc.status_code}",
                      "check the url's path (/voice-ws or /v1/voice-ws)")
    except Exception as exc:  # noqa: BLE001 - timeouts, resets, TLS, bad messages
        return failed(name, describe(exc), "see net.tcp and net.tls")
    figures = {k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}
    return passed(name, f"start accepted: ready in {figures.get('ready_ms', '?')} ms, "
                  f"stt.ready in {figures['stt_ready_ms']} ms (connect "
                  f"{figures['connect_ms']} ms)", **figures)

