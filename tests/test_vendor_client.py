"""The vendor's own browser client as a test peer of the simulator.

The page's "Complete Example" (tests/data/vendor_client/complete-example.js, a verbatim
copy; glue.js adds only what the page leaves undefined) runs in a real headless Chromium
with a fake microphone playing the bundled Indonesian espeak-ng recording (the example
starts with ``lang: "id"``). Instrumentation (instrument.js) only observes: the messages the
page got and sent, every ``atob`` call, every ``Audio.play()`` and its promise, uncaught
errors; the example's own ``console.log`` lines come through the driver.

Findings pinned here about the page's client (see README, "The simulator"):
- it sends 4096-sample (8192-byte) frames, which the simulator must accept;
- with base64 TEXT cut anywhere (``--chunking text``) its join-then-``atob`` decodes every
  sentence and every ``play()`` resolves;
- with each slice encoded on its own (``--chunking slices``) a sentence whose inner slices
  are padded has ``=`` mid-string: ``atob`` throws ``InvalidCharacterError`` inside
  ``onmessage``, the sentence is never played and its chunks stay in ``pendingChunks``;
- it never registers players in ``audioPlayers``, so a barge stops nothing.
"""
from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from soca_appliance.simulator import Simulator, mp3_duration, split_chunks

from browser import VENDOR_CLIENT, chromium, serve_files, vendor_client_module, vendor_page_files
from conftest import ASSETS, wait_for

KEY = "sk-vendor-client-test"
AGENT = "agent-vendor-test"
MIC = ASSETS / "demo-id.wav"           # espeak-ng, 16 kHz mono: "Halo, bagaimana cuaca ..."
MANIFEST = json.loads((ASSETS / "manifest.json").read_text(encoding="utf-8"))
TURN = MANIFEST["id"][0]
SEED_PAGE = Path("/work/shared/seeds/voice-stream-websocket.md")

READ_RECORD = """
const r = window.__soca;
return {received: r.received, sentText: r.sentText, sentBinary: r.sentBinary, atob: r.atob,
        plays: r.plays, afterBarge: r.afterBarge, errors: r.errors,
        pending: window.__socaPending ? window.__socaPending() : null};
"""


def fnv1a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


class VendorClient:
    """The page's client in Chromium, talking to a simulator; read what it saw."""

    def __init__(self, driver: Any, sim: Simulator, session_id: str) -> None:
        self.driver = driver
        self.sim = sim
        self.session_id = session_id

    def record(self) -> dict[str, Any]:
        return self.driver.execute_script(READ_RECORD)

    def received(self) -> list[dict[str, Any]]:
        return self.record()["received"]

    def console(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser")]

    def wait_final_answer(self, seq: int = 1) -> dict[str, Any]:
        def got() -> Any:
            rec = self.record()
            done = [m for m in rec["received"]
                    if m.get("stepType") == "final_answer" and m.get("seq") == seq]
            return rec if done else None
        return wait_for(got, 25, f"the page to receive final_answer of seq {seq}")


@pytest.fixture
def vendor_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VendorClient]:
    chunking = request.param
    session_id = str(uuid.uuid4())
    with Simulator(expected_key=KEY, chunking=chunking) as sim, \
            chromium(tmp_path / "profile", MIC) as driver:
        module = vendor_client_module(sim.url, KEY, session_id, AGENT)
        with serve_files(vendor_page_files(module)) as base:
            driver.get(base + "/")
            started = driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "window.startVendorClient().then(done);")
            assert started == "started", started
            yield VendorClient(driver, sim, session_id)


def sentence_files() -> list[bytes]:
    return [(ASSETS / s["file"]).read_bytes() for s in TURN["agent"]]


def check_conversation(client: VendorClient, rec: dict[str, Any]) -> None:
    """What the page got and sent, whatever the chunking."""
    got = rec["received"]
    assert got[0] == {"type": "ready", "session_id": client.session_id}
    assert got[1] == {"type": "stt.ready"}
    partials = [m["text"] for m in got if m.get("type") == "stt.partial"]
    finals = [m["text"] for m in got if m.get("type") == "stt.final" and m["text"]]
    assert partials and all(TURN["you"].startswith(p) for p in partials)
    assert finals[0] == TURN["you"]
    sentences: dict[int, list[dict[str, Any]]] = {}
    for m in got:
        if m.get("stepType") == "sentence" and m.get("seq") == 1:
            sentences.setdefault(m["sentenceId"], []).append(m)
    assert len(sentences) == 3
    assert [c[0]["contentStep"] for c in sentences.values()] == [s["text"] for s in TURN["agent"]]
    assert all(c[-1]["isLastChunk"] for c in sentences.values())
    answer = next(m for m in got if m.get("stepType") == "final_answer")
    assert answer["fullResponse"]["answers"][0]["output"] == " ".join(
        s["text"] for s in TURN["agent"])
    # what the page sent: its start (placeholders filled in), then 4096-sample frames only
    start = json.loads(rec["sentText"][0])
    assert start == {"type": "start", "private_key": KEY, "session_id": client.session_id,
                     "agent_id": AGENT, "lang": "id", "sr": 16000}
    assert set(rec["sentBinary"]) == {"8192"}
    stats = client.sim.stats()
    assert stats["frames_rejected"] == 0 and stats["errors_sent"] == 0
    assert stats["frames_received"] >= int(rec["sentBinary"]["8192"]) - 2   # a few in flight
    # the example's own console.log lines (the driver quotes each argument); get_log
    # empties the browser's log, so a test reads it once
    console = "\n".join(client.console())
    assert '"Partial:" "' in console, console
    assert f'"Final:" "{TURN["you"]}"' in console, console


