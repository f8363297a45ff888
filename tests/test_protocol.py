"""The Voice Stream wire protocol: every server message parsed, hostile input refused.

``protocol.parse`` must turn anything the server sends into a message object or a
ProtocolError whose text says what is wrong; nothing else may escape it, because the
link's receive loop only catches ProtocolError.
"""
from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soca_appliance import protocol
from soca_appliance.protocol import (
    MAX_CHUNK_INDEX, MAX_MESSAGE_BYTES, Barge, FinalAnswer, ProtocolError, Ready,
    SentenceChunk, ServerError, SttFinal, SttPartial, SttReady, Unknown, frame_bytes, parse,
)


def dumps(obj: Any) -> str:
    return json.dumps(obj)


def sentence(**fields: Any) -> dict[str, Any]:
    msg = {"stepType": "sentence", "seq": 12, "sentenceId": 3, "chunkIndex": 0,
           "isLastChunk": False, "audioBase64": "SUQz", "audioMime": "audio/mp3"}
    msg.update(fields)
    return msg


def final_answer(**fields: Any) -> dict[str, Any]:
    msg = {"stepType": "final_answer", "isFinal": True, "seq": 12, "stepDuration": 1834,
           "fullResponse": {"answers": [{"output": "Jakarta is the capital."}]}}
    msg.update(fields)
    return msg


def refused(raw: Any) -> str:
    """The ProtocolError text for ``raw`` (fails the test when parse accepts it)."""
    with pytest.raises(ProtocolError) as info:
        parse(raw)
    text = str(info.value)
    assert text, "a ProtocolError must say what is wrong"
    return text


# --- every message type ----------------------------------------------------------------

