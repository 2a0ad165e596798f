"""Both directions on the session's wall clock: a stereo WAV, caller left and service right.

The per-direction WAVs are the audio "as sent", joined back to back. Here each audio chunk is placed at the
moment its frame crossed the relay (`offset_us` in the frame log), or, when it arrived while the same
direction's previous chunk was still playing (a pipeline sends response audio faster than real time), right
after that chunk, as the client's player queues it. Where nothing was sent there is silence, so one player
plays what the caller said and heard, at the time they said and heard it.

Everything is pcm16 at 24 kHz (8 and 16 kHz input is repeated sample by sample, nearest neighbour). Like the
mono tracks, `plan_session_clock` sizes the WAV in one pass; `session_clock_pcm` renders it from one pass per
channel, interleaved in step, so memory stays bounded whatever the recording's length or its audio's timing.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from app.access.playback.render import Formats, audio_chunk, event_of, to_pcm16
from app.capture.frame_log import C2S, EndRecord, FrameRecord, GapRecord, Record

CLOCK_RATE = 24000
CHANNELS = 2
LEFT, RIGHT = 0, 1  # caller, service
FLUSH_SAMPLES = CLOCK_RATE // 2  # emit in pieces of at most ~0.5 s of stereo audio


def resample(pcm: bytes, rate: int) -> array[int]:
    """pcm16 little-endian at `rate` as samples at CLOCK_RATE (nearest neighbour: enough to listen and to place)."""
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    if sys.byteorder == "big":
        samples.byteswap()
    if rate == CLOCK_RATE or not samples:
        return samples
    count = len(samples) * CLOCK_RATE // rate
    return array("h", (samples[j * rate // CLOCK_RATE] for j in range(count)))


@dataclass
class Placement:
    """Where each direction's next chunk starts on the clock, in samples; arrivals never go backwards."""

    next_free: list[int] = field(default_factory=lambda: [0, 0])
    now: int = 0  # the relay's clock in samples: the latest arrival seen

    def arrive(self, offset_us: int) -> int:
        self.now = max(self.now, offset_us * CLOCK_RATE // 1_000_000)
        return self.now

    def place(self, channel: int, offset_us: int, count: int) -> int:
        start = max(self.arrive(offset_us), self.next_free[channel])
        self.next_free[channel] = start + count
        return start


def placed_audio(record: FrameRecord, event: dict[str, Any], formats: Formats) -> tuple[int, array[int]] | None:
    """(channel, samples at CLOCK_RATE) of an audio event, or None."""
    chunk = audio_chunk(record, event)
    if chunk is None:
        return None
    fmt, rate = formats.of(record.direction)
    return (LEFT if record.direction == C2S else RIGHT), resample(to_pcm16(chunk, fmt), rate)


async def placed_chunks(records: AsyncIterable[Record]) -> AsyncIterator[tuple[int, int, int, array[int] | None]]:
    """(now, channel, start, samples) per audio chunk, and (now, -1, 0, None) per other record, in order."""
    formats = Formats()
    placement = Placement()
    async for record in records:
        if isinstance(record, GapRecord):
            yield placement.arrive(record.to_us), -1, 0, None
            continue
        if isinstance(record, EndRecord):
            yield placement.arrive(record.offset_us), -1, 0, None
            continue
        event = event_of(record)
        if event is not None:
            formats.learn(event)
            audio = placed_audio(record, event, formats)
            if audio is not None:
                channel, samples = audio
                start = placement.place(channel, record.offset_us, len(samples))
                yield placement.now, channel, start, samples
                continue
        yield placement.arrive(record.offset_us), -1, 0, None


@dataclass
class ClockPlan:
    """Pass one: the stereo WAV's length, and where the recording's gaps fall on the clock."""

    rate: int = CLOCK_RATE
    samples: int = 0
    gaps: list[dict[str, int]] = field(default_factory=list)

    @property
    def data_bytes(self) -> int:
        return self.samples * CHANNELS * 2


async def plan_session_clock(records: AsyncIterable[Record]) -> ClockPlan:
    plan = ClockPlan()

    async def watched() -> AsyncIterator[Record]:
        async for record in records:
            if isinstance(record, GapRecord):
                plan.gaps.append({"at_ms": record.from_us // 1000,
                                  "duration_ms": max(0, record.to_us - record.from_us) // 1000,
                                  "frames": record.frames})
            yield record

    async for now, _channel, start, samples in placed_chunks(watched()):
        plan.samples = max(plan.samples, now, start + (len(samples) if samples is not None else 0))
    return plan


async def _channel(records: AsyncIterable[Record], channel: int) -> AsyncIterator[array[int]]:
    """One channel on the clock: silence up to each of its chunks, then the chunk (pieces of bounded size)."""
    written = 0
    async for _now, placed_on, start, samples in placed_chunks(records):
        if placed_on != channel or samples is None:
            continue
        while written < start:
            count = min(start - written, FLUSH_SAMPLES)
            yield array("h", bytes(2 * count))
            written += count
        yield samples
        written += len(samples)


async def session_clock_pcm(open_records: Callable[[], AsyncIterable[Record]],
                            total_samples: int) -> AsyncIterator[bytes]:
    """Pass two: interleaved stereo pcm16, `total_samples` frames long (what `plan_session_clock` counted).

    Each channel is rendered from its own pass over the records, and the two are interleaved in step, so memory
    holds a chunk per channel whatever the audio queued ahead (a client may send a file faster than real time)."""
    channels = [_channel(open_records(), LEFT), _channel(open_records(), RIGHT)]
    pending: list[array[int]] = [array("h"), array("h")]
    ended = [False, False]
    done = 0
    while done < total_samples:
        for index in (LEFT, RIGHT):
            while not ended[index] and len(pending[index]) < FLUSH_SAMPLES:
                try:
                    pending[index].extend(await anext(channels[index]))
                except StopAsyncIteration:
                    ended[index] = True
        count = min(total_samples - done, FLUSH_SAMPLES,
                    *(len(pending[i]) for i in (LEFT, RIGHT) if not ended[i]))
        frame = array("h", bytes(2 * CHANNELS * count))
        for index in (LEFT, RIGHT):
            piece = pending[index][:count]
            frame[index : index + CHANNELS * len(piece) : CHANNELS] = piece
            del pending[index][:count]
        if sys.byteorder == "big":
            frame.byteswap()
        yield frame.tobytes()
        done += count
