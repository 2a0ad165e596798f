"""Thin HTTP layer for JIT access and point-wise playback. No endpoint lists or searches recordings (C4)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import decisions, service, transparency
from app.access.context import AccessContext, AccessDep
from app.access.grant_facts import grant_situations
from app.access.models import AccessRequest
from app.access.people import acting_person
from app.access.playback.parts import PART_OF_SPEAKER, Part, Speaker
from app.access.playback.reads import PartRead, read_recording_part, read_whole
from app.access.saw.trust import saw_fingerprint
from app.access.schemas import AccessRequestCreate, AccessRequestOut, Decision, Extension
from app.clock import Clock
from app.context import AppContext
from app.deps import ClockDep, ContextDep, SessionDep
from app.identity.principal import Principal, Role, authenticate
from app.tickets.service import customer_resource

router = APIRouter(tags=["access"])


def presented_saw(request: Request, ctx: ContextDep) -> str | None:
    """The SAW certificate's fingerprint a trusted proxy verified for this request, or None (C5)."""
    return saw_fingerprint(request, ctx.settings.saw)


PresentedSaw = Annotated[str | None, Depends(presented_saw)]
CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


async def _person(session: AsyncSession, ctx: AccessContext, actor: Principal, *roles: Role) -> service.Person:
    return await acting_person(session=session, directory=ctx.directory, actor=actor, roles=roles)


async def _out_all(session: AsyncSession, clock: Clock, access: AccessContext,
                   rows: Sequence[AccessRequest]) -> list[AccessRequestOut]:
    """Each row with its one derived `status` (`grant_situations`, as the console shows it)."""
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    situations = await grant_situations(session=session, rows=rows, now=clock.now(), retention=access.retention)
    out = []
    for row in rows:
        situation = situations[row.id]
        out.append(AccessRequestOut(
            id=row.id, requester=row.requester, ticket_id=row.ticket_id,
            request_ids=await service.request_ids_of(session=session, access_request=row),
            justification=row.justification, state=row.state, status=situation.status,
            readable_request_ids=sorted(situation.readable), requested_minutes=row.requested_duration_s // 60,
            granted_minutes=row.granted_duration_s // 60 if row.granted_duration_s is not None else None,
            created_at=row.created_at.isoformat(), decided_by=row.decided_by, decided_at=iso(row.decided_at),
            expires_at=iso(row.expires_at), extends_id=row.extends_id,
            needs_customer_approval=row.needs_customer_approval, customer_approved=row.customer_approved))
    return out


async def _out(session: AsyncSession, clock: Clock, access: AccessContext, row: AccessRequest) -> AccessRequestOut:
    return (await _out_all(session, clock, access, [row]))[0]


# --- requests and grants ---------------------------------------------------------------------------------


@router.post("/access/requests", status_code=201, summary="Ask for just-in-time access (engineer)")
async def create_request(body: AccessRequestCreate, actor: CurrentPrincipal, session: SessionDep, clock: ClockDep,
                         access: AccessDep) -> AccessRequestOut:
    person = await _person(session, access, actor, Role.ENGINEER)
    row = await decisions.request_access(
        session=session, clock=clock, notifier=access.notifier, actor=person, data=service.NewAccessRequest(
            ticket_id=body.ticket_id, request_ids=body.request_ids, justification=body.justification,
            duration=timedelta(minutes=body.duration_minutes)))
    return await _out(session, clock, access, row)


@router.get("/access/requests", summary="My access requests and grants (engineer)",
            description="Newest first, each with its derived `status` (waiting for the manager or the customer, "
                        "approved until `expires_at`, expired, revoked, denied, lapsed, consent ended, recording "
                        "erased) and the request IDs a read could be allowed for now.")
async def my_requests(actor: CurrentPrincipal, session: SessionDep, clock: ClockDep,
                      access: AccessDep) -> list[AccessRequestOut]:
    await _person(session, access, actor, Role.ENGINEER)
    rows = await service.access_requests_of(session=session, requester=actor.subject)
    return await _out_all(session, clock, access, rows)