class TestServerMessages:
    def test_ready(self) -> None:
        assert parse('{"type":"ready","session_id":"abc-123"}') == Ready(session_id="abc-123")

    def test_ready_without_session_id(self) -> None:
        assert parse('{"type":"ready"}') == Ready(session_id="")

    def test_stt_ready(self) -> None:
        assert parse('{"type":"stt.ready"}') == SttReady()

    def test_stt_partial(self) -> None:
        assert parse(dumps({"type": "stt.partial", "text": "apa ibu"})) == SttPartial("apa ibu")

    def test_stt_final(self) -> None:
        msg = parse(dumps({"type": "stt.final", "text": "Apa ibu kota Indonesia?"}))
        assert msg == SttFinal(text="Apa ibu kota Indonesia?")

    def test_stt_final_empty_and_missing_text(self) -> None:
        assert parse('{"type":"stt.final","text":""}') == SttFinal("")
        assert parse('{"type":"stt.final"}') == SttFinal("")
        assert parse('{"type":"stt.partial","text":null}') == SttPartial("")

    def test_sentence_chunk_all_fields(self) -> None:
        msg = parse(dumps(sentence(chunkIndex=2, isLastChunk=True, contentStep="Halo.",
                                   audioBase64="AAEC")))
        assert msg == SentenceChunk(seq=12, sentence_id=3, chunk_index=2, is_last=True,
                                    audio_b64="AAEC", text="Halo.", mime="audio/mp3")

    def test_sentence_chunk_null_audio_on_last_chunk(self) -> None:
        msg = parse(dumps(sentence(chunkIndex=4, isLastChunk=True, audioBase64=None)))
        assert isinstance(msg, SentenceChunk)
        assert msg.audio_b64 is None
        assert msg.is_last is True
        assert msg.chunk_index == 4

    def test_sentence_chunk_missing_audio_and_empty_audio_are_none(self) -> None:
        obj = sentence()
        del obj["audioBase64"]
        assert parse(dumps(obj)).audio_b64 is None
        assert parse(dumps(sentence(audioBase64=""))).audio_b64 is None

    def test_sentence_chunk_defaults(self) -> None:
        obj = {"stepType": "sentence", "seq": 0, "sentenceId": "s-1", "chunkIndex": 0}
        msg = parse(dumps(obj))
        assert msg == SentenceChunk(seq=0, sentence_id="s-1", chunk_index=0, is_last=False,
                                    audio_b64=None, text=None, mime="audio/mp3")

    def test_sentence_chunk_string_sentence_id_and_content_step(self) -> None:
        msg = parse(dumps(sentence(sentenceId="abc", contentStep="Jakarta.")))
        assert msg.sentence_id == "abc"
        assert msg.text == "Jakarta."

    def test_sentence_chunk_bounds_of_chunk_index(self) -> None:
        assert parse(dumps(sentence(chunkIndex=0))).chunk_index == 0
        assert parse(dumps(sentence(chunkIndex=MAX_CHUNK_INDEX))).chunk_index == MAX_CHUNK_INDEX

    def test_final_answer(self) -> None:
        msg = parse(dumps(final_answer()))
        assert msg == FinalAnswer(seq=12, text="Jakarta is the capital.", duration_ms=1834)

    def test_final_answer_float_duration(self) -> None:
        assert parse(dumps(final_answer(stepDuration=12.5))).duration_ms == 12.5

    @pytest.mark.parametrize("duration", [None, "1834", True, [1]])
    def test_final_answer_odd_duration_is_none(self, duration: Any) -> None:
        assert parse(dumps(final_answer(stepDuration=duration))).duration_ms is None

    def test_final_answer_without_duration(self) -> None:
        obj = final_answer()
        del obj["stepDuration"]
        assert parse(dumps(obj)).duration_ms is None

    @pytest.mark.parametrize("full", [
        None, {}, {"answers": []}, {"answers": "x"}, {"answers": [1]},
        {"answers": [{"output": 5}]}, {"answers": [{}]}, "text",
    ])
    def test_final_answer_without_usable_output_has_empty_text(self, full: Any) -> None:
        msg = parse(dumps(final_answer(fullResponse=full)))
        assert msg == FinalAnswer(seq=12, text="", duration_ms=1834)

    def test_final_answer_uses_first_answer(self) -> None:
        full = {"answers": [{"output": "first"}, {"output": "second"}]}
        assert parse(dumps(final_answer(fullResponse=full))).text == "first"

    def test_barge(self) -> None:
        assert parse('{"type":"barge","seq":13,"reason":"user_speech"}') == Barge(13, "user_speech")

    def test_barge_without_reason(self) -> None:
        assert parse('{"type":"barge","seq":0}') == Barge(seq=0, reason="")

    def test_barge_without_seq_stops_what_is_playing(self) -> None:
        # PROTOCOL.md: "A barge without a seq stops what is playing now" (it was refused)
        assert parse('{"type":"barge"}') == Barge(seq=None, reason="")
        assert parse('{"type":"barge","reason":"manual"}') == Barge(seq=None, reason="manual")

    @pytest.mark.parametrize("seq", ["12", 12.0, 1.5, True, False, None, [12], {"n": 12}, -1])
    def test_barge_with_a_bad_seq_is_a_barge_without_seq(self, seq: Any) -> None:
        assert parse(dumps({"type": "barge", "seq": seq})) == Barge(seq=None)

    def test_error(self) -> None:
        msg = parse('{"type":"error","message":"must start with type=start"}')
        assert msg == ServerError(message="must start with type=start")

    def test_error_without_message(self) -> None:
        msg = parse('{"type":"error"}')
        assert isinstance(msg, ServerError)
        assert msg.message

    @pytest.mark.parametrize("text", [
        "Invalid or expired token",             # the page's own message
        "invalid or expired token",
        "INVALID OR EXPIRED TOKEN.",
        "error: Invalid or expired token",
        "Token expired",
        "invalid private_key",
        "Invalid private key",
        "unknown private_key: K-123",
        "missing private_key",
        "private_key required",
        "Invalid API key",
        "invalid key",
        "Unauthorized",
        "401 Unauthorised",
        "authentication failed",
        "Authentication required",
    ])
    def test_error_is_auth(self, text: str) -> None:
        assert ServerError(text).is_auth
        assert parse(dumps({"type": "error", "message": text})).is_auth
        assert protocol.is_auth_message(text)

    @pytest.mark.parametrize("text", [
        "must start with type=start",
        "rate limit exceeded",
        "internal error",
        "(no message)",
        "LLM token limit exceeded for this turn",     # issue 10: not about the key
        "token budget expired for this turn",
        "max tokens exceeded",
        "Token limit reached",
        "session expired, start a new turn",
        "tts provider authentication quota",          # 'auth' alone is not a phrase
        "Unexpected token < in JSON at position 0",
        "forbidden word filtered",
        "keyboard interrupt",
        "invalid keyboard layout",                    # word boundaries, not substrings
        "",
    ])
    def test_error_is_not_auth(self, text: str) -> None:
        assert not ServerError(text).is_auth
        assert not protocol.is_auth_message(text)

    def test_auth_phrases_are_phrases_not_words(self) -> None:
        # single words like 'token' or 'expired' would catch language-model errors
        for phrase in protocol.AUTH_PHRASES:
            assert phrase == phrase.lower()
            assert phrase not in ("token", "expired", "auth", "key", "invalid")

    def test_unknown_type(self) -> None:
        msg = parse('{"type":"vad.onset","at":1.5}')
        assert isinstance(msg, Unknown)
        assert "vad.onset" in msg.kind

    def test_unknown_step_type(self) -> None:
        msg = parse('{"stepType":"thought","seq":1,"text":"hmm"}')
        assert isinstance(msg, Unknown)
        assert "thought" in msg.kind

    def test_unknown_non_string_type(self) -> None:
        assert isinstance(parse('{"type":42}'), Unknown)

    def test_extra_fields_ignored(self) -> None:
        assert parse('{"type":"stt.ready","x":1,"nested":{"a":[1,2]}}') == SttReady()
        msg = parse(dumps(sentence(extra="yes", timestamp=1.5, meta={"k": None})))
        assert msg == parse(dumps(sentence()))
        assert parse(dumps(final_answer(extra=[1, 2]))) == parse(dumps(final_answer()))

    def test_step_type_wins_over_type(self) -> None:
        msg = parse(dumps(sentence(type="something")))
        assert isinstance(msg, SentenceChunk)

    def test_bytes_input(self) -> None:
        assert parse(b'{"type":"stt.partial","text":"caf\xc3\xa9"}') == SttPartial("café")
        assert parse(bytearray(b'{"type":"stt.ready"}')) == SttReady()

    def test_parse_obj_directly(self) -> None:
        assert protocol.parse_obj({"type": "stt.ready"}) == SttReady()


