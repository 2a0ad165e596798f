"""The playback page of one request ID: waveforms, event timeline, transcripts (C4, C5: same refusal as the API).

Every part is read through the API's own use case, `read_recording_part` (authorized, audited with the bytes
served, in the request's one transaction); a refusal of any kind is the API's one answer, `recording_not_available`.
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
    """One event as the page shows it: where it sits on the audio, and what kind of mark it gets."""

    t_ms: int
    seek_ms: int
    track: str
    kind: str  # speech, response, transcript, error, gap, end, session, other
    label: str
    detail: str


def _classify(line: dict[str, Any]) -> TimelineEvent | None:
    kind_of = str(line.get("type", ""))
    if kind_of in AUDIO_TYPES:
        return None
    t_ms = int(line.get("t_ms", 0))
    track = "caller" if line.get("direction") == "c2s" else "service"
    seek, detail = t_ms, ""
    if kind_of == "input_audio_buffer.speech_started":
        kind, track, seek = "speech", "caller", int(line.get("audio_start_ms", t_ms))
        detail = f"caller audio at {seek} ms"
    elif kind_of == "input_audio_buffer.speech_stopped":
        kind, track, seek = "speech", "caller", int(line.get("audio_end_ms", t_ms))
        detail = f"caller audio at {seek} ms"
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
    elif kind_of.startswith("session."):
        kind = "session"
    else:
        kind = "other"
    return TimelineEvent(t_ms=t_ms, seek_ms=max(0, seek), track=track, kind=kind, label=kind_of, detail=detail)


@dataclass(frozen=True)
class Mark:
    x: float
    kind: str
    label: str


def timeline_marks(events: list[TimelineEvent], width: float = 1000.0) -> tuple[list[Mark], int]:
    """Positions on a 0..width axis spanning the session, for the server-drawn SVG strip."""
    span = max([1, *(e.seek_ms for e in events), *(e.t_ms for e in events)])
    return [Mark(round(e.seek_ms * width / span, 1), e.kind, f"{e.label} at {e.seek_ms} ms") for e in events], span


router = APIRouter(prefix="/console/recordings", include_in_schema=False)


async def _read(ctx: AppContext, db: AsyncSession, http_request: Request, acting: Principal, request_id: str,
                part: Part) -> PartRead:
    return await read_recording_part(session=db, clock=ctx.clock, access=ctx.access, keyrings=ctx.keyrings,
                                     stores=ctx.stores, http_request=http_request, acting=acting, request_id=request_id,
                                     part=part, range_header=http_request.headers.get("range"))


@router.get("/{request_id}")
async def playback(request_id: str, http_request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    session, acting = await signed_in(http_request, ctx, db=db)
    try:
        timeline = await _read(ctx, db, http_request, acting, request_id, "timeline")
        lines = [json.loads(line) for line in (await read_whole(timeline)).splitlines()]
        said_read = await _read(ctx, db, http_request, acting, request_id, "transcripts")
    except RecordingNotAvailable as refused:  # audited; the request's transaction keeps the entry
        return page(http_request, "not_available.html", session, status_code=refused.status, error=refused)
    said = json.loads(await read_whole(said_read))["transcripts"]
    allowed = timeline.allowed
    events = [e for e in (_classify(line) for line in lines) if e is not None]
    marks, span_ms = timeline_marks(events)
    return page(http_request, "playback.html", session, request_id=request_id, recording=allowed.recording,
                grant=allowed.grant, events=events[:MAX_SHOWN_EVENTS],
                hidden=max(0, len(events) - MAX_SHOWN_EVENTS),
                marks=marks, span_ms=span_ms, transcripts=said, saw=allowed.saw)


@router.get("/{request_id}/audio/{speaker}.wav")
async def audio(request_id: str, speaker: Speaker, http_request: Request, ctx: ContextDep,
                db: SessionDep) -> Response:
    """The API's WAV of one direction (same authorization, audit and Range handling), for the page's player."""
    _session, acting = await signed_in(http_request, ctx, db=db)
    wav = await _read(ctx, db, http_request, acting, request_id, PART_OF_SPEAKER[speaker])
    return StreamingResponse(wav.body, status_code=wav.status, media_type=wav.media_type, headers=wav.headers)
