"""The kiosk screen in a real headless Chromium at 800x480, driven by the real appliance
talking to the simulator on 127.0.0.1: the conversation as it happens, the on-screen stop
against the GPIO button, mute, the offline, error and not-responding banners, recovery
without a reload. Screenshots go to the test's tmp dir (and to $SOCA_SCREENSHOTS)."""
from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from conftest import ASSETS, wait_for
from soca_appliance import config
from web_helpers import chromium_driver, screenshot

KEY = "browser-test-key"
BUTTON = 17

# Records every state of each user bubble (partial or final, its text and its style),
# so a partial that lives 300 ms is seen even when the test looks later.
OBSERVER = """
window.__seen = []; window.__n = 0; window.__loaded = true;
const conv = document.getElementById('conv');
new MutationObserver(() => {
  for (const el of conv.querySelectorAll('.msg.user')) {
    if (!el.dataset.t) el.dataset.t = String(++window.__n);
    const text = el.querySelector('.text');
    const style = getComputedStyle(text);
    const rec = [el.dataset.t, el.classList.contains('partial'), text.textContent,
                 style.fontStyle, style.color].join('|');
    if (!window.__seen.includes(rec)) window.__seen.push(rec);
  }
}).observe(conv, {subtree: true, childList: true, characterData: true, attributes: true});
"""


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def __call__(self, record: dict[str, Any]) -> None:
        with self.cond:
            self.events.append(record)
            self.cond.notify_all()

    def find(self, pred: Callable[[dict], bool], start: int = 0) -> list[dict[str, Any]]:
        with self.cond:
            return [e for e in self.events[start:] if pred(e)]

    def mark(self) -> int:
        with self.cond:
            return len(self.events)


def ev(name: str, **fields: Any) -> Callable[[dict], bool]:
    return lambda e: e["event"] == name and all(e.get(k) == v for k, v in fields.items())


class Rig:
    """Simulator + appliance (mock GPIO, the demo WAV as mic) + its web server."""

    def __init__(self, tmp_path: Path, lang: str = "en", sim_key: str = KEY) -> None:
        from soca_appliance.appliance import Appliance
        from soca_appliance.events import EventLog, Redactor
        from soca_appliance.simulator import Simulator
        from soca_appliance.wavsource import WavSource
        from soca_appliance.web import LevelTap, serve

        self.tmp_path, self.lang, self.sim_key = tmp_path, lang, sim_key
        self.sim: Optional[Any] = Simulator(expected_key=sim_key)
        self.sim.start()
        self.sim_port = int(self.sim.url.rsplit(":", 1)[1].split("/")[0])
        self.cfg = config.load(Path(os.devnull), env={}, overrides={
            "url": self.sim.url, "agent_id": "test-agent", "lang": lang, "gpio": "mock",
            "input": str(ASSETS / f"demo-{lang}.wav"), "duplex": "full",
            "button_pin": BUTTON, "control_socket": "", "backoff_initial": 0.2,
            "backoff_max": 0.5, "auth_retry": 1.0, "web.listen": "127.0.0.1:0"})
        self.rec = Recorder()
        self.events = EventLog("json", stream=io.StringIO(), redactor=Redactor([KEY]))
        self.events.subscribe(self.rec)
        self.source = LevelTap(WavSource(self.cfg.input))
        self.app = Appliance(self.cfg, self.events, self.source, KEY)
        self._serve = lambda port: serve("127.0.0.1", port, "", lang, "test", self.app,
                                         self.events, self.source.meter, private_key=KEY)
        self.web = self._serve(0)
        assert self.web is not None
        self.port = self.web.port
        self.started = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        self.started = True
        self.app.start()

    def wait(self, pred: Callable[[dict], bool], timeout: float, start: int = 0,
             what: str = "event") -> dict[str, Any]:
        return wait_for(lambda: (self.rec.find(pred, start) or [None])[0], timeout, what)

    def restart_web(self) -> None:
        assert self.web is not None
        self.web.close()
        self.web = None

    def web_back(self) -> None:
        self.web = self._serve(self.port)
        assert self.web is not None, "the port could not be bound again"

    def close(self) -> None:
        if self.started:
            self.app.shutdown()
        if self.web is not None:
            self.web.close()
        if self.sim is not None:
            self.sim.stop()


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    yield from chromium_driver()


@pytest.fixture
def make_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Rig]]:
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    rigs: list[Rig] = []

    def make(**kw: Any) -> Rig:
        rigs.append(Rig(tmp_path, **kw))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def open_page(driver: Any, rig: Rig) -> None:
    driver.get(rig.url)
    wait_for(lambda: driver.execute_script("return document.getElementById('state')"
                                           ".textContent.length > 0"), 5, "the page to draw")
    driver.execute_script(OBSERVER)


def js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def banner(driver: Any) -> tuple[str, str]:
    """(kind, text) of the visible banner, ("", "") when hidden."""
    return tuple(js(driver, "const b = document.getElementById('banner');"
                            "return b.hidden ? ['', ''] : [b.dataset.kind, b.innerText];"))


