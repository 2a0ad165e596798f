"""The session clock's placement on hand-built frame logs: queued audio, silence between, G.711 and 16 kHz."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator

from app.access.playback.session_clock import CLOCK_RATE, plan_session_clock, session_clock_pcm
from app.capture.frame_log import C2S, S2C, TEXT, EndRecord, FrameRecord, Record


def frame(direction: int, at_ms: int, event: dict[str, object]) -> FrameRecord:
    return FrameRecord(direction, TEXT, at_ms * 1000, json.dumps(event).encode())


def pcm(value: int, ms: int, rate: int = 24000) -> str:
    n = rate * ms // 1000
    return base64.b64encode(struct.pack(f"<{n}h", *([value] * n))).decode()


async def render(records: list[Record]) -> tuple[list[int], list[int]]:
    async def stream() -> AsyncIterator[Record]:
        for record in records:
            yield record

    plan = await plan_session_clock(stream())
    data = b"".join([chunk async for chunk in session_clock_pcm(stream, plan.samples)])
    assert len(data) == plan.data_bytes
    samples = struct.unpack(f"<{len(data) // 2}h", data)
    return list(samples[0::2]), list(samples[1::2])


def spans(channel: list[int], value: int) -> list[tuple[int, int]]:
    """(first, last) sample indexes of each run of `value`, in ms."""
    out, start = [], None
    for i, v in enumerate([*channel, 0]):
        if v == value and start is None:
            start = i
        elif v != value and start is not None:
            out.append((start * 1000 // CLOCK_RATE, i * 1000 // CLOCK_RATE))
            start = None
    return out


async def test_audio_sits_where_it_crossed_the_relay_and_a_burst_is_queued() -> None:
    left, right = await render([
        frame(C2S, 100, {"type": "input_audio_buffer.append", "audio": pcm(1000, 200)}),
        frame(S2C, 500, {"type": "response.audio.delta", "delta": pcm(2000, 300)}),
        frame(S2C, 510, {"type": "response.output_audio.delta", "delta": pcm(3000, 300)}),  # queued behind
        frame(C2S, 900, {"type": "input_audio_buffer.append", "audio": pcm(4000, 100)}),
        EndRecord(2_000_000, 1000, 1000, "client"),
    ])
    assert spans(left, 1000) == [(100, 300)]
    assert spans(left, 4000) == [(900, 1000)]
    assert spans(right, 2000) == [(500, 800)]
    assert spans(right, 3000) == [(800, 1100)]  # after the previous chunk, not over it
    assert len(left) == 2000 * CLOCK_RATE // 1000  # silence up to the session's end


async def test_other_formats_are_placed_at_24_khz() -> None:
    left, right = await render([
        frame(S2C, 0, {"type": "session.updated", "session": {"input_audio_format": "pcm16",
                                                            "input_audio_sampling_rate": 16000,
                                                            "output_audio_format": "g711_ulaw"}}),
        frame(C2S, 100, {"type": "input_audio_buffer.append", "audio": pcm(1000, 100, rate=16000)}),
        frame(S2C, 300, {"type": "response.audio.delta", "delta": base64.b64encode(b"\x80" * 800).decode()}),
    ])
    assert spans(left, 1000) == [(100, 200)]
    loud = [i for i, v in enumerate(right) if v != 0]
    assert (loud[0] * 1000 // CLOCK_RATE, (loud[-1] + 1) * 1000 // CLOCK_RATE) == (300, 400)  # 800 bytes at 8 kHz
