"""The bounded in-memory tap (C9): frames in, gaps marked, never more than the caps allow.

The relay calls `on_frame` inline for every frame of a recorded session. It appends a reference to the
payload (no copy, no parsing) and accounts its size against the session cap and the process budget.
Past either cap the frame is dropped from the recording, never from the call, and the run of dropped
frames becomes one gap marker in the next segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.capture.frame_log import FRAME_OVERHEAD, GapRecord


class MemoryBudget:
    """Bytes held by every recording of this process, sealed or not yet sealed."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap = cap_bytes
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.cap:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


@dataclass(slots=True)
class PendingGap:
    from_us: int
    to_us: int
    frames: int = 0
    bytes: int = 0
    reason: str = ""


BufferItem = tuple[int, int, int, bytes] | GapRecord
"""A frame as the frame log stores it, `(direction, opcode, offset_us, payload)` with the log's own codes
(`C2S`/`S2C`, `TEXT`/`BINARY`; a text payload is its UTF-8 bytes), or a gap. Plain ints and bytes: the encoder
writes them as they are, and a tuple of them is not tracked by the garbage collector once it has survived one
collection, so hundreds of sessions' buffered frames cost the collector nothing."""

MARKER_MAX_BYTES = 1 + 8 + 8 + 4 + 8 + 1 + 255
"""Upper bound of an encoded gap or end record (docs/FORMAT.md: fixed head plus a reason of <= 255 bytes)."""


@dataclass
class FrameBuffer:
    """One session's frames not yet sealed. Sizes count against `session_cap` and the process budget."""

    budget: MemoryBudget
    session_cap: int
    items: list[BufferItem] = field(default_factory=list)
    held: int = 0  # bytes of `items` plus sealed-but-unappended segments of this session
    dropped_frames: int = 0
    dropped_bytes: int = 0
    gap: PendingGap | None = None
    buffered: int = 0  # bytes of `items` only

    def add(self, direction: int, opcode: int, offset_us: int, payload: bytes) -> None:
        """One frame in the frame log's codes (`C2S`/`S2C`, `TEXT`/`BINARY`)."""
        # `budget.take`, inline: this runs on the relay's event loop for every recorded frame.
        size = len(payload) + FRAME_OVERHEAD
        if self.held + size > self.session_cap:
            self._drop(offset_us, size, "session_cap")
            return
        budget = self.budget
        if budget.used + size > budget.cap:
            self._drop(offset_us, size, "process_cap")
            return
        budget.used += size
        if self.gap is not None:
            self._close_gap()
        self.items.append((direction, opcode, offset_us, payload))
        self.held += size
        self.buffered += size

    def mark_gap(self, offset_us: int, reason: str) -> None:
        """A gap that is not about memory (e.g. the store was down and its segments were lost)."""
        if self.gap is None:
            self.gap = PendingGap(offset_us, offset_us, reason=reason)
        self.gap.reason = self.gap.reason or reason

    def _drop(self, offset_us: int, size: int, reason: str) -> None:
        self.dropped_frames += 1
        self.dropped_bytes += size
        if self.gap is None:
            self.gap = PendingGap(offset_us, offset_us, reason=reason)
        self.gap.to_us = offset_us
        self.gap.frames += 1
        self.gap.bytes += size

    def _close_gap(self) -> None:
        gap, self.gap = self.gap, None
        if gap is not None:
            self.items.append(GapRecord(gap.from_us, gap.to_us, gap.frames, gap.bytes, gap.reason))

    def take(self) -> tuple[list[BufferItem], int]:
        """Everything buffered so far (a pending gap is closed into it) and its accounted size."""
        if self.gap is not None:
            self._close_gap()
        items, self.items = self.items, []
        size, self.buffered = self.buffered, 0
        return items, size

    def release(self, size: int) -> None:
        """The caller sealed and appended (or gave up on) `size` bytes taken earlier."""
        self.held = max(0, self.held - size)
        self.budget.give(size)


def split_for_segments(items: list[BufferItem], max_bytes: int, reserve: int = 0
                       ) -> list[tuple[list[BufferItem], int]]:
    """Cut taken items into runs whose frame log stays within `max_bytes` (the last run also leaves room
    for `reserve`, the end record), each with the size it was accounted with. A backlog after a stall
    becomes several segments the store can append, never one it refuses. A single frame larger than the
    cap travels alone."""
    runs: list[tuple[list[BufferItem], int]] = []
    run: list[BufferItem] = []
    run_bytes = accounted = 0
    for item in items:
        size = MARKER_MAX_BYTES if isinstance(item, GapRecord) else len(item[3]) + FRAME_OVERHEAD
        if run and run_bytes + size > max_bytes:
            runs.append((run, accounted))
            run, run_bytes, accounted = [], 0, 0
        run.append(item)
        run_bytes += size
        if not isinstance(item, GapRecord):
            accounted += size
    if run and reserve and run_bytes + reserve > max_bytes:
        runs.append((run, accounted))
        run, accounted = [], 0
    runs.append((run, accounted))
    return runs