# --- the seq on every message ------------------------------------------------------------

class TestSeq:
    """PROTOCOL.md: the seq rule applies to every message that carries a seq."""

    @pytest.mark.parametrize("obj, expected", [
        ({"type": "stt.partial", "text": "halo", "seq": 4}, SttPartial("halo", seq=4)),
        ({"type": "stt.final", "text": "halo", "seq": 4}, SttFinal("halo", seq=4)),
        ({"type": "error", "message": "boom", "seq": 4}, ServerError("boom", seq=4)),
        ({"type": "ready", "session_id": "s", "seq": 4}, Ready("s", seq=4)),
        ({"type": "stt.ready", "seq": 4}, SttReady(seq=4)),
        ({"type": "vad.onset", "seq": 4}, Unknown("'vad.onset'", seq=4)),
        ({"stepType": "thought", "seq": 4}, Unknown("stepType='thought'", seq=4)),
        ({"type": "barge", "seq": 4, "reason": "x"}, Barge(4, "x")),
    ])
    def test_every_message_exposes_its_seq(self, obj: dict[str, Any], expected: Any) -> None:
        msg = parse(dumps(obj))
        assert msg == expected
        assert protocol.seq_of(msg) == 4

    def test_seq_of_audio_and_final_answer(self) -> None:
        assert protocol.seq_of(parse(dumps(sentence(seq=9)))) == 9
        assert protocol.seq_of(parse(dumps(final_answer(seq=9)))) == 9
        assert protocol.seq_of(parse(dumps(final_answer(seq=0)))) == 0

    @pytest.mark.parametrize("obj", [
        {"type": "stt.partial", "text": "x"}, {"type": "stt.final"}, {"type": "error"},
        {"type": "ready"}, {"type": "stt.ready"}, {"type": "other"}, {"type": "barge"},
    ])
    def test_no_seq_is_none(self, obj: dict[str, Any]) -> None:
        assert protocol.seq_of(parse(dumps(obj))) is None

    @pytest.mark.parametrize("seq", ["4", 4.0, 1.5, True, False, None, [4], {"n": 4}, -1])
    @pytest.mark.parametrize("kind", ["stt.partial", "stt.final", "error", "ready", "stt.ready",
                                      "other", "barge"])
    def test_a_bad_seq_on_a_non_audio_message_is_ignored(self, seq: Any, kind: str) -> None:
        msg = parse(dumps({"type": kind, "seq": seq}))
        assert protocol.seq_of(msg) is None
        assert type(msg) is type(parse(dumps({"type": kind})))

    def test_seq_of_without_a_seq_attribute(self) -> None:
        assert protocol.seq_of(SttReady()) is None


