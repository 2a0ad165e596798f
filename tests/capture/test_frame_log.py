"""The frame log round-trips every record exactly, and the tap buffer keeps its caps (C9)."""

from __future__ import annotations

import contextlib

from hypothesis import example, given
from hypothesis import strategies as st

from app.capture.buffer import FrameBuffer, MemoryBudget
from app.capture.frame_log import (
    BINARY,
    C2S,
    S2C,
    TEXT,
    EndRecord,
    FrameLogError,
    FrameRecord,
    GapRecord,
    decode,
    encode_end,
    encode_frame,
    encode_gap,
)

u64 = st.integers(min_value=0, max_value=2**64 - 1)
frames = st.builds(FrameRecord, st.sampled_from([C2S, S2C]), st.sampled_from([TEXT, BINARY]), u64,
                   st.binary(max_size=300))
gaps = st.builds(GapRecord, u64, u64, st.integers(0, 2**32 - 1), u64, st.text(max_size=20).filter(
    lambda s: len(s.encode()) < 255))
ends = st.builds(EndRecord, u64, st.integers(0, 65535), st.integers(0, 65535),
                 st.text(max_size=20).filter(lambda s: len(s.encode()) < 255))


@given(st.lists(st.one_of(frames, gaps, ends), max_size=30))
def test_any_sequence_of_records_round_trips(records: list[object]) -> None:
    out = bytearray()
    for record in records:
        if isinstance(record, FrameRecord):
            encode_frame(out, record.direction, record.opcode, record.offset_us, record.payload)
        elif isinstance(record, GapRecord):
            encode_gap(out, record)
        else:
            assert isinstance(record, EndRecord)
            encode_end(out, record)
    assert list(decode(bytes(out))) == records


@example(b"\x02" + bytes(28) + b"\x01\x80")  # a gap whose reason is not UTF-8 (found by this test once)
@example(b"\x02" + bytes(28) + b"\x05ab")  # a gap whose reason is cut short
@given(st.binary(min_size=1, max_size=200))
def test_garbage_is_a_typed_error_or_decodes_never_crashes(data: bytes) -> None:
    with contextlib.suppress(FrameLogError):
        list(decode(data))


def test_frame_overhead_is_fifteen_bytes() -> None:
    out = bytearray()
    encode_frame(out, C2S, TEXT, 1234, b"hello")
    assert len(out) == 15 + 5


def test_buffer_drops_past_the_session_cap_and_marks_one_gap() -> None:
    budget = MemoryBudget(10_000)
    buffer = FrameBuffer(budget=budget, session_cap=1000)
    for i in range(100):
        buffer.add(C2S, BINARY, i * 20_000, b"x" * 85)  # 100 bytes each with overhead
    items, size = buffer.take()
    frames_kept = [i for i in items if not isinstance(i, GapRecord)]
    gaps_marked = [i for i in items if isinstance(i, GapRecord)]
    assert len(frames_kept) == 10
    assert size == 1000
    assert gaps_marked == [GapRecord(10 * 20_000, 99 * 20_000, 90, 9000, "session_cap")]
    assert budget.used == 1000
    buffer.release(size)
    assert budget.used == 0


def test_process_budget_is_shared_across_sessions() -> None:
    budget = MemoryBudget(250)
    a = FrameBuffer(budget=budget, session_cap=10_000)
    b = FrameBuffer(budget=budget, session_cap=10_000)
    a.add(C2S, BINARY, 0, b"a" * 85)
    b.add(C2S, BINARY, 0, b"b" * 85)
    b.add(S2C, BINARY, 1, b"b" * 85)  # over the process cap: dropped
    assert b.dropped_frames == 1
    assert budget.used == 200


