"""The debug bundle: one zip of every part of one recording, and a manifest of what it holds (C4-C6).

A support engineer hands one file to whoever helps them debug: the stereo WAV on the session clock, both WAVs
as sent, the events, the turns and the transcripts, and `manifest.json` naming the request ID, the grant it was
read under and each part's SHA-256, so a copy can be checked against what voicelog served.

The zip streams as it is made (entries carry data descriptors; nothing touches disk, C2); the manifest is its
last entry, as the hashes are known only then. Its size is not known up front: the read is audited with the
bytes of the parts it holds, which pass one counts.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.access.playback.parts import (
    Part,
    WavPlan,
    plan_wav,
    timeline_lines,
    timeline_size,
    transcripts_body,
    turns_body,
    wav_pcm,
)
from app.access.playback.service import AllowedRead
from app.capture.reader import RecordingStream
from app.request_id import RequestId

BUNDLE_FORMAT = "voicelog-debug-bundle/1"
WAV_PARTS: tuple[tuple[str, Part], ...] = (("session.wav", "audio_session"), ("caller.wav", "audio_inbound"),
                                           ("service.wav", "audio_outbound"))


class _ZipSink:
    """A write-only file for `zipfile`: it keeps what was written until the generator hands it on."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self._pieces.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: `drain` hands the bytes on."""

    def close(self) -> None:
        """Nothing to close: the response owns the stream."""

    def drain(self) -> bytes:
        out = b"".join(self._pieces)
        self._pieces.clear()
        return out


@dataclass
class Bundle:
    """Pass one done: the JSON parts made, the WAVs sized; `body()` streams the zip."""

    stream: Callable[[], RecordingStream]
    first: RecordingStream
    allowed: AllowedRead
    request_id: RequestId
    made_at: datetime
    turns: bytes
    transcript: bytes
    events_bytes: int
    wav_plans: dict[str, WavPlan]

    @property
    def filename(self) -> str:
        return f"voicelog-{self.request_id}.zip"

    @property
    def content_bytes(self) -> int:
        wavs = sum(plan.total for plan in self.wav_plans.values())
        return len(self.turns) + len(self.transcript) + self.events_bytes + wavs

    async def body(self) -> AsyncIterator[bytes]:
        sink = _ZipSink()
        listed: list[dict[str, Any]] = []
        with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:

            async def entry(name: str, chunks: AsyncIterator[bytes], compress: int) -> AsyncIterator[bytes]:
                info = zipfile.ZipInfo(name, date_time=self.made_at.timetuple()[:6])
                info.compress_type = compress
                digest, size = hashlib.sha256(), 0
                with archive.open(info, mode="w", force_zip64=True) as out:
                    async for chunk in chunks:
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                        yield sink.drain()
                listed.append({"name": name, "bytes": size, "sha256": digest.hexdigest()})
                yield sink.drain()

            for name, part in WAV_PARTS:
                plan = self.wav_plans[name]
                async for piece in entry(name, _with_header(plan.header, wav_pcm(self.stream, part, plan)),
                                         zipfile.ZIP_STORED):
                    yield piece
            for name, chunks in (("events.ndjson", timeline_lines(self.stream())), ("turns.json", _one(self.turns)),
                                 ("transcript.json", _one(self.transcript))):
                async for piece in entry(name, chunks, zipfile.ZIP_DEFLATED):
                    yield piece
            archive.writestr("manifest.json", json.dumps(self.manifest(listed), indent=2))
        yield sink.drain()

    def manifest(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        row = self.allowed.recording
        return {
            "format": BUNDLE_FORMAT, "request_id": self.request_id, "grant": self.allowed.grant.id,
            "saw": self.allowed.saw.id, "made_at": self.made_at.isoformat(),
            "recording": {"state": str(row.state), "incomplete_reason": row.incomplete_reason,
                          "started_at": row.started_at.isoformat()},
            "parts": parts,
        }


async def plan_bundle(stream: Callable[[], RecordingStream], *, allowed: AllowedRead, made_at: datetime) -> Bundle:
    """Pass one over every part: sizes for the audit entry, the small JSON parts made once."""
    request_id = allowed.recording.request_id
    first = stream()
    events_bytes = await timeline_size(first)
    wav_plans = {name: await plan_wav(stream(), part) for name, part in WAV_PARTS}
    return Bundle(stream=stream, first=first, allowed=allowed, request_id=request_id, made_at=made_at,
                  turns=await turns_body(stream(), request_id), transcript=await transcripts_body(stream(), request_id),
                  events_bytes=events_bytes, wav_plans=wav_plans)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _with_header(header: bytes, pcm: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield header
    async for chunk in pcm:
        yield chunk