@router.get("/access/queue", summary="Pending requests of the teams I manage (manager)")
async def queue(actor: CurrentPrincipal, session: SessionDep, clock: ClockDep,
                access: AccessDep) -> list[AccessRequestOut]:
    person = await _person(session, access, actor, Role.MANAGER)
    teams = await access.directory.teams_managed(session, actor.subject)
    return await _out_all(session, clock, access,
                          await service.queue_for(session=session, actor=person, team_ids=teams))


@router.post("/access/requests/{access_request_id}/approve", summary="Approve (manager of the requester's team)")
async def approve(access_request_id: str, body: Decision, actor: CurrentPrincipal, session: SessionDep,
                  clock: ClockDep, access: AccessDep) -> AccessRequestOut:
    person = await _person(session, access, actor, Role.MANAGER)
    duration = timedelta(minutes=body.duration_minutes) if body.duration_minutes else None
    row = await decisions.approve_access(session=session, clock=clock, directory=access.directory,
                                         notifier=access.notifier, access_request_id=access_request_id,
                                         actor=person, duration=duration)
    return await _out(session, clock, access, row)


@router.post("/access/requests/{access_request_id}/deny", summary="Deny with a reason (manager)")
async def deny(access_request_id: str, body: Decision, actor: CurrentPrincipal, session: SessionDep, clock: ClockDep,
               access: AccessDep) -> AccessRequestOut:
    person = await _person(session, access, actor, Role.MANAGER)
    row = await decisions.deny_access(session=session, clock=clock, directory=access.directory,
                                      notifier=access.notifier, access_request_id=access_request_id,
                                      actor=person, reason=body.reason)
    return await _out(session, clock, access, row)


@router.post("/access/requests/{access_request_id}/revoke", summary="End a grant now (requester or manager)")
async def revoke(access_request_id: str, body: Decision, actor: CurrentPrincipal, session: SessionDep,
                 clock: ClockDep, access: AccessDep) -> AccessRequestOut:
    person = await _person(session, access, actor, Role.ENGINEER, Role.MANAGER)
    row = await decisions.revoke_access(session=session, clock=clock, directory=access.directory,
                                        notifier=access.notifier, access_request_id=access_request_id,
                                        actor=person, reason=body.reason.strip())
    return await _out(session, clock, access, row)


@router.post("/access/requests/{access_request_id}/extend", status_code=201,
             summary="Ask for more time before the grant expires (needs a new approval)")
async def extend(access_request_id: str, body: Extension, actor: CurrentPrincipal, session: SessionDep,
                 clock: ClockDep, access: AccessDep) -> AccessRequestOut:
    person = await _person(session, access, actor, Role.ENGINEER)
    row = await decisions.extend_access(session=session, clock=clock, access_request_id=access_request_id,
                                        actor=person, duration=timedelta(minutes=body.duration_minutes),
                                        justification=body.justification)
    return await _out(session, clock, access, row)


@router.post("/customer/resources/{resource}/access-requests/{access_request_id}/{verdict}",
             summary="Customer Lockbox: approve or refuse a grant on my recordings (customer admin)",
             description="Once, while the request's `status` is `waiting_for_customer` (its manager approved it; it "
                         "has not expired, ended or been refused; a named recording can still be read). Audited as "
                         "`access.approved`, or `access.denied` with reason `customer_refused`, by the customer "
                         "admin. A request of another resource and an unknown ID get the same 404 "
                         "`access_request_not_found`; a second decision is 409 `customer_already_decided`; a "
                         "request in any other status is 409 `not_waiting_for_customer`. The console's Approve and "
                         "Deny buttons call the same use case.")
async def customer_verdict(resource: str, access_request_id: str, verdict: Literal["approve", "refuse"],
                           actor: CurrentPrincipal, session: SessionDep, clock: ClockDep,
                           access: AccessDep) -> AccessRequestOut:
    owned = await customer_resource(session=session, principal=actor, name=resource)
    row = await decisions.customer_decide_access(session=session, clock=clock,
                                                 access_request_id=access_request_id, actor=actor.subject,
                                                 resource_id=owned.id, approve=verdict == "approve",
                                                 retention=access.retention)
    return await _out(session, clock, access, row)


