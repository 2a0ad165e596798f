"""`read_recording_part`: one read of one part of one recording, for the API and the console alike (C4-C6).

Authorize (a refusal is audited and answered `RecordingNotAvailable`, whose audit entry the caller's
transaction keeps), plan the bytes (a single `Range` for audio), audit the read with the bytes it serves,
then hand back what to send; the body streams with one segment in memory at a time.

Every allowed read answers the recording's honest state, whatever it is: the row's state and incomplete
reason and the bytes its blob holds go in `X-Voicelog-*` headers. A recording that stored nothing (the
store was down or full before its first segment: no blob, or an empty one) reads as empty, a 200 with
no events, no transcripts or a WAV of header only, never a server error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.context import AccessContext
from app.access.playback.bundle import plan_bundle
from app.access.playback.parts import (
    Part,
    json_body,
    plan_wav,
    timeline_lines,
    timeline_size,
    turns_body,
    wav_pcm,
)
from app.access.playback.render import parse_range, transcripts, wav_window
from app.access.playback.service import AllowedRead, RecordingNotAvailable, audit_read, authorize_read
from app.capture.reader import RecordingStream
from app.clock import Clock
from app.identity.principal import Principal
from app.storage.router import RegionRouter
from app.vault.keyring import RegionKeyrings


@dataclass(frozen=True)
class PartRead:
    """What to send for an authorized, audited read."""

    allowed: AllowedRead
    media_type: str
    body: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


async def read_recording_part(
    *, session: AsyncSession, clock: Clock, access: AccessContext, keyrings: RegionKeyrings, stores: RegionRouter,
    saw_fingerprint: str | None, actor: Principal, request_id: str, part: Part, range_header: str | None = None,
) -> PartRead:
    """Authorize, audit and plan one read; raises RecordingNotAvailable (audited) for every refusal.

    `request_id` is the path's string as asked: `authorize_read` checks it, so a malformed one is refused and
    audited like an unknown one (C4); what is sent names the allowed recording's own `RequestId`."""
    allowed = await authorize_read(session=session, clock=clock, directory=access.directory, saws=access.saws,
                                   limiter=access.limiter, metrics=access.metrics, saw_fingerprint=saw_fingerprint,
                                   actor=actor, request_id=request_id, part=part, retention=access.retention)
    if allowed is None:
        raise RecordingNotAvailable()

    def stream() -> RecordingStream:
        return RecordingStream(allowed.recording, keyrings=keyrings, stores=stores)

    def state_headers(first_pass: RecordingStream) -> dict[str, str]:
        row = allowed.recording
        headers = {"Cache-Control": "no-store", "X-Voicelog-Recording-State": str(row.state),
                   "X-Voicelog-Stored-Bytes": str(first_pass.stored_bytes)}
        if row.incomplete_reason:
            headers["X-Voicelog-Incomplete-Reason"] = row.incomplete_reason
        return headers

    async def audited(nbytes: int) -> None:
        await audit_read(session=session, clock=clock, actor=actor, allowed=allowed, part=part, nbytes=nbytes,
                         device=allowed.saw.id, metrics=access.metrics)

    first = stream()
    if part == "timeline":
        nbytes = await timeline_size(first)  # pass one: the size, for the audit entry; pass two streams
        await audited(nbytes)
        return PartRead(allowed, "application/x-ndjson", timeline_lines(stream()),
                        {**state_headers(first), "Content-Length": str(nbytes)})
    if part == "transcripts":
        body = {"request_id": allowed.recording.request_id, "transcripts": await transcripts(first)}
        await audited(len(json.dumps(body, separators=(",", ":")).encode()))  # as audited since the first build
        return PartRead(allowed, "application/json", _once(json_body(body)), state_headers(first))
    if part == "turns":
        sent = await turns_body(first, allowed.recording.request_id)
        await audited(len(sent))
        return PartRead(allowed, "application/json", _once(sent), state_headers(first))
    if part == "bundle":
        bundle = await plan_bundle(stream, allowed=allowed, made_at=clock.now())
        await audited(bundle.content_bytes)
        return PartRead(allowed, "application/zip", bundle.body(), {
            **state_headers(bundle.first), "Content-Disposition": f'attachment; filename="{bundle.filename}"'})
    plan = await plan_wav(first, part)
    window = parse_range(range_header, plan.total)
    start, end = window if window else (0, plan.total - 1)
    await audited(end - start + 1)
    headers = {**state_headers(first), "Accept-Ranges": "bytes", "Content-Length": str(end - start + 1),
               "X-Voicelog-Gaps": json.dumps(plan.gaps, separators=(",", ":"))}
    if window:
        headers["Content-Range"] = f"bytes {start}-{end}/{plan.total}"
    return PartRead(allowed, "audio/wav", wav_window(plan.header, wav_pcm(stream, part, plan), start, end),
                    headers, status=206 if window else 200)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def read_whole(part: PartRead) -> bytes:
    """The body of a read, all of it (the console renders timeline and transcripts on its page)."""
    return b"".join([chunk async for chunk in part.body])
