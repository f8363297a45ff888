"""The speaker's mixer closed while quiet (speaker_idle.py, issue 13): the pure rule, and
the whole appliance in half duplex against a real websocket server: the mixer parks while
nobody talks, and the user's speech opens it again before the agent's answer comes."""
from __future__ import annotations

from conftest import wait_for
from hostile import AppHarness, HostileServer, sentence
from soca_appliance.speaker_idle import IdleRelease


def test_the_rule() -> None:
    idle = IdleRelease(after_s=5.0)
    idle.opened(100.0)
    assert not idle.due(104.9, float("-inf"), False)         # counted from the opening
    assert idle.due(105.0, float("-inf"), False)
    assert not idle.due(200.0, 199.0, False)                 # speech ended 1 s ago
    assert not idle.due(200.0, 0.0, True)                    # something queued
    idle.sounded_until(300.0)                                # a chime ends at 300
    assert not idle.due(304.0, 0.0, False) and idle.due(305.0, 0.0, False)
    assert not IdleRelease(after_s=0.0).due(1e9, 0.0, False)  # 0: never
    assert not idle.want()                                   # open: nothing to wake
    idle.park()
    assert idle.due(1e9, 0.0, False) is False                # parked: not twice
    assert idle.want() and idle.wanted
    assert idle.want((b"chime", False)) and idle.resume() == (b"chime", False)
    assert not idle.parked and not idle.wanted and idle.cue is None


def test_half_duplex_parks_the_mixer_and_the_users_speech_opens_it() -> None:
    with HostileServer() as server, AppHarness(server.url, duplex="half",
                                               speaker_idle_close=0.3) as h:
        h.wait("connected")
        h.wait("audio.output")
        wait_for(lambda: h.app.player.parked, 5, "the mixer to close while quiet")
        server.send({"type": "stt.partial", "text": "what is", "seq": 1})
        h.wait("state", state="listening")
        # open again before any answer: the answer will not wait for it
        wait_for(lambda: h.app.player.info is not None, 5, "the mixer to open for the answer")
        server.send_many(sentence(1, 1, "An answer.") + [
            {"stepType": "final_answer", "seq": 1, "isFinal": True,
             "fullResponse": {"answers": [{"output": "An answer."}]}}])
        h.wait("sentence.play", sentence_id=1)
        wait_for(lambda: h.app.idle(), 10, "the answer to end")
        assert len(h.of("audio.output")) == 1 and not h.of("error")
        wait_for(lambda: h.app.player.parked, 5, "closed again once quiet")
        assert h.app.press(source="ctl") == "chime"          # the chime, from parked
        wait_for(lambda: h.app.player.info is not None, 5, "open for the chime")


def test_with_the_echo_canceller_the_mixer_stays_open() -> None:
    with HostileServer() as server, AppHarness(server.url, duplex="aec",
                                               speaker_idle_close=0.3) as h:
        h.wait("connected")
        h.wait("audio.output")
        assert h.app.echo is not None                        # (pywebrtc-audio installed)
        assert h.app.player._idle.after_s == 0.0 and not h.app.player.parked