# --- playback (point-wise) ------------------------------------------------------------------------------

NOT_AVAILABLE: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown, not granted, not from your SAW, expired: one answer."}}


STATE_HEADERS = (
    "\n\nEvery allowed read says the recording's state in headers: `X-Voicelog-Recording-State` (recording, "
    "complete, incomplete), `X-Voicelog-Incomplete-Reason` (when the recording ended early, e.g. "
    "`store_unavailable`) and `X-Voicelog-Stored-Bytes`. A recording that stored nothing (the store was down "
    "or full before its first segment) is a 200 with an empty body: a WAV of header only, no events, no "
    "transcripts, and `X-Voicelog-Stored-Bytes: 0`.")


async def _read(ctx: AppContext, session: AsyncSession, saw: str | None, actor: Principal, request_id: str,
                part: Part, range_header: str | None = None) -> PartRead:
    """Every recording route's one read: the context's parts handed to the use case the console calls too."""
    return await read_recording_part(
        session=session, clock=ctx.clock, access=ctx.access, keyrings=ctx.keyrings, stores=ctx.stores,
        saw_fingerprint=saw, actor=actor, request_id=request_id, part=part, range_header=range_header)


def _sent(read: PartRead) -> StreamingResponse:
    return StreamingResponse(read.body, status_code=read.status, media_type=read.media_type, headers=read.headers)


async def _whole(read: PartRead) -> Response:
    """A small JSON part, answered whole (its size known)."""
    return Response(await read_whole(read), media_type=read.media_type, headers=read.headers)


@router.get("/recordings/{request_id}/audio/session.wav",
            summary="Both directions on the session clock: stereo WAV, caller left, service right",
            responses=NOT_AVAILABLE, description="pcm16 stereo at 24 kHz (8 and 16 kHz audio repeated to 24 kHz, "
            "G.711 decoded). Sample 0 is the moment the relay accepted the session; each audio chunk starts when "
            "its frame crossed the relay, or right after the same direction's previous chunk if that was still "
            "playing (audio sent faster than real time is queued, as the client's player queues it); silence "
            "wherever nothing was sent. So the caller's speech and what they heard play at the time they happened, "
            "and an event's `t_ms` is its position in this file. The per-direction WAVs are the audio as sent, "
            "joined back to back. Gaps in the recording are silence, listed in `X-Voicelog-Gaps` with their "
            "session time. Streams with bounded memory; supports a single `Range`. One audited read, part "
            "`audio_session`." + STATE_HEADERS)
async def session_audio(request_id: str, actor: CurrentPrincipal, session: SessionDep, ctx: ContextDep,
                        saw: PresentedSaw,
                        range_header: Annotated[str | None, Header(alias="range")] = None) -> StreamingResponse:
    return _sent(await _read(ctx, session, saw, actor, request_id, "audio_session", range_header))


@router.get("/recordings/{request_id}/audio/{speaker}.wav", summary="One direction of a recording as sent, as WAV",
            responses=NOT_AVAILABLE, description="pcm16 WAV at the session's rate (G.711 decoded): the direction's "
            "audio as sent, chunk after chunk with no pause between them (not on the session clock: see "
            "`/audio/session.wav`); gaps are silence, listed in `X-Voicelog-Gaps`. Streams with bounded memory; "
            "supports a single `Range`." + STATE_HEADERS)
async def audio(request_id: str, speaker: Speaker, actor: CurrentPrincipal, session: SessionDep,
                ctx: ContextDep, saw: PresentedSaw,
                range_header: Annotated[str | None, Header(alias="range")] = None) -> StreamingResponse:
    return _sent(await _read(ctx, session, saw, actor, request_id, PART_OF_SPEAKER[speaker], range_header))


