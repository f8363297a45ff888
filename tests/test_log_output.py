"""Log records leave the thread that logs them: a stuck stderr (a journal that stopped
reading) blocks only the appliance's ``log-writer`` thread, never the link, player or
capture thread; what a full queue refuses is counted and said in one line; redaction
and the JSON event log work as before."""
from __future__ import annotations

import io
import json
import logging
import threading
from typing import Iterator

import pytest

from soca_appliance import events as events_module
from soca_appliance.events import EventLog, Redactor, flush_logging, setup_logging

from conftest import wait_for


class StuckStream(io.StringIO):
    """A stream whose writes block until released, like a pipe nobody reads."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait()
        return super().write(text)


@pytest.fixture(autouse=True)
def synchronous_again() -> Iterator[None]:
    yield
    setup_logging(EventLog("text", stream=io.StringIO()), "info", stream=io.StringIO())


def test_a_stuck_stderr_never_stalls_the_thread_that_logs() -> None:
    stream = StuckStream()
    setup_logging(EventLog("text"), "info", stream=stream, background=True)
    log = logging.getLogger("soca.link")

    def link_thread() -> None:
        for n in range(3000):
            log.warning("line %d", n)

    worker = threading.Thread(target=link_thread, name="link-rx")
    worker.start()
    wait_for(stream.entered.is_set, 5, "the writer to be stuck in write()")
    worker.join(10)
    assert not worker.is_alive(), "logging blocked the thread that logged"
    handler = events_module._background
    assert handler is not None and handler.dropped > 0

    stream.release.set()
    wait_for(handler.queue.empty, 10, "the writer to drain its queue")
    log.warning("after the jam")
    wait_for(lambda: "after the jam" in stream.getvalue(), 10, "the writer to catch up")
    text = stream.getvalue()
    assert "line 0\n" in text
    lost = [line for line in text.splitlines() if "log lines lost" in line]
    assert len(lost) == 1 and f"{handler.dropped} log lines lost" in lost[0], lost
    assert text.index("log lines lost") < text.index("after the jam")


def test_records_reach_the_json_event_log_redacted_through_the_writer() -> None:
    out = io.StringIO()
    key = "sk-log-output-0123456789abcdef"
    setup_logging(EventLog("json", stream=out, redactor=Redactor([key])), "info",
                  background=True)
    log = logging.getLogger("soca.player")
    try:
        raise ValueError(f"bad chunk near {key}")
    except ValueError:
        log.exception("sentence %s skipped", "3/1")
    flush_logging()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    records = [r for r in lines if r["event"] == "log"]
    assert records and records[0]["message"].startswith("sentence 3/1 skipped")
    assert "ValueError" in records[0]["message"]
    assert key not in out.getvalue() and "***" in out.getvalue()
    assert any(t.name == "log-writer" for t in threading.enumerate())


def test_setting_up_again_stops_the_old_writer() -> None:
    setup_logging(EventLog("text"), "info", stream=io.StringIO(), background=True)
    first = events_module._background
    assert first is not None
    setup_logging(EventLog("text"), "info", stream=io.StringIO(), background=True)
    assert events_module._background is not first
    assert first.writer._thread is None
    wait_for(lambda: [t.name for t in threading.enumerate()].count("log-writer") == 1,
             5, "only the new writer left")
