"""Turning a recording's records into what an engineer plays: WAV per direction, timeline, transcripts.

Everything here consumes records as they stream out of the blob (one segment in memory at a time).
Audio comes from the protocol's own events: `input_audio_buffer.append` (caller) and
`response.audio.delta` / `response.output_audio.delta` (service), in the session's formats (pcm16 at the
session rate, or G.711 decoded to pcm16 at 8 kHz). A gap in the recording is rendered as silence of its
length in both directions, and its position in each track is reported.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from app.capture.frame_log import C2S, TEXT, EndRecord, FrameRecord, GapRecord, Record
from app.g711 import ALAW_TO_LINEAR, ULAW_TO_LINEAR

CALLER, SERVICE = "caller", "service"
DIRECTION_OF = {CALLER: C2S, SERVICE: 1}
AUDIO_EVENTS = {C2S: ("input_audio_buffer.append", "audio"),
                1: ("response.audio.delta", "delta")}
GA_AUDIO_EVENT = "response.output_audio.delta"
MAX_GAP_SILENCE_S = 600  # a gap longer than this is reported, not rendered in full


def event_of(frame: FrameRecord) -> dict[str, Any] | None:
    """The JSON event a text frame carries, if it is one (an object with a string `type`)."""
    if frame.opcode != TEXT:
        return None
    try:
        event = json.loads(frame.payload)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("type"), str) else None


@dataclass
class Formats:
    """The session's audio formats as the service announced them (client updates as a fallback)."""

    input_format: str = "pcm16"
    input_rate: int = 24000
    output_format: str = "pcm16"

    def learn(self, event: dict[str, Any]) -> None:
        if event.get("type") not in ("session.created", "session.updated", "session.update"):
            return
        session = event.get("session")
        if not isinstance(session, dict):
            return
        if isinstance(session.get("input_audio_format"), str):
            self.input_format = session["input_audio_format"]
        if isinstance(session.get("output_audio_format"), str):
            self.output_format = session["output_audio_format"]
        rate = session.get("input_audio_sampling_rate")
        if isinstance(rate, int) and rate in (8000, 16000, 24000):
            self.input_rate = rate

    def of(self, direction: int) -> tuple[str, int]:
        fmt = self.input_format if direction == C2S else self.output_format
        if fmt in ("g711_ulaw", "g711_alaw"):
            return fmt, 8000
        return "pcm16", self.input_rate if direction == C2S else 24000


def to_pcm16(audio: bytes, fmt: str) -> bytes:
    if fmt == "g711_ulaw":
        return struct.pack(f"<{len(audio)}h", *(ULAW_TO_LINEAR[b] for b in audio))
    if fmt == "g711_alaw":
        return struct.pack(f"<{len(audio)}h", *(ALAW_TO_LINEAR[b] for b in audio))
    return audio[: len(audio) - len(audio) % 2]


def audio_chunk(frame: FrameRecord, event: dict[str, Any]) -> bytes | None:
    """The base64 audio an event carries, if it is an audio event of its direction."""
    expected, key = AUDIO_EVENTS[frame.direction]
    if event["type"] != expected and not (frame.direction != C2S and event["type"] == GA_AUDIO_EVENT):
        return None
    value = event.get(key)
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass
class TrackPlan:
    """Pass one over a recording: the track's format and length, and where the gaps fall in it."""

    rate: int = 24000
    data_bytes: int = 0
    gaps: list[dict[str, int]] = field(default_factory=list)


async def plan_track(records: AsyncIterable[Record], speaker: str) -> TrackPlan:
    direction = DIRECTION_OF[speaker]
    formats = Formats()
    plan = TrackPlan()
    async for record in records:
        if isinstance(record, GapRecord):
            _, rate = formats.of(direction)
            silence = _silence_bytes(record, rate)
            plan.gaps.append({"at_ms": plan.data_bytes * 1000 // (2 * rate),
                              "duration_ms": silence * 1000 // (2 * rate), "frames": record.frames})
            plan.data_bytes += silence
            continue
        if not isinstance(record, FrameRecord):
            continue
        event = event_of(record)
        if event is None:
            continue
        formats.learn(event)
        if record.direction != direction:
            continue
        chunk = audio_chunk(record, event)
        if chunk is not None:
            fmt, plan.rate = formats.of(direction)
            plan.data_bytes += len(to_pcm16(chunk, fmt)) if fmt == "pcm16" else 2 * len(chunk)
    return plan


def _silence_bytes(gap: GapRecord, rate: int) -> int:
    seconds = min(MAX_GAP_SILENCE_S, max(0, gap.to_us - gap.from_us) / 1e6)
    return int(seconds * rate) * 2


def wav_header(rate: int, data_bytes: int, channels: int = 1) -> bytes:
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * 2 * channels, 2 * channels, 16) + b"data" +
            struct.pack("<I", data_bytes))


