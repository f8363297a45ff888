"""Voice Stream wire protocol: parse server messages, build client messages.

Pure functions and dataclasses, no I/O. Everything the server can send is turned into
one of the message classes below or rejected with a :class:`ProtocolError` whose text
is fit for a log line. Unknown message types become :class:`Unknown` (ignored by the
appliance, logged at debug level); extra fields are ignored.

The seq rule applies to every message that carries a ``seq`` (PROTOCOL.md), so every
message class exposes one: :func:`seq_of` reads it. Audio (sentence chunks) and
``final_answer`` need a valid seq and are refused without one; on any other message a
missing, non-integer or negative seq is ignored (``seq=None``) and the message kept.
A ``barge`` without a (valid) seq is ``Barge(seq=None)``: "stop what is playing now".

Authentication errors are recognised by whole phrases (:data:`AUTH_PHRASES`), never by
single words: "LLM token limit exceeded" is not about the key.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

SAMPLE_RATE = 16000
FRAME_MS_ALLOWED = (20, 40, 50)
MAX_CHUNK_INDEX = 4095          # a sentence of 4096 chunks is far beyond any real one
MAX_MESSAGE_BYTES = 1 << 20     # a chunk is a few KB; a megabyte is already hostile

SentenceId = Union[int, str]


class ProtocolError(ValueError):
    """A server message that cannot be understood; the text says why."""


def frame_bytes(frame_ms: int) -> int:
    """Bytes of one PCM16LE mono 16 kHz frame of ``frame_ms`` milliseconds."""
    return SAMPLE_RATE * frame_ms // 1000 * 2


# --- server to client ------------------------------------------------------------------

@dataclass(frozen=True)
class Ready:
    session_id: str
    seq: Optional[int] = None


@dataclass(frozen=True)
class SttReady:
    seq: Optional[int] = None


@dataclass(frozen=True)
class SttPartial:
    text: str
    seq: Optional[int] = None


@dataclass(frozen=True)
class SttFinal:
    text: str
    seq: Optional[int] = None


@dataclass(frozen=True)
class SentenceChunk:
    seq: int
    sentence_id: SentenceId
    chunk_index: int
    is_last: bool
    audio_b64: Optional[str]
    text: Optional[str] = None
    mime: str = "audio/mp3"


@dataclass(frozen=True)
class FinalAnswer:
    seq: int
    text: str
    duration_ms: Optional[float] = None


@dataclass(frozen=True)
class Barge:
    """``seq=None``: a barge without a seq, which stops what is playing now."""
    seq: Optional[int]
    reason: str = ""


@dataclass(frozen=True)
class ServerError:
    message: str
    seq: Optional[int] = None

    @property
    def is_auth(self) -> bool:
        """An invalid or expired key: retrying fast would only hammer the server."""
        return is_auth_message(self.message)


@dataclass(frozen=True)
class Unknown:
    kind: str
    seq: Optional[int] = None


ServerMessage = Union[Ready, SttReady, SttPartial, SttFinal, SentenceChunk, FinalAnswer,
                      Barge, ServerError, Unknown]


def seq_of(message: ServerMessage) -> Optional[int]:
    """The seq a message carries (for the seq rule), or None when it carries none."""
    seq = getattr(message, "seq", None)
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


# The page's own authentication error ("Invalid or expired token") and key errors, matched
# as whole phrases (word boundaries, case-insensitive, "_" and "-" read as spaces, so
# "private_key" is "private key"). Never single words such as "token" or "expired":
# "LLM token limit exceeded for this turn" is not an authentication error.
AUTH_PHRASES = (
    "invalid or expired token", "expired token", "token expired",
    "invalid private key", "unknown private key", "missing private key",
    "private key required", "private key is required",
    "invalid api key", "unknown api key", "invalid key", "unknown key",
    "unauthorized", "unauthorised", "authentication failed", "authentication required",
)
_AUTH_RE = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in AUTH_PHRASES) + r")\b")


def is_auth_message(message: str) -> bool:
    """Whether a server error's text says the key was refused (see :data:`AUTH_PHRASES`)."""
    text = " ".join(message.lower().replace("_", " ").replace("-", " ").split())
    return _AUTH_RE.search(text) is not None


def parse(raw: Union[str, bytes]) -> ServerMessage:
    """Parse one text frame from the server.

    Raises :class:`ProtocolError` for anything that is not a well-formed message.
    """
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"message of {len(raw)} bytes is over the {MAX_MESSAGE_BYTES} limit")
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"message is not valid UTF-8 ({exc.reason})") from None
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(raw)} characters is over the {MAX_MESSAGE_BYTES} limit")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:    # ValueError: also 5000-digit numbers
        raise ProtocolError(f"message is not JSON ({_short(exc)})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"message is a JSON {_JSON_NAMES.get(type(obj), 'value')}, "
                            "not an object")
    return parse_obj(obj)


