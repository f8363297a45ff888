"""The orchestrator's turns, seq rule, button, effects and budget (issues 10 and 11).

Pure parts (Turn, Effects, Counters, SentenceBudget) are tested without servers; the rest
runs the whole appliance against a real websocket server on 127.0.0.1, with real MP3
decoded and played by pygame on SDL's dummy driver. Waits are on conditions or Events.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Optional

import pytest

from soca_appliance.counters import Counters, SentenceBudget
from soca_appliance.effects import Effects
from soca_appliance.turn import Turn

from conftest import wait_for
from hostile import AppHarness as Harness, HostileServer, sentence


# --- pure parts ----------------------------------------------------------------------

def test_turn_holds_newer_audio_after_a_press_until_released() -> None:
    turn = Turn(phase="thinking")
    assert turn.admit(0) and turn.admit(3)
    turn.press(current_seq=2)
    assert not turn.admit(2) and not turn.admit(3)     # the answer being prepared: dropped
    turn.release()                                     # the server's barge, or a new final
    assert not turn.admit(3)                           # seen while holding: over for good
    assert turn.admit(4)
    assert not turn.answered_all(4)
    turn.answer(4)
    assert turn.answered_all(4) and not turn.answered_all(5)
    assert Turn().phase == "connecting" and Turn().answered == -1


def test_effects_run_in_order_outside_the_caller_and_flush_waits() -> None:
    fx = Effects(max_queue=100)
    fx.start()
    seen: list[int] = []
    gate = threading.Event()
    fx.submit(lambda: gate.wait(5))                 # a slow first effect
    for i in range(50):
        assert fx.submit(lambda i=i: seen.append(i))
    assert seen == []                                # the caller never waited
    gate.set()
    assert fx.flush(5)
    assert seen == list(range(50))
    fx.close()
    assert not fx.alive() and not fx.submit(lambda: None)


def test_effects_are_bounded_and_the_panel_keeps_only_the_latest() -> None:
    fx = Effects(max_queue=5)
    fx.start()
    gate = threading.Event()
    shown: list[tuple[str, bool]] = []
    fx.submit(lambda: gate.wait(5))
    for state in ("ready", "listening", "thinking", "speaking"):
        fx.panel(lambda s, m: shown.append((s, m)), state, False)
    accepted = sum(fx.submit(lambda: None) for _ in range(10))
    assert accepted == 3 and fx.dropped == 7                       # 1 + panel + 3 = 5
    gate.set()
    assert fx.flush(5)
    assert shown == [("speaking", False)]                          # the latest state only
    fx.close()


def test_counters_add_from_many_threads_is_exact() -> None:
    counters = Counters()

    def bump() -> None:
        for _ in range(20_000):
            counters.add("sentences_stopped")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counters.sentences_stopped == 80_000
    snap = counters.snapshot()
    assert snap["sentences_stopped"] == 80_000 and "_lock" not in snap


def test_sentence_budget_shares_one_cap() -> None:
    budget = SentenceBudget(cap=4)
    assert budget.room() == 4
    for sid in range(3):
        budget.handed((1, sid))
    assert budget.room() == 1
    budget.started((1, 0))
    budget.left((1, 1))
    assert budget.room() == 3
    budget.handed((1, 0))                   # a progressive sentence that already started
    assert budget.room() == 3
    budget.clear()
    assert budget.room() == 4


# --- the whole appliance -------------------------------------------------------------

def ready(h: Harness, connects: int = 1) -> None:
    h.wait("connected", count=connects)
    h.wait("audio.output")
    wait_for(lambda: h.app.state == "ready" and h.app.link.streaming, 5, "ready")


def play(server: HostileServer, seq: int, sid: Any, text: str) -> None:
    for msg in sentence(seq, sid, text):
        server.send(msg)


def test_a_reconnect_forgets_the_old_sessions_answers() -> None:
    """The old session answered seq 5; the new one numbers from 1 again. Between two
    sentences of the new answer, the appliance is still thinking, and the button
    interrupts (it chimed before: the old _answered_seq said 'answered')."""
    with HostileServer() as server, Harness(server.url) as h:
        ready(h)
        server.send({"stepType": "final_answer", "seq": 5, "isFinal": True,
                     "fullResponse": {"answers": [{"output": "old answer"}]}})
        h.wait("answer", seq=5)
        server.close_clients(1011)
        ready(h, connects=2)
        play(server, 1, 1, "first of two")
        h.wait("sentence.play", sentence_id=1)
        wait_for(lambda: not h.app.player.busy, 10, "the first sentence to end")
        assert h.app.state == "thinking"            # seq 1 has no final answer yet
        assert h.app.press() == "barged"


@pytest.mark.parametrize("message", [
    {"type": "stt.partial", "text": "wait", "seq": 2},
    {"type": "stt.final", "text": "wait a moment", "seq": 2},
    {"type": "error", "message": "the agent changed its mind", "seq": 2},
    {"type": "agent.thought", "seq": 2},
], ids=["stt.partial", "stt.final", "error", "unknown"])
def test_a_higher_seq_on_any_message_silences_older_audio(message: dict[str, Any]) -> None:
    with HostileServer() as server, Harness(server.url) as h:
        ready(h)
        play(server, 1, 1, "being said")
        h.wait("sentence.play", sentence_id=1)
        server.send(message)
        stop = h.wait("sentence.stop", sentence_id=1)[0]
        assert stop["reason"] == "barge"
        wait_for(lambda: h.app.status()["seq"] == 2, 5, "seq 2")
        play(server, 1, 2, "stale")
        play(server, 2, 3, "new")
        h.wait("sentence.play", sentence_id=3)
        assert not h.of("sentence.play", sentence_id=2)
        assert h.app.link.stats.connects == 1


def test_a_barge_without_seq_stops_what_is_playing_now() -> None:
    with HostileServer() as server, Harness(server.url) as h:
        ready(h)
        play(server, 3, 1, "being said")
        h.wait("sentence.play", sentence_id=1)
        server.send({"type": "barge", "reason": "content_partial"})
        assert h.wait("sentence.stop", sentence_id=1)[0]["reason"] == "barge"
        h.wait("barge", source="server", seq=None)
        play(server, 3, 2, "a new sentence of the same seq")
        h.wait("sentence.play", sentence_id=2)
        assert h.app.status()["seq"] == 3


def seen(h: Harness) -> str:
    """For failure messages: the state and what happened, minus log lines."""
    return (f"state {h.app.state}, faults {h.app.status()['faults']}; events "
            f"{[(r['event'], r.get('state') or r.get('message')) for r in h.records if r['event'] != 'log']}")


def _think(h: Harness, server: HostileServer) -> None:
    server.send({"type": "stt.final", "text": "what is the weather"})
    try:
        wait_for(lambda: h.app.state == "thinking", 5, "thinking")
    except pytest.fail.Exception:
        pytest.fail(f"never thinking: {seen(h)}")


def test_a_press_while_thinking_drops_the_answer_until_the_servers_barge() -> None:
    with HostileServer() as server, Harness(server.url) as h:
        ready(h)
        _think(h, server)
        assert h.app.press() == "barged"
        # The answer being prepared arrives with the next seq: not played.
        play(server, 1, 1, "the answer nobody wants now")
        wait_for(lambda: h.app.status()["seq"] == 1, 5, "its chunks handled")
        server.send({"type": "barge", "seq": 2, "reason": "manual"})   # the ack
        h.wait("barge", source="server", seq=2)
        play(server, 1, 2, "late rest of the old answer")
        play(server, 2, 3, "the next answer")
        h.wait("sentence.play", sentence_id=3)
        assert [p["sentence_id"] for p in h.of("sentence.play")] == [3]
        assert h.app.counters.chunks_held == 10         # sentence 1, then its late rest


def test_a_press_while_thinking_holds_until_the_next_final_transcript() -> None:
    with HostileServer() as server, Harness(server.url) as h:
        ready(h)
        _think(h, server)
        assert h.app.press() == "barged"
        play(server, 1, 1, "dropped")
        wait_for(lambda: h.app.status()["seq"] == 1, 5, "its chunks handled")
        server.send({"type": "stt.final", "text": "and tomorrow"})       # a new turn
        h.wait("transcript", final=True, text="and tomorrow")
        play(server, 1, 4, "more of the dropped answer")
        play(server, 2, 2, "the answer to the new question")
        h.wait("sentence.play", sentence_id=2)
        assert [p["sentence_id"] for p in h.of("sentence.play")] == [2]
        assert h.app.counters.chunks_held == 10


class SlowPanel:
    """LEDs whose driver hangs for up to 2 s when showing ``speaking``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.pins: dict[str, Any] = {}

    def show(self, state: str, muted: bool) -> None:
        if state == "speaking" and not self.entered.is_set():
            self.entered.set()
            self.release.wait(2.0)

    def close(self) -> None:
        self.release.set()


