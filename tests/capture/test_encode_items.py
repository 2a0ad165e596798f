"""The recorder's one-pass segment encoder writes exactly the frame log of docs/FORMAT.md, record by record."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.capture.buffer import BufferItem
from app.capture.frame_log import (
    BINARY,
    C2S,
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
from app.capture.recorder import encode_items
from app.relay.tap import Direction


def _reference(items: list[BufferItem], end: EndRecord | None) -> bytes:
    """The frame log as the record encoders of `frame_log` write it, one record after the other."""
    out = bytearray()
    for item in items:
        if isinstance(item, GapRecord):
            encode_gap(out, item)
            continue
        direction, offset_us, payload = item
        code = C2S if direction is Direction.CLIENT_TO_SERVICE else S2C
        if isinstance(payload, str):
            encode_frame(out, code, TEXT, offset_us, payload.encode())
        else:
            encode_frame(out, code, BINARY, offset_us, payload)
    if end is not None:
        encode_end(out, end)
    return bytes(out)


_u64 = st.integers(0, 2**64 - 1)
_frame = st.tuples(st.sampled_from(list(Direction)), _u64, st.one_of(st.text(max_size=50), st.binary(max_size=50)))
_gap = st.builds(GapRecord, _u64, _u64, st.integers(0, 2**32 - 1), _u64, st.text(max_size=300))
_end = st.builds(EndRecord, _u64, st.integers(0, 65535), st.integers(0, 65535), st.text(max_size=300))


@given(st.lists(st.one_of(_frame, _gap), max_size=30), st.one_of(st.none(), _end))
def test_a_segment_is_encoded_byte_for_byte_as_the_record_encoders_write_it(
    items: list[BufferItem], end: EndRecord | None
) -> None:
    assert encode_items(items, end) == _reference(items, end)


def test_text_and_binary_frames_decode_with_their_direction_opcode_and_payload() -> None:
    items: list[BufferItem] = [(Direction.CLIENT_TO_SERVICE, 20_000, "good é"),
                               (Direction.SERVICE_TO_CLIENT, 40_000, b"\x00\x01")]
    assert list(decode(encode_items(items, None))) == [FrameRecord(C2S, TEXT, 20_000, "good é".encode()),
                                                       FrameRecord(S2C, BINARY, 40_000, b"\x00\x01")]
