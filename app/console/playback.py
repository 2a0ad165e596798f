"""The playback page of one request ID: waveforms, event timeline, transcripts (C4, C5: same refusal as the API).

Every part is authorized and audited exactly as the API's playback endpoints do it (authorize_read, then
audit_read with the bytes served); a refusal of any kind is the API's one answer, `recording_not_available`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.playback.render import parse_range, plan_track, timeline, track_pcm, transcripts, wav_header, wav_window
from app.access.playback.service import AllowedRead, RecordingNotAvailable, audit_read, authorize_read
from app.capture.reader import RecordingStream
from app.clock import Clock
from app.console.auth import signed_in
from app.console.staff import access_context
from app.console.templating import page
from app.deps import AppContext
from app.identity.principal import Principal

SPEAKERS = {"caller": "audio_inbound", "service": "audio_outbound"}
AUDIO_TYPES = frozenset({"input_audio_buffer.append", "response.audio.delta", "response.output_audio.delta",
                         "response.audio_transcript.delta", "response.output_audio_transcript.delta"})
MAX_SHOWN_EVENTS = 2000


def _ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


async def _authorize(request: Request, db: AsyncSession, clock: Clock, who: Principal, request_id: str,
                     part: str) -> AllowedRead:
    access = access_context(request)
    allowed = await authorize_read(session=db, clock=clock, directory=access.directory, saws=access.saws,
                                   limiter=access.limiter, metrics=access.metrics, request=request, who=who,
                                   request_id=request_id, part=part, retention=access.retention)
    if allowed is None:
        await db.commit()  # the refusal is audited even though the read fails, as in the API
        raise RecordingNotAvailable()
    return allowed


def _stream(request: Request, allowed: AllowedRead) -> RecordingStream:
    state = request.app.state
    return RecordingStream(allowed.recording, keyrings=state.keyrings, stores=state.stores)


def _ndjson_size(line: dict[str, Any]) -> int:
    return len((json.dumps(line, separators=(",", ":")) + "\n").encode())


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


def build_playback_router(clock: Clock) -> APIRouter:
    router = APIRouter(prefix="/console/recordings", include_in_schema=False)

    @router.get("/{request_id}")
    async def playback(request_id: str, request: Request) -> Response:
        session, who = await signed_in(request)
        async with _ctx(request).session_factory() as db:
            try:
                allowed = await _authorize(request, db, clock, who, request_id, "timeline")
            except RecordingNotAvailable as refused:
                return page(request, "not_available.html", session, status_code=refused.status, error=refused)
            lines = [line async for line in timeline(_stream(request, allowed))]
            metrics = access_context(request).metrics
            await audit_read(session=db, clock=clock, who=who, allowed=allowed, part="timeline",
                             nbytes=sum(_ndjson_size(line) for line in lines), device=allowed.saw.id, metrics=metrics)
            try:
                allowed_t = await _authorize(request, db, clock, who, request_id, "transcripts")
            except RecordingNotAvailable as refused:
                return page(request, "not_available.html", session, status_code=refused.status, error=refused)
            said = await transcripts(_stream(request, allowed_t))
            body = json.dumps({"request_id": request_id, "transcripts": said}, separators=(",", ":")).encode()
            await audit_read(session=db, clock=clock, who=who, allowed=allowed_t, part="transcripts",
                             nbytes=len(body), device=allowed_t.saw.id, metrics=metrics)
            await db.commit()
        events = [e for e in (_classify(line) for line in lines) if e is not None]
        marks, span_ms = timeline_marks(events)
        return page(request, "playback.html", session, request_id=request_id, recording=allowed.recording,
                    grant=allowed.grant, events=events[:MAX_SHOWN_EVENTS],
                    hidden=max(0, len(events) - MAX_SHOWN_EVENTS),
                    marks=marks, span_ms=span_ms, transcripts=said, saw=allowed.saw)

    @router.get("/{request_id}/audio/{speaker}.wav")
    async def audio(request_id: str, speaker: Literal["caller", "service"], request: Request) -> Response:
        """The API's WAV of one direction (same authorization, audit and Range handling), for the page's player."""
        _session, who = await signed_in(request)
        part = SPEAKERS[speaker]
        async with _ctx(request).session_factory() as db:
            allowed = await _authorize(request, db, clock, who, request_id, part)
            plan = await plan_track(_stream(request, allowed), speaker)
            header = wav_header(plan.rate, plan.data_bytes)
            total = len(header) + plan.data_bytes
            window = parse_range(request.headers.get("range"), total)
            start, end = window if window else (0, total - 1)
            await audit_read(session=db, clock=clock, who=who, allowed=allowed, part=part, nbytes=end - start + 1,
                             device=allowed.saw.id, metrics=access_context(request).metrics)
            await db.commit()
        headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1), "Cache-Control": "no-store",
                   "X-Voicelog-Gaps": json.dumps(plan.gaps, separators=(",", ":"))}
        if window:
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        return StreamingResponse(wav_window(header, track_pcm(_stream(request, allowed), speaker), start, end),
                                 status_code=206 if window else 200, media_type="audio/wav", headers=headers)

    return router
