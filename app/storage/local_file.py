"""One part file of the local store: a header, then framed units, appended with fsync.

File:  b"VLBLOB\\x00\\x01" | created_at (u64 big-endian, microseconds since the epoch)
Frame: b"VLU1" | payload length (u32 BE) | CRC-32 of the payload | CRC-32 of the 12 bytes before | payload

A crash can only tear the frame being appended (every append is fsynced before it returns), so opening
a file for writing cuts a torn tail back to the last whole unit; opening it for reading only skips the
torn bytes and changes nothing (a read never writes). If a whole frame follows the damage, it is not a
torn tail: Corrupt is raised and nothing is cut. All functions here block; the store runs them on its
I/O threads.
"""

from __future__ import annotations

import os
import struct
import zlib
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from app.logs import get_logger
from app.storage.errors import Corrupt

log = get_logger("voicelog.storage")

FILE_MAGIC = b"VLBLOB\x00\x01"
FILE_HEADER = struct.Struct(">8sQ")
FRAME_MAGIC = b"VLU1"
FRAME_HEADER = struct.Struct(">4sIII")
HARD_MAX_UNIT = 100 * 1024 * 1024
"""No frame is ever longer than this, whatever the settings were when it was written."""

FILE_MODE = 0o600
DIR_MODE = 0o700


@dataclass
class PartFile:
    """What a part file holds: where each frame starts and how many payload bytes precede its end."""

    path: Path
    created_at: datetime
    frame_starts: array[int] = field(default_factory=lambda: array("q"))
    unit_ends: array[int] = field(default_factory=lambda: array("q"))
    torn: bool = False
    """Opened read-only over a torn header or tail that was left as it is: the next writer repairs it."""

    @property
    def units(self) -> int:
        return len(self.unit_ends)

    @property
    def payload_bytes(self) -> int:
        return self.unit_ends[-1] if self.unit_ends else 0

    @property
    def file_end(self) -> int:
        if not self.frame_starts:
            return FILE_HEADER.size
        return self.frame_starts[-1] + FRAME_HEADER.size + self.unit_size(len(self.unit_ends) - 1)

    def unit_size(self, index: int) -> int:
        return self.unit_ends[index] - (self.unit_ends[index - 1] if index else 0)


