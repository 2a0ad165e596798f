"""The recorder's one-pass segment encoder writes exactly the frame log of docs/FORMAT.md, record by record."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.capture.buffer import BufferItem, FrameBuffer, MemoryBudget
from app.capture.frame_log import (
    BINARY,
    C2S,
    FRAME_OVERHEAD,
    S2C,
    TEXT,
    EndRecord,
    FrameRecord,
    GapRecord,
    decode,
    encode_end,
    encode_frame,
    encode_gap,
)
from app.capture.lifecycle import Phase
from app.capture.recorder import LiveRecording, RecordingTap, encode_items
from app.relay.tap import Direction


def _reference(items: list[BufferItem], end: EndRecord | None) -> bytes:
    """The frame log as the record encoders of `frame_log` write it, one record after the other."""
    out = bytearray()
    for item in items:
        if isinstance(item, GapRecord):
            encode_gap(out, item)
            continue
        direction, opcode, offset_us, payload = item
        encode_frame(out, direction, opcode, offset_us, payload)
    if end is not None:
        encode_end(out, end)
    return bytes(out)


_u64 = st.integers(0, 2**64 - 1)
_text = st.tuples(st.sampled_from([C2S, S2C]), st.just(TEXT), _u64, st.text(max_size=50).map(str.encode))
_binary = st.tuples(st.sampled_from([C2S, S2C]), st.just(BINARY), _u64, st.binary(max_size=50))
_frame = st.one_of(_text, _binary)
_gap = st.builds(GapRecord, _u64, _u64, st.integers(0, 2**32 - 1), _u64, st.text(max_size=300))
_end = st.builds(EndRecord, _u64, st.integers(0, 65535), st.integers(0, 65535), st.text(max_size=300))


@given(st.lists(st.one_of(_frame, _gap), max_size=30), st.one_of(st.none(), _end))
def test_a_segment_is_encoded_byte_for_byte_as_the_record_encoders_write_it(
    items: list[BufferItem], end: EndRecord | None
) -> None:
    assert encode_items(items, end) == _reference(items, end)


def test_frames_as_the_relay_taps_them_decode_with_their_direction_opcode_and_payload() -> None:
    """The relay hands the tap a text message as its checked UTF-8 bytes and says it is text: the frame log
    stores it as a TEXT record of exactly those bytes, and a binary message as BINARY."""
    buffer = FrameBuffer(budget=MemoryBudget(1 << 20), session_cap=1 << 20)
    recording = LiveRecording(info=None, consent=None, buffer=buffer, key=None,  # type: ignore[arg-type]
                              opened_mono=0.0, phase=Phase.STREAMING)
    tap = RecordingTap(recording)
    tap.on_frame(Direction.CLIENT_TO_SERVICE, 20_000_000, "good é".encode(), True)
    tap.on_frame(Direction.SERVICE_TO_CLIENT, 40_000_000, b"\x00\x01", False)
    items, size = buffer.take()
    assert size == len("good é".encode()) + 2 + 2 * FRAME_OVERHEAD  # text counted as its UTF-8 bytes
    assert list(decode(encode_items(items, None))) == [FrameRecord(C2S, TEXT, 20_000, "good é".encode()),
                                                       FrameRecord(S2C, BINARY, 40_000, b"\x00\x01")]
