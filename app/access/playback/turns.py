"""Turns of a conversation, derived from its event timeline: who spoke when, how long the pipeline took.

A pure function over timeline lines (`render.timeline`): no I/O, so a test can hand-build the events of either
family. Voice Live and the Realtime preview name response audio `response.audio.delta`; the Realtime GA names it
`response.output_audio.delta`; both are read alike. All times are session time (`t_ms`, when the frame crossed
the relay), so the latencies are what the client saw.

A turn opens when the caller starts speaking (server VAD) or, without VAD, at the commit or at a response the
client asked for. Its latencies run from the end of the caller's speech (`speech_stopped`, else the commit) to
the first response audio frame relayed to the client, and to `response.done`. It was interrupted (barge-in) when
the caller started speaking while its response was in progress or its audio was still playing on the session
clock (audio queued ahead is played after what came before it), or when the response was cancelled or its item
truncated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import median_low
from typing import Any

RESPONSE_AUDIO = frozenset({"response.audio.delta", "response.output_audio.delta"})
SPEECH_STARTED = "input_audio_buffer.speech_started"
SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
COMMITTED = "input_audio_buffer.committed"
CANCELLED_TYPES = frozenset({"response.cancelled", "response.cancel"})


@dataclass
class Turn:
    index: int
    speech_started_ms: int | None = None
    speech_started_audio_ms: int | None = None
    speech_stopped_ms: int | None = None
    speech_stopped_audio_ms: int | None = None
    committed_ms: int | None = None
    response_id: str | None = None
    response_created_ms: int | None = None
    first_audio_ms: int | None = None
    audio_ms: int = 0
    audio_playing_until_ms: int | None = None
    response_done_ms: int | None = None
    response_status: str | None = None
    interrupted: bool = False
    interrupted_at_ms: int | None = None
    interrupted_by: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def latency_from_ms(self) -> int | None:
        return self.speech_stopped_ms if self.speech_stopped_ms is not None else self.committed_ms

    def latency_to(self, at_ms: int | None) -> int | None:
        start = self.latency_from_ms
        return at_ms - start if at_ms is not None and start is not None else None

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "speech_started_ms": self.speech_started_ms, "speech_started_audio_ms": self.speech_started_audio_ms,
            "speech_stopped_ms": self.speech_stopped_ms, "speech_stopped_audio_ms": self.speech_stopped_audio_ms,
            "committed_ms": self.committed_ms, "response_id": self.response_id,
            "response_created_ms": self.response_created_ms, "first_audio_ms": self.first_audio_ms,
            "response_audio_ms": self.audio_ms, "audio_playing_until_ms": self.audio_playing_until_ms,
            "response_done_ms": self.response_done_ms, "response_status": self.response_status,
            "latency_first_audio_ms": self.latency_to(self.first_audio_ms),
            "latency_done_ms": self.latency_to(self.response_done_ms),
            "interrupted": self.interrupted, "interrupted_at_ms": self.interrupted_at_ms,
            "interrupted_by": self.interrupted_by, "errors": self.errors, "gaps": self.gaps,
        }


@dataclass
class TurnReport:
    turns: list[Turn] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        def spread(values: list[int]) -> dict[str, int | None]:
            return {"p50": median_low(values) if values else None, "max": max(values) if values else None,
                    "count": len(values)}

        first = [v for t in self.turns if (v := t.latency_to(t.first_audio_ms)) is not None]
        done = [v for t in self.turns if (v := t.latency_to(t.response_done_ms)) is not None]
        return {
            "turns": [t.as_json() for t in self.turns],
            "summary": {"turns": len(self.turns), "latency_first_audio_ms": spread(first),
                        "latency_done_ms": spread(done),
                        "interruptions": sum(1 for t in self.turns if t.interrupted),
                        "errors": len(self.errors), "gaps": len(self.gaps)},
            "errors": self.errors, "gaps": self.gaps,
        }


class TurnDeriver:
    """Walks the lines once, in session-time order, keeping the turns and which response belongs to which."""

    def __init__(self) -> None:
        self.report = TurnReport()
        self.by_response: dict[str, Turn] = {}
        self.responding: Turn | None = None  # the turn whose response came last
        self.service_free_ms = 0  # when the service audio queued so far ends on the session clock

    def open(self) -> Turn:
        turn = Turn(index=len(self.report.turns) + 1)
        self.report.turns.append(turn)
        return turn

    @property
    def current(self) -> Turn | None:
        return self.report.turns[-1] if self.report.turns else None

    def awaiting_response(self) -> Turn:
        """The latest turn that has no response yet, or a new one (a response the client asked for)."""
        turn = self.current
        return turn if turn is not None and turn.response_id is None and turn.response_created_ms is None \
            else self.open()

    def interrupt(self, turn: Turn | None, at_ms: int, by: str) -> None:
        if turn is not None and not turn.interrupted:
            turn.interrupted, turn.interrupted_at_ms, turn.interrupted_by = True, at_ms, by

    def turn_of(self, line: dict[str, Any]) -> Turn | None:
        rid = line.get("response_id")
        return self.by_response.get(rid) if isinstance(rid, str) and rid in self.by_response else self.responding

    def still_responding(self, turn: Turn | None, at_ms: int) -> bool:
        if turn is None or turn.response_created_ms is None:
            return False
        in_progress = turn.response_done_ms is None
        playing = turn.audio_playing_until_ms is not None and at_ms < turn.audio_playing_until_ms
        return in_progress or playing

    def feed(self, line: dict[str, Any]) -> None:
        kind, t_ms, direction = str(line.get("type", "")), int(line.get("t_ms", 0)), line.get("direction")
        if kind == "gap":
            gap = {"at_ms": t_ms, "to_ms": line.get("to_ms"), "frames": line.get("frames"),
                   "reason": line.get("reason")}
            self.report.gaps.append(gap)
            if self.current is not None:
                self.current.gaps.append(gap)
        elif direction == "c2s":
            if kind in CANCELLED_TYPES:
                self.interrupt(self.responding, t_ms, "cancelled")
        elif kind == SPEECH_STARTED:
            if self.still_responding(self.responding, t_ms):
                self.interrupt(self.responding, t_ms, "caller_speech")
            turn = self.open()
            turn.speech_started_ms = t_ms
            turn.speech_started_audio_ms = _int(line.get("audio_start_ms"))
        elif kind == SPEECH_STOPPED:
            turn = self.current if self.current is not None and self.current.response_created_ms is None \
                else self.open()
            turn.speech_stopped_ms = t_ms
            turn.speech_stopped_audio_ms = _int(line.get("audio_end_ms"))
        elif kind == COMMITTED:
            turn = self.current if self.current is not None and self.current.response_created_ms is None \
                else self.open()
            if turn.committed_ms is None:
                turn.committed_ms = t_ms
        elif kind == "response.created":
            turn = self.awaiting_response()
            turn.response_created_ms = t_ms
            self.respond(turn, line)
        elif kind in RESPONSE_AUDIO:
            found = self.turn_of(line)
            if found is None:
                found = self.awaiting_response()
                found.response_created_ms = t_ms
                self.respond(found, line)
            turn = found
            if turn.first_audio_ms is None:
                turn.first_audio_ms = t_ms
            length = _int(line.get("audio_ms")) or 0
            turn.audio_ms += length
            self.service_free_ms = max(self.service_free_ms, t_ms) + length
            turn.audio_playing_until_ms = self.service_free_ms
        elif kind == "response.done":
            done = self.turn_of(line)
            if done is not None:
                done.response_done_ms = t_ms
                done.response_status = line.get("response_status")
                if done.response_status == "cancelled":
                    self.interrupt(done, t_ms, "cancelled")
        elif kind in CANCELLED_TYPES:
            self.interrupt(self.turn_of(line), t_ms, "cancelled")
        elif kind == "conversation.item.truncated":
            self.interrupt(self.responding, t_ms, "truncated")
        elif kind == "error":
            error = {"at_ms": t_ms, "code": line.get("error_code") or "error"}
            self.report.errors.append(error)
            if self.current is not None:
                self.current.errors.append(error)

    def respond(self, turn: Turn, line: dict[str, Any]) -> None:
        rid = line.get("response_id")
        if isinstance(rid, str):
            turn.response_id = rid
            self.by_response[rid] = turn
        self.responding = turn


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def derive_turns(lines: Iterable[dict[str, Any]]) -> TurnReport:
    """The turns of a session from its timeline lines (any order: they are taken by session time).

    Playback feeds a `TurnDeriver` line by line instead: the timeline streams in session-time order already."""
    deriver = TurnDeriver()
    for line in sorted(lines, key=lambda item: int(item.get("t_ms", 0))):
        deriver.feed(line)
    return deriver.report