def fsync_dir(path: Path) -> None:
    """Make a directory entry (a created or removed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_part_file(path: Path, created_at: datetime) -> PartFile:
    """Create an empty part (mode 0600, header fsynced, entry fsynced). FileExistsError if it is there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        micros = int(created_at.timestamp() * 1_000_000)
        _write_all(fd, FILE_HEADER.pack(FILE_MAGIC, micros), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
    return PartFile(path=path, created_at=created_at)


def read_created_at(path: Path) -> datetime:
    """The creation time in a part's header (the file's mtime if the header was torn)."""
    with path.open("rb") as handle:
        header = handle.read(FILE_HEADER.size)
    if len(header) < FILE_HEADER.size:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    magic, micros = FILE_HEADER.unpack(header)
    if magic != FILE_MAGIC:
        raise Corrupt(f"part {path.name} has no voicelog header")
    return datetime.fromtimestamp(micros / 1_000_000, UTC)


def open_part_file(path: Path, *, repair: bool = True) -> PartFile:
    """Index a part's frames. With `repair` (the write path) a torn last frame is cut back to the last whole
    unit and a torn header rewritten (fsynced); without it (reads) the file is opened read-only and the torn
    bytes are only skipped, the part marked `torn`."""
    fd = os.open(path, (os.O_RDWR if repair else os.O_RDONLY) | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size < FILE_HEADER.size:
            if not repair:
                return PartFile(path=path, created_at=datetime.fromtimestamp(os.fstat(fd).st_mtime, UTC),
                                torn=True)
            return _repair_torn_header(fd, path, size)
        magic, micros = FILE_HEADER.unpack(os.pread(fd, FILE_HEADER.size, 0))
        if magic != FILE_MAGIC:
            raise Corrupt(f"part {path.name} has no voicelog header")
        part = PartFile(path=path, created_at=datetime.fromtimestamp(micros / 1_000_000, UTC))
        pos = FILE_HEADER.size
        payload = 0
        while pos < size:
            length = _frame_length(os.pread(fd, FRAME_HEADER.size, pos))
            if length is None or pos + FRAME_HEADER.size + length > size:
                break
            payload += length
            part.frame_starts.append(pos)
            part.unit_ends.append(payload)
            pos += FRAME_HEADER.size + length
        if part.units and not _last_frame_intact(fd, part):
            # A torn write that left the frame's header and length but not all of its bytes.
            part.frame_starts.pop()
            part.unit_ends.pop()
        end = part.file_end
        if end < size:
            if size - end > FRAME_HEADER.size + HARD_MAX_UNIT or _whole_frame_after(fd, end, size):
                raise Corrupt(f"part {path.name} is damaged before its last unit")
            if not repair:
                part.torn = True
                return part
            os.ftruncate(fd, end)
            os.fsync(fd)
            log.warning("storage.local.torn_tail_cut", part=path.name, cut_bytes=size - end, units=part.units)
        return part
    finally:
        os.close(fd)


class StaleLayout(Exception):
    """The part file is not the length its index says: another store instance wrote it. Re-open it."""


def append_unit(part: PartFile, unit: bytes) -> None:
    """Write one framed unit at the part's end and fsync it; on failure, cut the file back and re-raise."""
    header = _frame_header(len(unit), zlib.crc32(unit))
    start = part.file_end
    fd = os.open(part.path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size != start:
            raise StaleLayout(part.path.name)
        try:
            written = os.pwritev(fd, [header, unit], start)  # no copy of the unit into a frame
            if written < len(header) + len(unit):
                _write_all(fd, (header + unit)[written:], start + written)
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:
                pass  # the torn frame is cut on the next open
            raise
    finally:
        os.close(fd)
    part.frame_starts.append(start)
    part.unit_ends.append(part.payload_bytes + len(unit))


def read_payload(part: PartFile, start: int, end: int) -> bytes:
    """Payload bytes `[start, end)` of this part, every frame touched checked against its CRC."""
    if start >= end:
        return b""
    first = bisect_right(part.unit_ends, start)
    last = bisect_left(part.unit_ends, end)
    file_from = part.frame_starts[first]
    file_to = part.frame_starts[last] + FRAME_HEADER.size + part.unit_size(last)
    fd = os.open(part.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = _read_exact(fd, file_to - file_from, file_from)
    finally:
        os.close(fd)
    pieces: list[bytes] = []
    view = memoryview(raw)
    pos = 0
    for _ in range(first, last + 1):
        _magic, length, crc, _check = FRAME_HEADER.unpack_from(view, pos)
        body = view[pos + FRAME_HEADER.size : pos + FRAME_HEADER.size + length]
        if zlib.crc32(body) != crc:
            raise Corrupt(f"part {part.path.name}: a unit fails its checksum")
        pieces.append(bytes(body))
        pos += FRAME_HEADER.size + length
    joined = b"".join(pieces)
    skip = start - (part.unit_ends[first - 1] if first else 0)
    return joined[skip : skip + (end - start)]


def _frame_header(length: int, payload_crc: int) -> bytes:
    head = struct.pack(">4sII", FRAME_MAGIC, length, payload_crc)
    return head + struct.pack(">I", zlib.crc32(head))


def _frame_length(header: bytes) -> int | None:
    """The payload length a frame header announces; None unless it is a whole, self-consistent header."""
    if len(header) < FRAME_HEADER.size:
        return None
    magic, length, _crc, check = FRAME_HEADER.unpack(header)
    if magic != FRAME_MAGIC or zlib.crc32(header[:12]) != check or not 0 < length <= HARD_MAX_UNIT:
        return None
    return int(length)


def _last_frame_intact(fd: int, part: PartFile) -> bool:
    start = part.frame_starts[-1]
    _magic, length, crc, _check = FRAME_HEADER.unpack(os.pread(fd, FRAME_HEADER.size, start))
    body = _read_exact(fd, length, start + FRAME_HEADER.size)
    return zlib.crc32(body) == int(crc)


def _whole_frame_after(fd: int, end: int, size: int) -> bool:
    """Whether a whole, checksum-valid frame starts anywhere after `end`: then the damage is not a torn tail."""
    tail = _read_exact(fd, size - end, end)
    found = tail.find(FRAME_MAGIC, 1)
    while found != -1:
        length = _frame_length(tail[found : found + FRAME_HEADER.size])
        if length is not None and found + FRAME_HEADER.size + length <= len(tail):
            _magic, _length, crc, _check = FRAME_HEADER.unpack_from(tail, found)
            body = tail[found + FRAME_HEADER.size : found + FRAME_HEADER.size + length]
            if zlib.crc32(body) == crc:
                return True
        found = tail.find(FRAME_MAGIC, found + 1)
    return False


def _repair_torn_header(fd: int, path: Path, size: int) -> PartFile:
    created_at = datetime.fromtimestamp(os.fstat(fd).st_mtime, UTC)
    os.ftruncate(fd, 0)
    _write_all(fd, FILE_HEADER.pack(FILE_MAGIC, int(created_at.timestamp() * 1_000_000)), 0)
    os.fsync(fd)
    log.warning("storage.local.torn_header_rewritten", part=path.name, cut_bytes=size)
    return PartFile(path=path, created_at=created_at)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _read_exact(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            raise Corrupt("a part file is shorter than its frames say")
        chunks.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)