def settled_plays(client: VendorClient, count: int) -> dict[str, Any]:
    def settled() -> Any:
        rec = client.record()
        plays = rec["plays"]
        return rec if len(plays) >= count and all(p["state"] != "pending" for p in plays) else None
    return wait_for(settled, 15, f"{count} Audio.play() promises to settle")


@pytest.mark.parametrize("vendor_client", ["text"], indirect=True)
def test_text_chunking_every_sentence_decodes_and_plays(vendor_client: VendorClient) -> None:
    rec = vendor_client.wait_final_answer()
    check_conversation(vendor_client, rec)
    mp3s = sentence_files()
    # the page's own join-then-atob decoded each sentence to exactly the MP3 that was sent
    assert [a["ok"] for a in rec["atob"][:3]] == [True, True, True]
    assert [(a["outLength"], a["fnv"]) for a in rec["atob"][:3]] == [
        (len(m), fnv1a(m)) for m in mp3s]
    rec = settled_plays(vendor_client, 3)
    plays = rec["plays"][:3]
    assert [p["state"] for p in plays] == ["resolved"] * 3, plays
    for play, mp3 in zip(plays, mp3s):
        assert abs(play["duration"] - mp3_duration(mp3)) < 0.15, (play, mp3_duration(mp3))
    assert rec["errors"] == [] and rec["pending"] == []

    # A server barge: the page's handleBarge calls stopAllAudio(currentSeq) with the OLD
    # seq, over an audioPlayers map its example never fills: nothing stops.
    assert vendor_client.sim.inject({"type": "barge", "seq": 2, "reason": "test"}) == 1
    rec = wait_for(lambda: (r := vendor_client.record())["afterBarge"] and r, 10,
                   "the page to handle the barge")
    playing = [a for a in rec["afterBarge"][0] if not a["paused"] and not a["ended"]]
    assert playing, f"no audio was playing when the barge came: {rec['afterBarge'][0]}"


@pytest.mark.parametrize("vendor_client", ["slices"], indirect=True)
def test_slices_chunking_mid_string_padding_breaks_the_pages_atob(
        vendor_client: VendorClient) -> None:
    rec = vendor_client.wait_final_answer()
    check_conversation(vendor_client, rec)
    mp3s = sentence_files()
    # a sentence breaks when an inner slice is padded ('=' mid-string once joined)
    broken = [any(len(s) % 3 for s in split_chunks(m)[:-1]) for m in mp3s]
    assert broken == [True, True, True]      # true of every sentence of this turn
    calls = rec["atob"][:3]
    assert [not a["ok"] for a in calls] == broken
    assert all(a["error"] == "InvalidCharacterError" for a in calls if not a["ok"])
    # thrown inside ws.onmessage: uncaught, the sentence silently lost ...
    assert sum("atob" in e for e in rec["errors"]) == sum(broken), rec["errors"]
    # ... its chunks never leave pendingChunks, and nothing plays
    assert len(rec["pending"]) == sum(broken)
    assert all(key.startswith("1_") for key in rec["pending"])
    assert rec["plays"] == []


def test_the_copy_is_the_vendor_pages_code() -> None:
    """The committed example is the page's code, block for block (when the page is here)."""
    if not SEED_PAGE.exists():
        pytest.skip(f"{SEED_PAGE} (the vendor page) is not on this machine")
    page = SEED_PAGE.read_text(encoding="utf-8")
    section = page[page.index("## Complete Example"):page.index("## Error Handling")]
    blocks = re.findall(r"```javascript ([^\n]*?) theme=\{null\}\n(.*?)\n\s*```", section, re.S)
    assert [t for t, _ in blocks] == ["Basic Setup", "Send Audio", "Float32 to Int16",
                                      "Play Audio"]
    copy = (VENDOR_CLIENT / "complete-example.js").read_text(encoding="utf-8")

    def norm(code: str) -> list[str]:
        return [line.strip() for line in code.splitlines() if line.strip()]

    copy_lines = norm(copy)
    for title, code in blocks:
        lines = norm(code)
        start = copy_lines.index(lines[0]) if lines[0] in copy_lines else -1
        assert copy_lines[start:start + len(lines)] == lines, title
    stop = page[page.index("function stopAllAudio(beforeSeq)"):]
    stop_lines = norm(stop[:stop.index("```")])
    start = copy_lines.index(stop_lines[0])
    assert copy_lines[start:start + len(stop_lines)] == stop_lines
