"""The parts of a recording one read can serve, each rendered from the record stream (no I/O of its own).

WAV parts take two passes (size, then bytes), so their headers and `Content-Length` are known before the first
byte; JSON parts are small and built whole. Shared by single reads and the debug bundle.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from app.access.playback.render import plan_track, timeline, track_pcm, transcripts, wav_header
from app.access.playback.session_clock import CHANNELS, plan_session_clock, session_clock_pcm
from app.access.playback.turns import TurnDeriver
from app.capture.reader import RecordingStream
from app.request_id import RequestId

Part = Literal["audio_inbound", "audio_outbound", "audio_session", "timeline", "turns", "transcripts", "bundle"]
Speaker = Literal["caller", "service"]
PART_OF_SPEAKER: dict[str, Part] = {"caller": "audio_inbound", "service": "audio_outbound"}
SPEAKER_OF_PART = {part: speaker for speaker, part in PART_OF_SPEAKER.items()}


def ndjson(line: dict[str, object]) -> bytes:
    return (json.dumps(line, separators=(",", ":")) + "\n").encode()


def json_body(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def timeline_size(records: RecordingStream) -> int:
    return sum([len(ndjson(line)) async for line in timeline(records)])


async def timeline_lines(records: RecordingStream) -> AsyncIterator[bytes]:
    async for line in timeline(records):
        yield ndjson(line)


async def turns_body(records: RecordingStream, request_id: RequestId) -> bytes:
    """The turns part: derived from the timeline as it streams (one line in memory at a time)."""
    deriver = TurnDeriver()
    async for line in timeline(records):
        deriver.feed(line)
    return json_body({"request_id": request_id, **deriver.report.as_json()})


async def transcripts_body(records: RecordingStream, request_id: RequestId) -> bytes:
    return json_body({"request_id": request_id, "transcripts": await transcripts(records)})


@dataclass(frozen=True)
class WavPlan:
    """A WAV part sized by its first pass: its header, its total length, its gaps."""

    header: bytes
    total: int
    gaps: list[dict[str, int]]


async def plan_wav(records: RecordingStream, part: Part) -> WavPlan:
    if part == "audio_session":
        clock = await plan_session_clock(records)
        header = wav_header(clock.rate, clock.data_bytes, channels=CHANNELS)
        return WavPlan(header, len(header) + clock.data_bytes, clock.gaps)
    track = await plan_track(records, SPEAKER_OF_PART[part])
    header = wav_header(track.rate, track.data_bytes)
    return WavPlan(header, len(header) + track.data_bytes, track.gaps)


def wav_pcm(stream: Callable[[], RecordingStream], part: Part, plan: WavPlan) -> AsyncIterator[bytes]:
    """Pass two of a WAV part: its pcm after the header (the session clock reads the recording once per channel)."""
    if part == "audio_session":
        return session_clock_pcm(stream, (plan.total - len(plan.header)) // (2 * CHANNELS))
    return track_pcm(stream(), SPEAKER_OF_PART[part])