# --- refused ---------------------------------------------------------------------------

class TestRefused:
    @pytest.mark.parametrize("raw", [b"\xff\xfe{}", b'{"type":"stt.partial","text":"\xc3"}',
                                     b"\xed\xa0\x80"])
    def test_invalid_utf8(self, raw: bytes) -> None:
        assert "UTF-8" in refused(raw)

    @pytest.mark.parametrize("raw", ["", "not json", "{", '{"type":"ready",}', "{'a': 1}",
                                     b"\x00", "[" * 100_000])
    def test_not_json(self, raw: Any) -> None:
        assert "not JSON" in refused(raw)

    @pytest.mark.parametrize("raw, kinds", [
        ("[]", ("array", "list")), ('[{"type":"ready"}]', ("array", "list")),
        ('"ready"', ("string", "str")), ("42", ("number", "int")), ("4.5", ("number", "float")),
        ("null", ("null", "None")), ("true", ("boolean", "bool")),
    ])
    def test_json_not_an_object(self, raw: str, kinds: tuple[str, ...]) -> None:
        text = refused(raw)
        assert "not an object" in text
        assert any(kind in text for kind in kinds), text

    def test_neither_type_nor_step_type(self) -> None:
        assert "type" in refused('{"session_id":"x"}')
        assert "type" in refused("{}")

    # Audio and final_answer need a valid seq; other messages ignore a bad one (TestSeq).
    @pytest.mark.parametrize("seq", ["12", 12.0, 1.5, True, False, None, [12], {"n": 12}])
    @pytest.mark.parametrize("make", ["sentence", "final_answer"])
    def test_seq_not_an_integer(self, seq: Any, make: str) -> None:
        obj = {"sentence": sentence(seq=seq), "final_answer": final_answer(seq=seq)}[make]
        text = refused(dumps(obj))
        assert "seq" in text
        assert "integer" in text

    @pytest.mark.parametrize("make", ["sentence", "final_answer"])
    def test_seq_missing(self, make: str) -> None:
        obj = {"sentence": sentence(), "final_answer": final_answer()}[make]
        del obj["seq"]
        assert "seq" in refused(dumps(obj))

    @pytest.mark.parametrize("make", ["sentence", "final_answer"])
    def test_seq_negative(self, make: str) -> None:
        obj = {"sentence": sentence(seq=-1), "final_answer": final_answer(seq=-1)}[make]
        text = refused(dumps(obj))
        assert "seq" in text and "negative" in text

    @pytest.mark.parametrize("index", [-1, MAX_CHUNK_INDEX + 1, 10**9])
    def test_chunk_index_out_of_range(self, index: int) -> None:
        text = refused(dumps(sentence(chunkIndex=index)))
        assert "chunkIndex" in text
        assert str(index) in text

    @pytest.mark.parametrize("index", ["0", 0.0, True, None, [0]])
    def test_chunk_index_not_an_integer(self, index: Any) -> None:
        assert "chunkIndex" in refused(dumps(sentence(chunkIndex=index)))

    @pytest.mark.parametrize("sid", [1.5, True, None, [1], {"id": 1}])
    def test_bad_sentence_id(self, sid: Any) -> None:
        assert "sentenceId" in refused(dumps(sentence(sentenceId=sid)))

    def test_missing_sentence_id(self) -> None:
        obj = sentence()
        del obj["sentenceId"]
        assert "sentenceId" in refused(dumps(obj))

    @pytest.mark.parametrize("last", ["true", 1, 0, None, []])
    def test_is_last_chunk_not_boolean(self, last: Any) -> None:
        assert "isLastChunk" in refused(dumps(sentence(isLastChunk=last)))

    @pytest.mark.parametrize("audio", [123, ["AAEC"], {"b64": "AAEC"}, True])
    def test_audio_not_a_string(self, audio: Any) -> None:
        assert "audioBase64" in refused(dumps(sentence(audioBase64=audio)))

    @pytest.mark.parametrize("mime", [5, ["audio/mp3"], True])
    def test_audio_mime_not_a_string(self, mime: Any) -> None:
        assert "audioMime" in refused(dumps(sentence(audioMime=mime)))

    @pytest.mark.parametrize("step", [5, ["x"], True, {"a": 1}])
    def test_content_step_not_a_string(self, step: Any) -> None:
        assert "contentStep" in refused(dumps(sentence(contentStep=step)))

    @pytest.mark.parametrize("kind, key", [("ready", "session_id"), ("stt.partial", "text"),
                                           ("stt.final", "text"), ("error", "message")])
    @pytest.mark.parametrize("value", [5, ["x"], {"a": "b"}, True, 1.5])
    def test_string_fields_with_wrong_type(self, kind: str, key: str, value: Any) -> None:
        text = refused(dumps({"type": kind, key: value}))
        assert key in text
        assert "string" in text

    @pytest.mark.parametrize("reason", [5, ["x"], True])
    def test_barge_reason_not_a_string(self, reason: Any) -> None:
        assert "reason" in refused(dumps({"type": "barge", "seq": 1, "reason": reason}))

    def test_oversize_bytes(self) -> None:
        raw = dumps(sentence(audioBase64="A" * MAX_MESSAGE_BYTES)).encode()
        text = refused(raw)
        assert str(MAX_MESSAGE_BYTES) in text
        assert "limit" in text

    def test_oversize_text(self) -> None:
        raw = dumps(sentence(audioBase64="A" * MAX_MESSAGE_BYTES))
        assert "limit" in refused(raw)

    def test_oversize_is_checked_before_decoding(self) -> None:
        assert "limit" in refused(b"\xff" * (MAX_MESSAGE_BYTES + 1))

    def test_message_of_exactly_the_limit_is_accepted(self) -> None:
        template = dumps(sentence(audioBase64=""))
        pad = MAX_MESSAGE_BYTES - len(template)
        raw = dumps(sentence(audioBase64="A" * pad)).encode()
        assert len(raw) == MAX_MESSAGE_BYTES
        msg = parse(raw)
        assert isinstance(msg, SentenceChunk)
        assert len(msg.audio_b64) == pad
        assert "limit" in refused(raw + b" ")

    def test_error_text_is_short_for_huge_values(self) -> None:
        text = refused(dumps(sentence(sentenceId=["x" * 10_000])))
        assert len(text) < 200

    @pytest.mark.parametrize("raw", ["1" * 5000, '{"type":"barge","seq":' + "9" * 5000 + "}"],
                             ids=["bare-5000-digits", "seq-5000-digits"])
    def test_huge_integer_literal(self, raw: str) -> None:
        refused(raw)