def test_a_slow_led_never_delays_a_barge_from_the_link() -> None:
    panel = SlowPanel()
    with HostileServer() as server, Harness(server.url, panel=panel) as h:
        ready(h)
        stopped = threading.Event()
        at: list[float] = []
        real_stop = h.app.player.stop_before

        def stop_before(seq: int, reason: str) -> Any:
            result = real_stop(seq, reason)
            if result:
                at.append(time.monotonic())
                stopped.set()
            return result

        h.app.player.stop_before = stop_before             # type: ignore[method-assign]
        play(server, 1, 1, "being said")
        assert panel.entered.wait(10), f"the speaking LED was never shown: {seen(h)}"
        sent = time.monotonic()
        server.send({"type": "barge", "seq": 2, "reason": "content_partial"})
        assert stopped.wait(1.5), f"the barge waited for the LED: {seen(h)}"
        assert at[0] - sent < 1.0, f"stopped {at[0] - sent:.2f} s after the barge"
        panel.release.set()
        h.wait("sentence.stop", sentence_id=1, reason="barge")


def test_one_cap_for_sentences_assembled_and_queued() -> None:
    cap = 4
    with HostileServer() as server, Harness(server.url, max_pending_sentences=cap) as h:
        ready(h)
        for sid in range(cap):                          # 1 playing, 3 queued in the player
            play(server, 1, sid, f"complete {sid}")
        h.wait("sentence.play", sentence_id=0)
        wait_for(lambda: h.app.assembler.pending == 0, 5, "all four handed to the player")
        for sid in (10, 11, 12):                        # being assembled: one more fits
            server.send(sentence(1, sid, "open")[0])
        wait_for(lambda: h.app.assembler.dropped_sentences >= 2, 5, "the cap to bite")
        assert h.app.assembler.pending == 1
        assert h.app.assembler.pending + h.app.budget.queued <= cap
