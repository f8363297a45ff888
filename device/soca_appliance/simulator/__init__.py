"""A local stand-in for Soca AI's Voice Stream server (``soca-appliance simulate``).

Owns the simulated server side of the protocol described in PROTOCOL.md: the ``start``
handshake and its errors, voice activity detection on the uploaded PCM (webrtcvad), canned
``stt.partial``/``stt.final`` transcripts, chunked MP3 sentence answers taken from the
bundled assets (``assets/manifest.json``), ``final_answer``, sequence numbers and barge-in
(server-detected and manual). It speaks plain ``ws://`` on loopback and is meant for
development, tests and benchmarks, never for production.

Liberal like the real service: a binary frame of any even length is PCM16 audio (the
page recommends 20 to 50 ms; its own browser client sends 4096 samples, 8192 bytes, up to
the 64 KiB message limit); an odd length, a text frame that is not JSON or an unknown type
is a protocol error, answered with ``{"type":"error"}`` (the session goes on) and logged
with its reason, like every refused ``start``.

A sentence's audio is sent as base64 TEXT cut at random, seeded lengths by default
(``chunking="text"``: no chunk decodes alone, the joined text does), or with each MP3 slice
encoded on its own (``chunking="slices"``: chunks padded on their own, ``=`` mid-string
once joined, which the page's ``atob`` refuses). See :mod:`.chunking`.

Barge-in follows the page's gate table as far as a simulator can (:mod:`.gate`): 0.6 s of
voiced speech (standing in for "10 characters and 2 words"), reached within 1.5 s of the
VAD onset, at most one barge per 0.8 s. It cannot imitate STT confidence (there is no
recognizer) nor filler words (a long "ummm" is voiced speech and barges).

All speech timing is counted in received audio (20 ms sub-frames), not wall-clock time, so
that a client may send faster than real time and still get the same events. Only the
"agent is answering" window is wall-clock: it lasts from the first sentence until the
estimated end of the client's playback (when each sentence was sent plus its duration,
plus 0.5 s); and the barge cooldown takes the larger of audio and wall-clock time.

:class:`Simulator` runs either on its own thread (:meth:`Simulator.start` /
:meth:`Simulator.stop`, for tests) or in the caller's event loop
(:meth:`Simulator.serve_forever`, for the CLI). :func:`main` is the CLI entry point.

Modules: :mod:`.assets` (manifest and MP3s), :mod:`.chunking` (how a sentence is cut into
chunks), :mod:`.gate` (the barge-in gate), :mod:`.session` (one session after ``start``),
:mod:`.server` (the listener, the handshake, test hooks), :mod:`.cli`
(``soca-appliance simulate``).
"""
from __future__ import annotations

from .assets import AssetError, _Sentence, _Turn, default_assets_dir, load_assets, mp3_duration
from .chunking import CHUNKINGS, split_chunks
from .gate import GateConfig
from .cli import DEFAULT_PORT, KEY_ENV, main
from .server import ERR_AUTH, ERR_START, MAX_CONNECTIONS, Simulator
from .session import SAMPLE_RATE, _Session, _Stats

__all__ = ["AssetError", "CHUNKINGS", "DEFAULT_PORT", "GateConfig", "ERR_AUTH", "ERR_START", "KEY_ENV", "MAX_CONNECTIONS",
           "SAMPLE_RATE", "Simulator", "default_assets_dir", "load_assets", "main",
           "mp3_duration", "split_chunks"]
