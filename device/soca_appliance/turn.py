"""The conversation's per-session state: where the turn is, and which agent audio it admits.

Pure logic, no I/O, no threads. The orchestrator holds one :class:`Turn` per link session
and replaces it, in one place, when a new socket opens: nothing about the old session's
answers (its seqs, its final answers, a button press) can leak into the new one, whose
seqs start again. The seq rule itself (the current seq, what is older) lives in the
assembler; a Turn adds what the orchestrator decides on top of it.
"""
from __future__ import annotations

from dataclasses import dataclass

PHASES = ("connecting", "ready", "listening", "thinking", "speaking")


@dataclass
class Turn:
    """``phase``: the conversation state shown to the user (``connecting`` until the
    session is declared connected). ``answered``: the highest seq whose final answer
    arrived. ``cut_through``: audio of seqs up to this one was cut short by the button and
    is never played. ``holding``: after a button press, audio of NEWER seqs is dropped too
    (the answer being prepared when the user pressed arrives with the next seq) until the
    server acknowledges with a barge, or the next final transcript starts a new turn."""
    phase: str = "connecting"
    answered: int = -1
    cut_through: int = -1
    holding: bool = False

    def answered_all(self, current_seq: int) -> bool:
        """Every answer up to the current seq has its final answer."""
        return self.answered >= current_seq

    def answer(self, seq: int) -> None:
        self.answered = max(self.answered, seq)

    def press(self, current_seq: int) -> None:
        """The button interrupted the agent at ``current_seq``."""
        self.cut_through = max(self.cut_through, current_seq)
        self.holding = True

    def release(self) -> None:
        """The server acknowledged the barge, or the user's next utterance is final."""
        self.holding = False

    def admit(self, seq: int) -> bool:
        """May audio of ``seq`` play? While holding, no: and that seq is over for good,
        so the rest of an answer dropped while holding never plays from its middle."""
        if self.holding:
            self.cut_through = max(self.cut_through, seq)
            return False
        return seq > self.cut_through
