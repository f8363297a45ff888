"""Helpers for the kiosk screen tests: raw HTTP on 127.0.0.1, an SSE reader, the shared
headless Chromium of tests/browser.py at exactly 800x480, and screenshots saved under the
test's tmp dir and, with ``SOCA_SCREENSHOTS=dir``, there too."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

WIDTH, HEIGHT = 800, 480


# --- HTTP ---------------------------------------------------------------------------------

def request(port: int, method: str, path: str, body: Optional[bytes] = None,
            headers: Optional[dict[str, str]] = None, host: str = "127.0.0.1",
            timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def post_json(port: int, path: str, obj: Any, **headers: str) -> tuple[int, Any]:
    status, _, body = request(port, "POST", path, json.dumps(obj).encode(),
                              {"Content-Type": "application/json", **headers})
    try:
        return status, json.loads(body) if body.strip() else None
    except ValueError:
        return status, body.decode("utf-8", "replace")


def raw(port: int, data: bytes, host: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """Send bytes as they are, return everything the server answers until it closes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass                        # the server may answer and close mid-send
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(reply: bytes) -> int:
    line = reply.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[1].isdigit() else 0


class SseStream:
    """Reads ``/events`` over a raw socket and returns parsed ``(name, data)`` events."""

    def __init__(self, port: int, path: str = "/events", headers: Optional[dict] = None,
                 host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in (headers or {}).items()) + "\r\n"
        self.sock.sendall(head.encode())
        self.fp = self.sock.makefile("rb")
        status_line = self.fp.readline().decode()
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        while True:
            line = self.fp.readline().decode().rstrip("\r\n")
            if not line:
                break
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.retry: Optional[int] = None

    def next(self, timeout: float = 5.0) -> Optional[tuple[str, Any]]:
        """The next event; None at the end of the stream. Fails after ``timeout``."""
        self.sock.settimeout(timeout)
        name, data = "message", []
        while True:
            try:
                line = self.fp.readline()
            except socket.timeout:
                pytest.fail(f"no server-sent event within {timeout:g} s")
            except ConnectionResetError:
                return None
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if text == "":
                if data:
                    return name, json.loads("\n".join(data))
                name = "message"
                continue
            field, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            elif field == "retry":
                self.retry = int(value)

    def until(self, pred: Any, timeout: float = 5.0, what: str = "event") -> list[Any]:
        """Events (as data objects) up to and including the first that matches ``pred``."""
        seen: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"timed out waiting for {what}; saw {seen}")
            item = self.next(left)
            if item is None:
                pytest.fail(f"stream ended waiting for {what}; saw {seen}")
            seen.append(item)
            if pred(item):
                return seen

    def close(self) -> None:
        self.fp.close()
        self.sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def non_loopback_address() -> Optional[str]:
    """This machine's address on its default route (no packet is sent), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
            addr = sock.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


# --- a stand-in appliance and a server for it ---------------------------------------------

TOKEN = "t0ken-" + "x" * 20
KEY = "private-key-never-shown-0123456789"


class FakeApp:
    """Records calls on the button's code path; status() like Appliance.status()."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.muted = False
        self.state = "ready"
        self.faults: list[str] = []
        self.counters = {"frames_captured": 500, "frames_sent": 480,
                         "frames_dropped_not_ready": 7, "frames_dropped_full": 3,
                         "sentences_played": 4, "sentences_dropped": 1, "connects": 3,
                         "connect_attempts": 5, "barges_button": 2, "barges_server": 1}

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "connected": self.state != "connecting",
                "session_id": "s1", "seq": 2, "muted": self.muted, "faults": self.faults,
                "counters": dict(self.counters)}

    def press(self, source: str = "button") -> str:
        self.calls.append(("press", source))
        return "barged"

    def set_muted(self, muted: bool) -> None:
        self.calls.append(("set_muted", muted))
        self.muted = muted


def make_server(app: Any, events: Any, **kw: Any) -> Any:
    """A started WebServer for ``app`` on 127.0.0.1 (port 0), fed by ``events``."""
    from soca_appliance.web import WebServer, WebSettings
    from soca_appliance.web.feed import Feed
    meter = kw.pop("meter", None)
    trusted = kw.pop("trusted", None)
    feed = Feed()
    feed.attach(events)
    settings = WebSettings(**{"host": "127.0.0.1", "port": 0, "lang": "en",
                              "version": "9.9.9", **kw})
    server = (WebServer(settings, app, feed, meter) if trusted is None
              else WebServer(settings, app, feed, meter, trusted=trusted))
    server.start()
    return server


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """/metrics parsed by prometheus_client's own parser: {(name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    status, headers, body = request(port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


# --- Chromium (tests/browser.py's, shared with the vendor-client tests) ------------------

def chromium_driver() -> Iterator[Any]:
    """browser.py's headless Chromium with its page viewport at exactly 800x480 (a kiosk
    shows no browser chrome); skips with the reason when there is no browser here."""
    from browser import chromium, require_chromium

    require_chromium()
    profile = Path(tempfile.mkdtemp(prefix="soca-chromium-"))
    fake_mic = Path(__file__).resolve().parent.parent / "device" / "soca_appliance" / \
        "assets" / "chime.wav"                  # the screen never opens the microphone
    try:
        with chromium(profile, fake_mic) as driver:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
            driver.set_script_timeout(10)
            yield driver
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    target = os.environ.get("SOCA_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path