async def track_pcm(records: AsyncIterable[Record], speaker: str) -> AsyncIterator[bytes]:
    """Pass two: the track's pcm16 audio, gaps as silence (same lengths as `plan_track` counted)."""
    direction = DIRECTION_OF[speaker]
    formats = Formats()
    async for record in records:
        if isinstance(record, GapRecord):
            _, rate = formats.of(direction)
            yield b"\0" * _silence_bytes(record, rate)
            continue
        if not isinstance(record, FrameRecord):
            continue
        event = event_of(record)
        if event is None:
            continue
        formats.learn(event)
        if record.direction != direction:
            continue
        chunk = audio_chunk(record, event)
        if chunk is not None:
            fmt, _ = formats.of(direction)
            yield to_pcm16(chunk, fmt)


_TIMELINE_FIELDS = ("item_id", "response_id", "audio_start_ms", "audio_end_ms", "previous_item_id")


async def timeline(records: AsyncIterable[Record]) -> AsyncIterator[dict[str, Any]]:
    """One line per frame (audio payloads elided), gap and end, in session-time order: the event timeline.

    `t_ms` is the session time (when the frame crossed the relay); a pipeline's own audio offsets
    (`audio_start_ms`, `audio_end_ms`) stay beside it. Audio events carry `audio_ms`, their length.
    """
    formats = Formats()
    async for record in records:
        if isinstance(record, GapRecord):
            yield {"t_ms": record.from_us // 1000, "type": "gap", "to_ms": record.to_us // 1000,
                   "frames": record.frames, "bytes": record.bytes, "reason": record.reason}
        elif isinstance(record, EndRecord):
            yield {"t_ms": record.offset_us // 1000, "type": "end", "client_close": record.client_close or None,
                   "upstream_close": record.upstream_close or None, "ended_by": record.reason}
        else:
            line: dict[str, Any] = {"t_ms": record.offset_us // 1000,
                                    "direction": "c2s" if record.direction == C2S else "s2c",
                                    "bytes": len(record.payload)}
            event = event_of(record)
            if event is None:
                line["type"] = "binary" if record.opcode != TEXT else "unparsed"
            else:
                formats.learn(event)
                line["type"] = event["type"]
                line.update({k: event[k] for k in _TIMELINE_FIELDS if isinstance(event.get(k), str | int)})
                line.update(_event_facts(record, event, formats))
            yield line


def _event_facts(record: FrameRecord, event: dict[str, Any], formats: Formats) -> dict[str, Any]:
    """The few facts the turns need beyond the type: an error's code, a response's status and id, audio length."""
    facts: dict[str, Any] = {}
    error = event.get("error")
    if event["type"] == "error" and isinstance(error, dict):
        facts["error_code"] = str(error.get("code") or error.get("type") or "")[:64]
    response = event.get("response")
    if isinstance(response, dict):
        if isinstance(response.get("status"), str):
            facts["response_status"] = response["status"][:32]
        if isinstance(response.get("id"), str) and "response_id" not in event:
            facts["response_id"] = response["id"][:64]
    chunk = audio_chunk(record, event)
    if chunk is not None:
        fmt, rate = formats.of(record.direction)
        samples = len(chunk) // 2 if fmt == "pcm16" else len(chunk)
        facts["audio_ms"] = samples * 1000 // rate
    return facts


_TRANSCRIPT_EVENTS = {
    "conversation.item.input_audio_transcription.completed": (CALLER, "transcript"),
    "response.audio_transcript.done": (SERVICE, "transcript"),
    "response.output_audio_transcript.done": (SERVICE, "transcript"),
    "response.text.done": (SERVICE, "text"),
    "response.output_text.done": (SERVICE, "text"),
}


async def transcripts(records: AsyncIterable[Record]) -> list[dict[str, Any]]:
    """The transcripts the pipeline produced, input and output, with their times."""
    out: list[dict[str, Any]] = []
    async for record in records:
        if not isinstance(record, FrameRecord) or record.direction == C2S:
            continue
        event = event_of(record)
        if event is None or event["type"] not in _TRANSCRIPT_EVENTS:
            continue
        speaker, key = _TRANSCRIPT_EVENTS[event["type"]]
        text = event.get(key)
        if isinstance(text, str):
            out.append({"t_ms": record.offset_us // 1000, "speaker": speaker, "text": text,
                        "item_id": event.get("item_id")})
    return out


def parse_range(value: str | None, total: int) -> tuple[int, int] | None:
    """One `bytes=a-b` range (or `a-`, or `-n`); anything else is served whole."""
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    start_text, _, end_text = value[6:].partition("-")
    try:
        if start_text:
            start, end = int(start_text), int(end_text) if end_text else total - 1
        else:
            start, end = max(0, total - int(end_text)), total - 1
    except ValueError:
        return None
    if start > end or start >= total:
        return None
    return start, min(end, total - 1)


async def wav_window(header: bytes, pcm: AsyncIterator[bytes], start: int, end: int) -> AsyncIterator[bytes]:
    """The bytes start..end (inclusive) of header + pcm, streamed a chunk at a time."""
    position = 0

    def cut(piece: bytes) -> bytes:
        lo, hi = max(start - position, 0), min(end + 1 - position, len(piece))
        return piece[lo:hi] if lo < hi else b""

    head = cut(header)
    position += len(header)
    if head:
        yield head
    async for chunk in pcm:
        if position > end:
            return
        piece = cut(chunk)
        position += len(chunk)
        if piece:
            yield piece