def parse_obj(obj: dict[str, Any]) -> ServerMessage:
    step = obj.get("stepType")
    if step == "sentence":
        return _sentence(obj)
    if step == "final_answer":
        return _final_answer(obj)
    kind = obj.get("type")
    seq = _lenient_seq(obj)
    if kind == "ready":
        return Ready(session_id=_opt_str(obj, "session_id") or "", seq=seq)
    if kind == "stt.ready":
        return SttReady(seq=seq)
    if kind == "stt.partial":
        return SttPartial(text=_opt_str(obj, "text") or "", seq=seq)
    if kind == "stt.final":
        return SttFinal(text=_opt_str(obj, "text") or "", seq=seq)
    if kind == "barge":
        return Barge(seq=seq, reason=_opt_str(obj, "reason") or "")
    if kind == "error":
        return ServerError(message=_opt_str(obj, "message") or "(no message)", seq=seq)
    if step is not None:
        return Unknown(kind=f"stepType={_printable(step)}", seq=seq)
    if kind is None:
        raise ProtocolError("message has neither 'type' nor 'stepType'")
    return Unknown(kind=_printable(kind), seq=seq)


_JSON_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def _sentence(obj: dict[str, Any]) -> SentenceChunk:
    sid = obj.get("sentenceId")
    if isinstance(sid, bool) or not isinstance(sid, (int, str)):
        raise ProtocolError(f"sentence chunk has a bad sentenceId: {_printable(sid)}")
    index = _int(obj, "chunkIndex")
    if not 0 <= index <= MAX_CHUNK_INDEX:
        raise ProtocolError(f"sentence chunk has chunkIndex {index} outside 0..{MAX_CHUNK_INDEX}")
    is_last = obj.get("isLastChunk", False)
    if not isinstance(is_last, bool):
        raise ProtocolError(f"sentence chunk has a non-boolean isLastChunk: {_printable(is_last)}")
    audio = obj.get("audioBase64")
    if audio is not None and not isinstance(audio, str):
        raise ProtocolError(f"sentence chunk has a non-string audioBase64: {type(audio).__name__}")
    mime = obj.get("audioMime") or "audio/mp3"
    if not isinstance(mime, str):
        raise ProtocolError("sentence chunk has a non-string audioMime")
    return SentenceChunk(seq=_seq(obj), sentence_id=sid, chunk_index=index, is_last=is_last,
                         audio_b64=audio or None, text=_opt_str(obj, "contentStep"), mime=mime)


def _final_answer(obj: dict[str, Any]) -> FinalAnswer:
    text = ""
    full = obj.get("fullResponse")
    if isinstance(full, dict):
        answers = full.get("answers")
        if isinstance(answers, list) and answers and isinstance(answers[0], dict):
            output = answers[0].get("output")
            text = output if isinstance(output, str) else ""
    duration = obj.get("stepDuration")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        duration = None
    return FinalAnswer(seq=_seq(obj), text=text, duration_ms=duration)


def _seq(obj: dict[str, Any]) -> int:
    seq = _int(obj, "seq")
    if seq < 0:
        raise ProtocolError(f"seq {seq} is negative")
    return seq


def _lenient_seq(obj: dict[str, Any]) -> Optional[int]:
    # Not audio: a seq that is not a non-negative integer is ignored, the message kept
    # (a barge then stops what is playing now rather than being refused).
    seq = obj.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        return None
    return seq


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"field '{key}' must be an integer, got {_printable(value)}")
    return value


def _opt_str(obj: dict[str, Any], key: str) -> Optional[str]:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"field '{key}' must be a string, got {_printable(value)}")
    return value


def _printable(value: Any, limit: int = 40) -> str:
    # A long string is described, not quoted: a server echoing the key in a wrong field
    # must not put even part of it in a log line.
    if isinstance(value, str) and len(value) > 16:
        return f"a string of {len(value)} characters"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(exc: Exception) -> str:
    return str(exc)[:80]


# --- client to server ------------------------------------------------------------------

def start_message(*, private_key: str, session_id: str, agent_id: str, lang: str,
                  key_field: str = "private_key") -> str:
    """The first frame of every connection. Carries the secret: never log the result."""
    return json.dumps({"type": "start", key_field: private_key, "session_id": session_id,
                       "agent_id": agent_id, "lang": lang, "sr": SAMPLE_RATE})


def stop_message() -> str:
    return '{"type":"stop"}'


def barge_message() -> str:
    return '{"type":"barge"}'
