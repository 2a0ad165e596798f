"""Thin HTTP layer for JIT access and point-wise playback. No endpoint lists or searches recordings (C4)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import service, transparency
from app.access.context import AccessContext
from app.access.models import AccessRequest
from app.access.notify import notify_team
from app.access.playback.render import (
    parse_range,
    plan_track,
    timeline,
    track_pcm,
    transcripts,
    wav_header,
    wav_window,
)
from app.access.playback.service import AllowedRead, RecordingNotAvailable, audit_read, authorize_read
from app.access.schemas import AccessRequestCreate, AccessRequestOut, Decision, Extension
from app.capture.reader import RecordingStream
from app.deps import ClockDep, SessionDep
from app.errors import InvalidInput
from app.identity.principal import Principal, Role, authenticate
from app.identity.staff.service import authorize_staff
from app.tickets.service import customer_resource

router = APIRouter(tags=["access"])
CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


def _ctx(request: Request) -> AccessContext:
    ctx: AccessContext = request.app.state.access
    return ctx


async def _person(session: AsyncSession, ctx: AccessContext, who: Principal, *roles: Role) -> service.Person:
    """The one role check (`authorize_staff`: token AND active staff record hold one of `roles`), then the
    access view of the person with only the roles both grant, so no decision counts a role one of them lacks."""
    staff = await authorize_staff(session=session, principal=who, roles=roles)
    person = await ctx.directory.person(session, who.subject)
    if person is None:
        raise service.NotStaff()
    return replace(person, roles=frozenset(r.value for r in staff.roles))


async def _out(session: AsyncSession, row: AccessRequest) -> AccessRequestOut:
    def iso(value: object) -> str | None:
        return value.isoformat() if value is not None else None  # type: ignore[attr-defined]

    return AccessRequestOut(
        id=row.id, requester=row.requester, ticket_id=row.ticket_id,
        request_ids=await service.request_ids_of(session=session, access_request=row),
        justification=row.justification, state=row.state, requested_minutes=row.requested_duration_s // 60,
        created_at=row.created_at.isoformat(), decided_by=row.decided_by, decided_at=iso(row.decided_at),
        expires_at=iso(row.expires_at), extends_id=row.extends_id,
        needs_customer_approval=row.needs_customer_approval, customer_approved=row.customer_approved)


# --- requests and grants ---------------------------------------------------------------------------------


@router.post("/access/requests", status_code=201, summary="Ask for just-in-time access (engineer)")
async def create_request(body: AccessRequestCreate, who: CurrentPrincipal, session: SessionDep, clock: ClockDep,
                         request: Request) -> AccessRequestOut:
    person = await _person(session, _ctx(request), who, Role.ENGINEER)
    row = await service.create_request(session=session, clock=clock, requester=person, data=service.NewRequest(
        ticket_id=body.ticket_id, request_ids=body.request_ids, justification=body.justification,
        duration=timedelta(minutes=body.duration_minutes)))
    await notify_team(session=session, notifier=_ctx(request).notifier, row=row, event="access.requested")
    return await _out(session, row)


@router.get("/access/requests", summary="My access requests and grants (engineer)")
async def my_requests(who: CurrentPrincipal, session: SessionDep, request: Request) -> list[AccessRequestOut]:
    await _person(session, _ctx(request), who, Role.ENGINEER)
    return [await _out(session, r) for r in await service.requests_of(session=session, requester=who.subject)]


@router.get("/access/queue", summary="Pending requests of the teams I manage (manager)")
async def queue(who: CurrentPrincipal, session: SessionDep, request: Request) -> list[AccessRequestOut]:
    ctx = _ctx(request)
    person = await _person(session, ctx, who, Role.MANAGER)
    teams = await ctx.directory.teams_managed(session, who.subject)
    return [await _out(session, r) for r in await service.queue_for(session=session, manager=person, team_ids=teams)]


@router.post("/access/requests/{access_request_id}/approve", summary="Approve (manager of the requester's team)")
async def approve(access_request_id: str, body: Decision, who: CurrentPrincipal, session: SessionDep,
                  clock: ClockDep, request: Request) -> AccessRequestOut:
    ctx = _ctx(request)
    person = await _person(session, ctx, who, Role.MANAGER)
    duration = timedelta(minutes=body.duration_minutes) if body.duration_minutes else None
    row = await service.approve(session=session, clock=clock, directory=ctx.directory,
                                access_request_id=access_request_id, manager=person, duration=duration)
    await notify_team(session=session, notifier=ctx.notifier, row=row, event="access.approved")
    return await _out(session, row)


@router.post("/access/requests/{access_request_id}/deny", summary="Deny with a reason (manager)")
async def deny(access_request_id: str, body: Decision, who: CurrentPrincipal, session: SessionDep, clock: ClockDep,
               request: Request) -> AccessRequestOut:
    ctx = _ctx(request)
    person = await _person(session, ctx, who, Role.MANAGER)
    if not body.reason.strip():
        raise InvalidInput("A denial needs a reason.")
    row = await service.deny(session=session, clock=clock, directory=ctx.directory,
                             access_request_id=access_request_id, manager=person, reason=body.reason.strip())
    await notify_team(session=session, notifier=ctx.notifier, row=row, event="access.denied")
    return await _out(session, row)


@router.post("/access/requests/{access_request_id}/revoke", summary="End a grant now (requester or manager)")
async def revoke(access_request_id: str, body: Decision, who: CurrentPrincipal, session: SessionDep,
                 clock: ClockDep, request: Request) -> AccessRequestOut:
    ctx = _ctx(request)
    person = await _person(session, ctx, who, Role.ENGINEER, Role.MANAGER)
    row = await service.revoke(session=session, clock=clock, directory=ctx.directory,
                               access_request_id=access_request_id, by=person, reason=body.reason.strip())
    await notify_team(session=session, notifier=ctx.notifier, row=row, event="access.revoked")
    return await _out(session, row)


@router.post("/access/requests/{access_request_id}/extend", status_code=201,
             summary="Ask for more time before the grant expires (needs a new approval)")
async def extend(access_request_id: str, body: Extension, who: CurrentPrincipal, session: SessionDep,
                 clock: ClockDep, request: Request) -> AccessRequestOut:
    person = await _person(session, _ctx(request), who, Role.ENGINEER)
    row = await service.extend(session=session, clock=clock, access_request_id=access_request_id, requester=person,
                               duration=timedelta(minutes=body.duration_minutes), justification=body.justification)
    return await _out(session, row)


@router.post("/customer/resources/{resource}/access-requests/{access_request_id}/{verdict}",
             summary="Customer Lockbox: approve or refuse a grant on my recordings (customer admin)")
async def customer_verdict(resource: str, access_request_id: str, verdict: Literal["approve", "refuse"],
                           who: CurrentPrincipal, session: SessionDep, clock: ClockDep) -> AccessRequestOut:
    owned = await customer_resource(session=session, principal=who, name=resource)
    row = await service.customer_decide(session=session, clock=clock, access_request_id=access_request_id,
                                        customer=who.subject, resource_id=owned.id, approve=verdict == "approve")
    return await _out(session, row)


# --- playback (point-wise) ------------------------------------------------------------------------------

Part = Literal["audio_inbound", "audio_outbound", "timeline", "transcripts"]
SPEAKERS = {"caller": "audio_inbound", "service": "audio_outbound"}


async def _authorize(request: Request, session: AsyncSession, clock: ClockDep, who: Principal, request_id: str,
                     part: str) -> AllowedRead:
    ctx = _ctx(request)
    allowed = await authorize_read(session=session, clock=clock, directory=ctx.directory, saws=ctx.saws,
                                   limiter=ctx.limiter, metrics=ctx.metrics, request=request, who=who,
                                   request_id=request_id, part=part, retention=ctx.retention)
    if allowed is None:
        await session.commit()  # the refusal is audited even though the request fails
        raise RecordingNotAvailable()
    return allowed


def _stream(request: Request, allowed: AllowedRead) -> RecordingStream:
    state = request.app.state
    return RecordingStream(allowed.recording, keyrings=state.keyrings, stores=state.stores)


@router.get("/recordings/{request_id}/audio/{speaker}.wav", summary="One direction of a recording as WAV",
            responses={404: {"description": "Unknown, not granted, not from your SAW, expired: one answer."}})
async def audio(request_id: str, speaker: Literal["caller", "service"], who: CurrentPrincipal, session: SessionDep,
                clock: ClockDep, request: Request,
                range_header: Annotated[str | None, Header(alias="range")] = None) -> StreamingResponse:
    """pcm16 WAV at the session's rate (G.711 decoded); gaps are silence, listed in `X-Voicelog-Gaps`.
    Streams with bounded memory; supports a single `Range`."""
    part = SPEAKERS[speaker]
    allowed = await _authorize(request, session, clock, who, request_id, part)
    plan = await plan_track(_stream(request, allowed), speaker)
    header = wav_header(plan.rate, plan.data_bytes)
    total = len(header) + plan.data_bytes
    window = parse_range(range_header, total)
    start, end = window if window else (0, total - 1)
    await audit_read(session=session, clock=clock, who=who, allowed=allowed, part=part, nbytes=end - start + 1,
                     device=allowed.saw.id, metrics=_ctx(request).metrics)

    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1),
               "X-Voicelog-Gaps": json.dumps(plan.gaps, separators=(",", ":")), "Cache-Control": "no-store"}
    if window:
        headers["Content-Range"] = f"bytes {start}-{end}/{total}"
    return StreamingResponse(wav_window(header, track_pcm(_stream(request, allowed), speaker), start, end),
                             status_code=206 if window else 200, media_type="audio/wav", headers=headers)


@router.get("/recordings/{request_id}/events", summary="The event timeline (JSON lines, audio elided)",
            responses={404: {"description": "One answer for every refusal."}})
async def events(request_id: str, who: CurrentPrincipal, session: SessionDep, clock: ClockDep,
                 request: Request) -> StreamingResponse:
    allowed = await _authorize(request, session, clock, who, request_id, "timeline")
    nbytes = 0
    async for line in timeline(_stream(request, allowed)):  # pass one: the size, for the audit entry
        nbytes += len(_ndjson(line))
    await audit_read(session=session, clock=clock, who=who, allowed=allowed, part="timeline", nbytes=nbytes,
                     device=allowed.saw.id, metrics=_ctx(request).metrics)

    async def lines() -> AsyncIterator[bytes]:  # pass two: streamed, one segment in memory at a time
        async for line in timeline(_stream(request, allowed)):
            yield _ndjson(line)

    return StreamingResponse(lines(), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store", "Content-Length": str(nbytes)})


def _ndjson(line: dict[str, object]) -> bytes:
    return (json.dumps(line, separators=(",", ":")) + "\n").encode()


@router.get("/recordings/{request_id}/transcript", summary="Transcripts the pipeline produced, with times",
            responses={404: {"description": "One answer for every refusal."}})
async def transcript(request_id: str, who: CurrentPrincipal, session: SessionDep, clock: ClockDep,
                     request: Request) -> JSONResponse:
    allowed = await _authorize(request, session, clock, who, request_id, "transcripts")
    body = {"request_id": request_id, "transcripts": await transcripts(_stream(request, allowed))}
    data = json.dumps(body, separators=(",", ":")).encode()
    await audit_read(session=session, clock=clock, who=who, allowed=allowed, part="transcripts", nbytes=len(data),
                     device=allowed.saw.id, metrics=_ctx(request).metrics)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/customer/resources/{resource}/access-log",
            summary="Access transparency: every access request and read on my recordings (customer admin)")
async def access_log(resource: str, who: CurrentPrincipal, session: SessionDep) -> dict[str, object]:
    """Who (by role and team), when, under which ticket and justification; each read with part and bytes."""
    owned = await customer_resource(session=session, principal=who, name=resource)
    return await transparency.access_log(session=session, resource=owned)