def agent_sentences(driver: Any) -> list[str]:
    return js(driver, "return [...document.querySelectorAll('.msg.agent .sentence')]"
                      ".map(s => s.textContent.trim());")


# --- the conversation ---------------------------------------------------------------------

def test_conversation_partial_then_final_then_sentences_in_order(
        driver: Any, make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    rig = make_rig()
    open_page(driver, rig)
    rig.start()
    # a picture of a partial transcript, if one is on screen while we look (not asserted:
    # the observer below is the record)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not rig.rec.find(ev("transcript", final=True)):
        if js(driver, "return !!document.querySelector('.msg.user.partial')"):
            screenshot(driver, tmp_path, "partial-en")
            break
        time.sleep(0.01)
    final = rig.wait(ev("transcript", final=True), 20, what="the final transcript")
    partials = [e["text"] for e in rig.rec.find(ev("transcript", final=False))]
    assert partials, "the simulator sent no partial transcript"
    wait_for(lambda: len(rig.rec.find(ev("sentence.play"))) >= 3, 20,
             "the first answer's three sentences")
    played = [e["text"] for e in rig.rec.find(ev("sentence.play"))][:3]
    wait_for(lambda: agent_sentences(driver)[:3] == played, 5,
             f"the screen to show {played} (shows {agent_sentences(driver)})")
    shot = screenshot(driver, tmp_path, "conversation-en")
    assert shot.stat().st_size > 5000

    # The user's bubble: grey italic partials, then the same bubble, final and upright.
    seen = [rec.split("|") for rec in js(driver, "return window.__seen")]
    first = [r for r in seen if r[0] == "1"]
    assert first, f"no user bubble seen: {seen}"
    shown_partials = [r for r in first if r[1] == "true"]
    assert shown_partials, f"the partial was never shown: {first}"
    assert all(r[2] in partials and r[3] == "italic" for r in shown_partials), shown_partials
    grey = shown_partials[0][4]
    assert final_style(first, final["text"]) != "italic"
    assert grey.startswith("rgb(") and _is_grey(grey), grey
    last = first[-1]
    assert (last[1], last[2]) == ("false", final["text"])
    assert js(driver, "return document.querySelectorAll('.msg.user').length") >= 1
    assert js(driver, "return window.__loaded === true")            # never reloaded
    check_layout(driver)
    # no script error, no blocked resource (the page's Content-Security-Policy included)
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == [], severe


def final_style(records: list[list[str]], text: str) -> str:
    finals = [r for r in records if r[1] == "false" and r[2] == text]
    assert finals, f"the final transcript never replaced the partial: {records}"
    return finals[-1][3]


def _is_grey(color: str) -> bool:
    r, g, b = (int(float(v)) for v in color[4:-1].split(",")[:3])
    return max(r, g, b) - min(r, g, b) < 30 and 100 <= r <= 200


def check_layout(driver: Any) -> None:
    """800x480: nothing scrolls sideways, the buttons are big and on screen, type is large."""
    size = js(driver, "return [innerWidth, innerHeight, document.documentElement.scrollWidth,"
                      " document.documentElement.scrollHeight]")
    assert size[:2] == [800, 480]
    assert size[2] <= 800 and size[3] <= 480, size
    for name in ("stop", "mute"):
        r = js(driver, f"const r = document.getElementById('{name}').getBoundingClientRect();"
                       "return [r.left, r.top, r.right, r.bottom, r.height];")
        assert r[0] >= 0 and r[1] >= 0 and r[2] <= 800 and r[3] <= 480, (name, r)
        assert r[4] >= 80, (name, r)
    stop_w = js(driver, "return document.getElementById('stop').offsetWidth")
    assert stop_w >= 380
    sizes = js(driver, "return [...document.querySelectorAll('#conv .text, #state, #stop')]"
                       ".map(e => parseFloat(getComputedStyle(e).fontSize));")
    assert sizes and min(sizes) >= 28, sizes


# --- stop: the screen's button and the GPIO button ---------------------------------------

def _press_and_trace(rig: Rig, press: Callable[[], None], after: int) -> list[tuple]:
    play = rig.wait(ev("sentence.play"), 30, after, "a sentence to play")
    wait_for(lambda: rig.app.player.busy, 2, "the player to be busy")
    mark = rig.rec.mark()
    barges_before = rig.sim.stats()["barges_received"]
    press()
    rig.wait(ev("barge", seq=play["seq"]), 3, mark, "the local barge")
    rig.wait(ev("sentence.stop", seq=play["seq"], sentence_id=play["sentence_id"]), 3, mark,
             "the playing sentence to stop")
    wait_for(lambda: not rig.app.player.busy, 2, "the player to stop")
    wait_for(lambda: rig.sim.stats()["barges_received"] == barges_before + 1, 5,
             "the simulator to get the barge")
    wait_for(lambda: rig.rec.find(ev("state", state="ready"), mark), 3, "the ready state")
    trace = []
    for e in rig.rec.find(lambda e: e["event"] in ("barge", "sentence.stop", "state"), mark):
        if e["event"] == "barge" and e.get("source") == "server":
            break                                   # the server's acknowledgement follows
        trace.append((e["event"], e.get("reason"), e.get("source"), e.get("state")))
    return trace


def test_screen_stop_interrupts_exactly_like_the_button(
        driver: Any, make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    rig = make_rig()
    open_page(driver, rig)
    rig.start()

    def click() -> None:
        driver.find_element("id", "stop").click()

    screen = _press_and_trace(rig, click, 0)
    screenshot(driver, tmp_path, "stopped-en")
    assert ("barge", None, "screen", None) in screen
    pin = rig.app.panel.button.pin

    def gpio() -> None:
        pin.drive_low()
        pin.drive_high()

    after = rig.rec.mark()
    button = _press_and_trace(rig, gpio, after)
    assert ("barge", None, "button", None) in button
    # The same stops and the same barge in the same order, only the source differs, and
    # both end ready. (A state the player's own thread reports while it stops, such as
    # "thinking" between two sentence.stop lines, depends on thread timing, not on the press.)
    def effects(trace: list[tuple]) -> list[tuple]:
        return [(n, r) for n, r, _s, _st in trace if n != "state"]

    assert effects(screen) == effects(button)
    assert [st for n, _r, _s, st in screen if n == "state"][-1] == "ready"
    assert [st for n, _r, _s, st in button if n == "state"][-1] == "ready"
    assert rig.app.counters.barges_button == 2
    assert js(driver, "return document.querySelectorAll('.msg.agent.interrupted').length") >= 1


# --- mute, banners, recovery ----------------------------------------------------------------

def test_offline_banner_comes_and_goes_with_the_server(
        driver: Any, make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    rig = make_rig(lang="id")
    open_page(driver, rig)
    rig.start()
    wait_for(lambda: rig.app.link.streaming, 10, "the appliance to connect")
    wait_for(lambda: banner(driver) == ("", ""), 5, "no banner while connected")
    assert js(driver, "return document.getElementById('stop').textContent") == "Berhenti"

    assert rig.sim is not None
    rig.sim.stop()
    kind, text = wait_for(lambda: banner(driver)[0] == "offline" and banner(driver), 10,
                          "the offline banner")
    assert "Tidak terhubung" in text
    screenshot(driver, tmp_path, "offline-id")
    from soca_appliance.simulator import Simulator
    rig.sim = Simulator(port=rig.sim_port, expected_key=KEY)
    rig.sim.start()
    wait_for(lambda: banner(driver) == ("", ""), 15, "the banner to clear on reconnect")
    assert rig.app.link.streaming
    assert js(driver, "return window.__loaded === true")


def test_error_banner_names_the_fault(driver: Any, make_rig: Callable[..., Rig],
                                      tmp_path: Path) -> None:
    rig = make_rig(sim_key="another-key")           # the server refuses our key
    open_page(driver, rig)
    rig.start()
    wait_for(lambda: banner(driver)[0] == "error", 10, "the error banner")
    # the fault's name follows from /api/status a moment later
    wait_for(lambda: "refused this kiosk" in banner(driver)[1], 3,
             f"the banner to name the fault (shows {banner(driver)})")
    assert js(driver, "return document.getElementById('state').dataset.state") == "error"
    screenshot(driver, tmp_path, "error-en")
    assert KEY not in driver.page_source


def test_mute_toggle_and_recovery_after_a_restart_without_reload(
        driver: Any, make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    rig = make_rig()
    open_page(driver, rig)
    rig.start()
    wait_for(lambda: rig.app.link.streaming, 10, "the appliance to connect")
    mark = rig.rec.mark()
    driver.find_element("id", "mute").click()
    rig.wait(ev("mute", muted=True), 3, mark, "mute from the screen")
    assert rig.app.muted
    wait_for(lambda: js(driver, "return !document.getElementById('muted-badge').hidden"), 3,
             "the muted badge")
    assert js(driver, "return document.getElementById('muted-badge').innerText") == "Mic off"
    assert js(driver, "return document.getElementById('mute').getAttribute('aria-pressed')") \
        == "true"
    screenshot(driver, tmp_path, "muted-en")

    # The appliance's server goes away (a restart): the page says so, then recovers by
    # itself, with the state it missed, and without reloading.
    rig.restart_web()
    wait_for(lambda: banner(driver)[0] == "unreachable", 6, "the not-responding banner")
    rig.app.set_muted(False)                       # changed while the page was away
    screenshot(driver, tmp_path, "unreachable-en")
    rig.web_back()
    wait_for(lambda: banner(driver) == ("", ""), 10, "the page to reconnect")
    wait_for(lambda: js(driver, "return document.getElementById('muted-badge').hidden"), 3,
             "the snapshot's unmuted state")
    assert js(driver, "return window.__loaded === true")
    driver.find_element("id", "mute").click()
    wait_for(lambda: rig.app.muted, 3, "mute again through the recovered page")
    check_layout(driver)
