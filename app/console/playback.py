"""The playback page of one request ID: the session clock, turns, event timeline, transcripts (C4, C5).

Every part is read through the API's own use case, `read_recording_part` (authorized, audited with the bytes
served, in the request's one transaction); a refusal of any kind is the API's one answer, `recording_not_available`.
The page reads the timeline and the transcripts; its turns are derived from that timeline (no further read); its
player fetches the stereo WAV on the session clock, and the "as sent" players each direction's WAV.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.playback.parts import PART_OF_SPEAKER, Part, Speaker
from app.access.playback.reads import PartRead, read_recording_part, read_whole
from app.access.playback.service import RecordingNotAvailable
from app.access.playback.turns import Turn, derive_turns
from app.access.saw.trust import saw_fingerprint
from app.console.auth import signed_in
from app.console.templating import page
from app.context import AppContext
from app.deps import ContextDep, SessionDep
from app.identity.principal import Principal

AUDIO_TYPES = frozenset({"input_audio_buffer.append", "response.audio.delta", "response.output_audio.delta",
                         "response.audio_transcript.delta", "response.output_audio_transcript.delta"})
MAX_SHOWN_EVENTS = 2000


@dataclass(frozen=True)
class TimelineEvent:
    """One event as the page shows it: its session time (where it sits on the stereo WAV) and its mark."""

    t_ms: int
    track: str
    kind: str  # speech, response, latency, transcript, error, gap, end, session, other
    label: str
    detail: str
    audio_ms: int | None = None  # the pipeline's own offset in the caller's input audio, if it sent one


def _classify(line: dict[str, Any]) -> TimelineEvent | None:
    kind_of = str(line.get("type", ""))
    if kind_of in AUDIO_TYPES:
        return None
    t_ms = int(line.get("t_ms", 0))
    track = "caller" if line.get("direction") == "c2s" else "service"
    detail, audio_ms = "", None
    if kind_of in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"):
        kind, track = "speech", "caller"
        offset = line.get("audio_start_ms" if kind_of.endswith("started") else "audio_end_ms")
        if isinstance(offset, int):
            audio_ms, detail = offset, f"pipeline's caller-audio offset {offset} ms"
    elif kind_of == "gap":
        kind, detail = "gap", f"{line.get('frames', 0)} frames lost until {line.get('to_ms')} ms ({line.get('reason')})"
    elif kind_of == "error":
        kind, detail = "error", str(line.get("error_code") or "")
    elif kind_of == "end":
        kind, detail = "end", str(line.get("ended_by") or "")
    elif "transcri" in kind_of:
        kind = "transcript"
    elif kind_of.startswith("response."):
        kind, detail = "response", str(line.get("response_id") or "")
        if line.get("response_status"):
            detail = f"{detail} {line['response_status']}".strip()
    elif kind_of.startswith("session."):
        kind = "session"
    else:
        kind = "other"
    return TimelineEvent(t_ms=t_ms, track=track, kind=kind, label=kind_of, detail=detail, audio_ms=audio_ms)


def latency_events(turns: list[Turn]) -> list[TimelineEvent]:
    """One timeline entry per answered turn, at its first response audio: the latency the caller waited."""
    out = []
    for turn in turns:
        waited = turn.latency_to(turn.first_audio_ms)
        if turn.first_audio_ms is not None and waited is not None:
            out.append(TimelineEvent(t_ms=turn.first_audio_ms, track="service", kind="latency",
                                     label=f"turn {turn.index}: first response audio",
                                     detail=f"{waited} ms after the caller stopped"))
    return out


def timeline_events(lines: list[dict[str, Any]], turns: list[Turn]) -> list[TimelineEvent]:
    """The page's events, sorted by session time (stable: frames keep the relay's order)."""
    shown = [e for e in (_classify(line) for line in lines) if e is not None] + latency_events(turns)
    return sorted(shown, key=lambda e: e.t_ms)


@dataclass(frozen=True)
class Mark:
    x: float
    kind: str
    label: str


@dataclass(frozen=True)
class Span:
    """A turn's wait on the strip: from the caller's speech stop to the first response audio."""

    x: float
    width: float
    label: str


def timeline_marks(events: list[TimelineEvent], turns: list[Turn],
                   width: float = 1000.0) -> tuple[list[Mark], list[Span], int]:
    """Positions on a 0..width axis spanning the session, for the server-drawn SVG strip."""
    span = max([1, *(e.t_ms for e in events)])

    def x(ms: int) -> float:
        return round(ms * width / span, 1)

    marks = [Mark(x(e.t_ms), e.kind, f"{e.label} at {e.t_ms} ms") for e in events if e.kind != "latency"]
    waits = [Span(x(start), max(1.0, x(t.first_audio_ms) - x(start)),
                  f"turn {t.index}: {t.first_audio_ms - start} ms to first audio")
             for t in turns if (start := t.latency_from_ms) is not None and t.first_audio_ms is not None]
    return marks, waits, span


router = APIRouter(prefix="/console/recordings", include_in_schema=False)


async def _read(ctx: AppContext, db: AsyncSession, http_request: Request, actor: Principal, request_id: str,
                part: Part) -> PartRead:
    return await read_recording_part(session=db, clock=ctx.clock, access=ctx.access, keyrings=ctx.keyrings,
                                     stores=ctx.stores, saw_fingerprint=saw_fingerprint(http_request, ctx.settings.saw),
                                     actor=actor, request_id=request_id, part=part,
                                     range_header=http_request.headers.get("range"))


@router.get("/{request_id}")
async def playback(request_id: str, http_request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    session, actor = await signed_in(http_request, ctx, db=db)
    try:
        timeline = await _read(ctx, db, http_request, actor, request_id, "timeline")
        lines = [json.loads(line) for line in (await read_whole(timeline)).splitlines()]
        said_read = await _read(ctx, db, http_request, actor, request_id, "transcripts")
    except RecordingNotAvailable as refused:  # audited; the request's transaction keeps the entry
        return page(http_request, "not_available.html", session, status_code=refused.status, error=refused)
    said = json.loads(await read_whole(said_read))["transcripts"]
    allowed = timeline.allowed
    report = derive_turns(lines)
    summary = report.as_json()["summary"]
    events = timeline_events(lines, report.turns)
    marks, waits, span_ms = timeline_marks(events, report.turns)
    return page(http_request, "playback.html", session, request_id=request_id, recording=allowed.recording,
                grant=allowed.grant, events=events[:MAX_SHOWN_EVENTS],
                hidden=max(0, len(events) - MAX_SHOWN_EVENTS), turns=report.turns, summary=summary,
                marks=marks, waits=waits, span_ms=span_ms, transcripts=said, saw=allowed.saw)


@router.get("/{request_id}/audio/session.wav")
async def session_audio(request_id: str, http_request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    """The API's stereo WAV on the session clock (same authorization, audit and Range handling), for the player."""
    _session, actor = await signed_in(http_request, ctx, db=db)
    wav = await _read(ctx, db, http_request, actor, request_id, "audio_session")
    return StreamingResponse(wav.body, status_code=wav.status, media_type=wav.media_type, headers=wav.headers)


@router.get("/{request_id}/audio/{speaker}.wav")
async def audio(request_id: str, speaker: Speaker, http_request: Request, ctx: ContextDep,
                db: SessionDep) -> Response:
    """The API's WAV of one direction as sent (same authorization, audit and Range handling)."""
    _session, actor = await signed_in(http_request, ctx, db=db)
    wav = await _read(ctx, db, http_request, actor, request_id, PART_OF_SPEAKER[speaker])
    return StreamingResponse(wav.body, status_code=wav.status, media_type=wav.media_type, headers=wav.headers)


@router.get("/{request_id}/bundle")
async def bundle(request_id: str, http_request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    """The API's debug bundle (one audited read), downloaded from the page."""
    _session, actor = await signed_in(http_request, ctx, db=db)
    read = await _read(ctx, db, http_request, actor, request_id, "bundle")
    return StreamingResponse(read.body, status_code=read.status, media_type=read.media_type, headers=read.headers)
