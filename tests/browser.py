"""Real headless Chromium for tests: Debian's /usr/bin/chromium driven by selenium through
/usr/bin/chromedriver, a fake microphone from a WAV file, and a page served from memory on
127.0.0.1 (a secure context, so getUserMedia works without TLS).

Without Chromium, chromedriver or selenium, :func:`require_chromium` skips the test and says
which is missing (``.ci/run`` installs all three, so CI runs these tests).
"""
from __future__ import annotations

import contextlib
import http.server
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
VENDOR_CLIENT = Path(__file__).resolve().parent / "data" / "vendor_client"
# The placeholders of the vendor page's example that a test fills in.
PLACEHOLDERS = ('"wss://api.soca.ai/voice-ws"', '"<private_key>"', '"<session_id>"',
                '"<agent_id>"')


def require_chromium() -> None:
    """Skip (with the reason) when a real browser cannot be run here."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.skip(f"{path} is missing (Debian packages chromium and chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")


def vendor_client_module(url: str, key: str, session_id: str, agent_id: str) -> str:
    """glue.js + the page's example with its URL, key, session and agent filled in."""
    example = (VENDOR_CLIENT / "complete-example.js").read_text(encoding="utf-8")
    for placeholder, value in zip(PLACEHOLDERS, (url, key, session_id, agent_id)):
        assert example.count(placeholder) == 1, placeholder
        example = example.replace(placeholder, '"' + value + '"')
    glue = (VENDOR_CLIENT / "glue.js").read_text(encoding="utf-8")
    return glue + "\n" + example


VENDOR_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>vendor client</title><link rel="icon" href="data:,">
<script src="instrument.js"></script>
<script>
  // The start trigger: the test calls this; it resolves once the example's module has run
  // to its end (microphone open, ScriptProcessor connected), or rejects with its error.
  window.startVendorClient = () => import("./client.js").then(() => "started",
                                                              (err) => "failed: " + err);
</script></head><body>vendor client test page</body></html>
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, tuple[str, bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        entry = self.files.get(self.path.split("?", 1)[0])
        if entry is None:
            self.send_error(404)
            return
        ctype, body = entry
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@contextlib.contextmanager
def serve_files(files: dict[str, tuple[str, bytes]]) -> Iterator[str]:
    """Serve ``{path: (content type, body)}`` on 127.0.0.1; yield the base URL."""
    handler = type("Handler", (_Handler,), {"files": dict(files)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def vendor_page_files(module_js: str) -> dict[str, tuple[str, bytes]]:
    js = "text/javascript; charset=utf-8"
    return {"/": ("text/html; charset=utf-8", VENDOR_PAGE.encode()),
            "/instrument.js": (js, (VENDOR_CLIENT / "instrument.js").read_bytes()),
            "/client.js": (js, module_js.encode())}


@contextlib.contextmanager
def chromium(profile_dir: Path, fake_mic: Path) -> Iterator[Any]:
    """A headless Chromium (selenium WebDriver) whose microphone plays ``fake_mic`` (a WAV,
    looped), whose autoplay needs no gesture, with a fresh profile and no background
    networking (this machine's network is closed)."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile_dir}",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={fake_mic}",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which(CHROMEDRIVER) or CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_script_timeout(20)
        yield driver
    finally:
        driver.quit()