# --- client to server ------------------------------------------------------------------

class TestClientMessages:
    def test_start_message(self) -> None:
        raw = protocol.start_message(private_key="K-secret", session_id="S-1", agent_id="A-1",
                                     lang="id")
        obj = json.loads(raw)
        assert obj == {"type": "start", "private_key": "K-secret", "session_id": "S-1",
                       "agent_id": "A-1", "lang": "id", "sr": 16000}
        assert type(obj["sr"]) is int

    def test_start_message_key_field_token(self) -> None:
        raw = protocol.start_message(private_key="K", session_id="S", agent_id="A", lang="en",
                                     key_field="token")
        obj = json.loads(raw)
        assert obj["token"] == "K"
        assert "private_key" not in obj
        assert obj["type"] == "start"
        assert obj["lang"] == "en"
        assert obj["sr"] == 16000

    def test_start_message_escapes_values(self) -> None:
        key = 'we"ird\\key\n'
        obj = json.loads(protocol.start_message(private_key=key, session_id="s", agent_id="a",
                                                lang="id"))
        assert obj["private_key"] == key

    def test_start_message_is_one_text_frame(self) -> None:
        raw = protocol.start_message(private_key="K", session_id="S", agent_id="A", lang="id")
        assert isinstance(raw, str)
        assert "\n" not in raw

    def test_stop_message(self) -> None:
        assert json.loads(protocol.stop_message()) == {"type": "stop"}

    def test_barge_message(self) -> None:
        assert json.loads(protocol.barge_message()) == {"type": "barge"}

    @pytest.mark.parametrize("ms, size", [(20, 640), (40, 1280), (50, 1600), (10, 320)])
    def test_frame_bytes(self, ms: int, size: int) -> None:
        assert frame_bytes(ms) == size

    def test_constants(self) -> None:
        assert protocol.SAMPLE_RATE == 16000
        assert protocol.FRAME_MS_ALLOWED == (20, 40, 50)


