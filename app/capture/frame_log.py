"""The plaintext inside sealed segments: a compact log of frames, gaps and the session's end.

Every record starts with one kind byte; integers are big-endian. docs/FORMAT.md ("Frame log") is the
normative description. A reader rebuilds both directions and the timeline exactly from it.

    FRAME  0x01 | direction u8 (0 c2s, 1 s2c) | opcode u8 (1 text, 2 binary) | offset_us u64
                | length u32 | payload[length]
    GAP    0x02 | from_us u64 | to_us u64 | frames u32 | bytes u64 | reason_len u8 | reason
    END    0x03 | offset_us u64 | client_close u16 | upstream_close u16 | reason_len u8 | reason
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

FRAME, GAP, END = 0x01, 0x02, 0x03
C2S, S2C = 0, 1
TEXT, BINARY = 1, 2
NO_CODE = 0

_FRAME_HEAD = struct.Struct(">BBBQI")
_GAP = struct.Struct(">BQQIQB")
_END = struct.Struct(">BQHHB")
FRAME_OVERHEAD = _FRAME_HEAD.size
pack_frame_head = _FRAME_HEAD.pack
"""`pack_frame_head(FRAME, direction, opcode, offset_us, length)`: a FRAME record's head, for encoders that
join heads and payloads in one pass instead of growing a buffer (the recorder's `encode_items`)."""


class FrameLogError(ValueError):
    """The plaintext is not a well-formed frame log (never raised for authentic data)."""


@dataclass(frozen=True, slots=True)
class FrameRecord:
    direction: int
    opcode: int
    offset_us: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class GapRecord:
    from_us: int
    to_us: int
    frames: int
    bytes: int
    reason: str


@dataclass(frozen=True, slots=True)
class EndRecord:
    offset_us: int
    client_close: int
    upstream_close: int
    reason: str


Record = FrameRecord | GapRecord | EndRecord


def _short(text: str) -> bytes:
    return text.encode()[:255]


def encode_frame(out: bytearray, direction: int, opcode: int, offset_us: int, payload: bytes) -> None:
    out += _FRAME_HEAD.pack(FRAME, direction, opcode, offset_us, len(payload))
    out += payload


def encode_gap(out: bytearray, gap: GapRecord) -> None:
    reason = _short(gap.reason)
    out += _GAP.pack(GAP, gap.from_us, gap.to_us, gap.frames, gap.bytes, len(reason))
    out += reason


def encode_end(out: bytearray, end: EndRecord) -> None:
    reason = _short(end.reason)
    out += _END.pack(END, end.offset_us, end.client_close, end.upstream_close, len(reason))
    out += reason


def _reason(view: memoryview, pos: int, length: int) -> str:
    """A gap's or end's reason: whole and UTF-8, or the record is damaged (a typed error, never a crash)."""
    if pos + length > len(view):
        raise FrameLogError("truncated reason")
    try:
        return bytes(view[pos : pos + length]).decode()
    except UnicodeDecodeError as exc:
        raise FrameLogError("reason is not UTF-8") from exc


def decode(data: bytes) -> Iterator[Record]:
    """Records of one segment's plaintext, in order."""
    view = memoryview(data)
    pos = 0
    try:
        while pos < len(view):
            kind = view[pos]
            if kind == FRAME:
                _, direction, opcode, offset_us, length = _FRAME_HEAD.unpack_from(view, pos)
                pos += _FRAME_HEAD.size
                if pos + length > len(view) or direction not in (C2S, S2C) or opcode not in (TEXT, BINARY):
                    raise FrameLogError("bad frame record")
                yield FrameRecord(direction, opcode, offset_us, bytes(view[pos : pos + length]))
                pos += length
            elif kind == GAP:
                _, from_us, to_us, frames, nbytes, rlen = _GAP.unpack_from(view, pos)
                pos += _GAP.size
                yield GapRecord(from_us, to_us, frames, nbytes, _reason(view, pos, rlen))
                pos += rlen
            elif kind == END:
                _, offset_us, client_close, upstream_close, rlen = _END.unpack_from(view, pos)
                pos += _END.size
                yield EndRecord(offset_us, client_close, upstream_close, _reason(view, pos, rlen))
                pos += rlen
            else:
                raise FrameLogError(f"unknown record kind {kind}")
    except struct.error as exc:
        raise FrameLogError("truncated record") from exc