@router.get("/recordings/{request_id}/events", summary="The event timeline (JSON lines, audio elided)",
            responses={404: {"description": "One answer for every refusal."}},
            description="One JSON line per frame, gap and end, in session-time order. `t_ms` is the session time "
            "(ms since the relay accepted the session, when the frame crossed it: the position in "
            "`/audio/session.wav`); `direction` c2s or s2c; `type`; the pipeline's own offsets in the caller's "
            "input audio (`audio_start_ms`, `audio_end_ms`) kept as they were sent; `audio_ms` on audio events "
            "(their length); `response_id`, `item_id`, `response_status`, `error_code` where the event has them."
            + STATE_HEADERS)
async def events(request_id: str, actor: CurrentPrincipal, session: SessionDep, ctx: ContextDep,
                 saw: PresentedSaw) -> StreamingResponse:
    return _sent(await _read(ctx, session, saw, actor, request_id, "timeline"))


@router.get("/recordings/{request_id}/transcript", summary="Transcripts the pipeline produced, with times",
            responses={404: {"description": "One answer for every refusal."}},
            description="The input and output transcripts, with their times." + STATE_HEADERS)
async def transcript(request_id: str, actor: CurrentPrincipal, session: SessionDep, ctx: ContextDep,
                     saw: PresentedSaw) -> Response:
    return await _whole(await _read(ctx, session, saw, actor, request_id, "transcripts"))


@router.get("/recordings/{request_id}/turns", summary="Turns, their latency, interruptions, errors and gaps",
            responses={404: {"description": "One answer for every refusal."}},
            description="Derived from the event timeline (both event families: Voice Live / Realtime preview "
            "`response.audio.*`, Realtime GA `response.output_audio.*`). Per turn, in session time (ms): caller "
            "speech start and stop (server VAD; the pipeline's own audio offsets beside them), commit, response "
            "created, first response audio frame relayed to the client (`first_audio_ms`), response done and its "
            "status; `latency_first_audio_ms` and `latency_done_ms` from the speech stop (the commit without "
            "VAD); `interrupted` with `interrupted_by` `caller_speech` (the caller started speaking while the "
            "response was in progress or its audio still playing on the session clock), `cancelled` or "
            "`truncated`; the turn's errors and gaps. `summary` gives p50 (lower median) and max of both "
            "latencies. One audited read, part `turns`." + STATE_HEADERS)
async def turns(request_id: str, actor: CurrentPrincipal, session: SessionDep, ctx: ContextDep,
                saw: PresentedSaw) -> Response:
    return await _whole(await _read(ctx, session, saw, actor, request_id, "turns"))


@router.get("/recordings/{request_id}/bundle", summary="Debug bundle: every part of a recording in one zip",
            responses={404: {"description": "One answer for every refusal."},
                       200: {"content": {"application/zip": {}}, "description": "The zip, streamed."}},
            description="`session.wav` (stereo, session clock), `caller.wav` and `service.wav` (as sent), "
            "`events.ndjson`, `turns.json`, `transcript.json` and, last, `manifest.json`: the bundle format, "
            "the request ID, the grant and the SAW it was read under, the recording's state, and each part's "
            "name, size and SHA-256. One audited read, part `bundle`, whose `bytes` are the parts' total (the "
            "zip streams, so its own size is not known before it is sent)." + STATE_HEADERS)
async def bundle(request_id: str, actor: CurrentPrincipal, session: SessionDep, ctx: ContextDep,
                 saw: PresentedSaw) -> StreamingResponse:
    return _sent(await _read(ctx, session, saw, actor, request_id, "bundle"))


@router.get("/customer/resources/{resource}/access-log",
            summary="Access transparency: every access request and read on my recordings (customer admin)",
            description="Who (by role and team), when, under which ticket and justification; each request with its "
                        "derived `status` (the values of `AccessRequestOut.status`; `waiting_for_customer` is the "
                        "one to approve or refuse), `requested_minutes` and `granted_minutes`; each read with "
                        "part and bytes.")
async def access_log(resource: str, actor: CurrentPrincipal, session: SessionDep, clock: ClockDep,
                     access: AccessDep) -> dict[str, object]:
    """Who (by role and team), when, under which ticket and justification; each read with part and bytes."""
    owned = await customer_resource(session=session, principal=actor, name=resource)
    return await transparency.access_log(session=session, resource=owned, now=clock.now(),
                                         retention=access.retention)