# --- property: parse only returns a message or raises ProtocolError --------------------

MESSAGE_TYPES = (Ready, SttReady, SttPartial, SttFinal, SentenceChunk, FinalAnswer, Barge,
                 ServerError, Unknown)

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=6,
)
KEYS = ["type", "stepType", "seq", "sentenceId", "chunkIndex", "isLastChunk", "audioBase64",
        "audioMime", "contentStep", "fullResponse", "stepDuration", "session_id", "text",
        "message", "reason", "isFinal"]
TYPES = ["ready", "stt.ready", "stt.partial", "stt.final", "barge", "error", "sentence",
         "final_answer", "other"]
protocolish = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(TYPES) | json_values,
        "stepType": st.sampled_from(TYPES) | json_values,
        **{key: json_values for key in KEYS[2:]},
        "fullResponse": st.fixed_dictionaries(
            {"answers": st.lists(st.fixed_dictionaries({"output": json_values}), max_size=2)})
        | json_values,
    },
)


def _only_message_or_protocol_error(raw: Any) -> None:
    try:
        msg = parse(raw)
    except ProtocolError as exc:
        assert str(exc)
        return
    assert isinstance(msg, MESSAGE_TYPES)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_parse_arbitrary_text(raw: str) -> None:
    _only_message_or_protocol_error(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_arbitrary_bytes(raw: bytes) -> None:
    _only_message_or_protocol_error(raw)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_parse_arbitrary_json(value: Any) -> None:
    _only_message_or_protocol_error(json.dumps(value))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(protocolish)
def test_parse_protocol_shaped_objects(obj: dict[str, Any]) -> None:
    raw = json.dumps(obj)
    _only_message_or_protocol_error(raw)
    _only_message_or_protocol_error(raw.encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None)
@given(seq=st.integers(min_value=0, max_value=2**62), sid=st.integers(min_value=0) | st.text(),
       index=st.integers(min_value=0, max_value=MAX_CHUNK_INDEX), last=st.booleans(),
       audio=st.none() | st.text(alphabet="ABCDEFabcdef0123456789+/=", min_size=1),
       text=st.none() | st.text())
def test_valid_sentence_chunks_round_trip(seq: int, sid: Any, index: int, last: bool,
                                          audio: Any, text: Any) -> None:
    obj = {"stepType": "sentence", "seq": seq, "sentenceId": sid, "chunkIndex": index,
           "isLastChunk": last, "audioBase64": audio, "contentStep": text}
    msg = parse(json.dumps(obj))
    assert msg == SentenceChunk(seq=seq, sentence_id=sid, chunk_index=index, is_last=last,
                                audio_b64=audio, text=text, mime="audio/mp3")


def test_nan_and_infinity_duration_do_not_crash() -> None:
    msg = parse('{"stepType":"final_answer","seq":1,"stepDuration":NaN}')
    assert isinstance(msg, FinalAnswer)
    assert msg.duration_ms is None or math.isnan(msg.duration_ms)
