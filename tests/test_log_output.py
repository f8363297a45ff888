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
    # One report, or more when the writer took a record while the jam began (the queue
    # had room for a report, then was full again): together they count every lost line.
    lost = [int(line.split(" log lines lost")[0].split()[-1])
            for line in text.splitlines() if "log lines lost" in line]
    assert lost and sum(lost) == handler.dropped, (lost, handler.dropped)
    assert text.rindex("log lines lost") < text.index("after the jam")


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


def test_lost_lines_are_reported_once_each_when_a_report_squeezes_in() -> None:
    """The jam's report got the one free slot and the record after it did not: the old
    code then counted that report's lines again (two reports summing to more lines than
    were lost: seen in CI as 31 + 1976 against 1976 dropped)."""
    handler = events_module.BackgroundHandler(logging.NullHandler(), max_records=2)
    handler.writer.stop()                      # nobody drains: the test plays the writer

    def record(n: int) -> logging.LogRecord:
        return logging.makeLogRecord({"name": "soca.x", "msg": f"line {n}"})

    for n in range(3):
        handler.enqueue(record(n))             # 2 queued, line 2 lost
    handler.queue.get_nowait()                 # the writer takes one: room for one
    handler.enqueue(record(3))                 # the report squeezes in, line 3 is lost
    reports = []
    while not handler.queue.empty():
        reports.append(handler.queue.get_nowait().getMessage())
    handler.enqueue(record(4))                 # room again: what is still unreported
    reports += [r.getMessage() for r in [handler.queue.get_nowait()]]
    said = [int(m.split()[0]) for m in reports if "log lines lost" in m]
    assert handler.dropped == 2 and sum(said) == 2, (said, handler.dropped)
