"""Opening a stored recording: unwrap its data key, stream its blob, decrypt, decode the frame log.

Used by playback (point-wise, after the read policy allowed it) and by tests. The region always comes
from the recording's row, never from a caller (C3). `RecordingStream` holds one segment at a time, so
memory stays bounded whatever the recording's length.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from app.capture.frame_log import EndRecord, FrameRecord, GapRecord, Record, decode
from app.capture.models import Recording
from app.storage.errors import NotFound
from app.storage.layout import RecordingKey
from app.storage.router import RegionRouter
from app.vault.envelope import unwrap_data_key
from app.vault.errors import KeyUnavailable
from app.vault.keyring import RegionKeyrings
from app.vault.segments import SegmentReader


class RecordingUnreadable(Exception):
    """The recording's key is gone (erased, purged) or it was never written."""


class RecordingStream:
    """Async iterator over a recording's records; `complete` and `nothing_stored` are known once it is exhausted."""

    def __init__(self, recording: Recording, *, keyrings: RegionKeyrings, stores: RegionRouter) -> None:
        self._recording = recording
        self._keyrings = keyrings
        self._stores = stores
        self.complete = False
        self.nothing_stored = False
        self.stored_bytes = 0

    async def __aiter__(self) -> AsyncIterator[Record]:
        recording = self._recording
        if recording.wrapped_dek is None:
            raise RecordingUnreadable("no data key")
        try:
            dek = await unwrap_data_key(self._keyrings.for_region(recording.region), recording.wrapped_dek,
                                        region=recording.region, request_id=recording.request_id)
        except KeyUnavailable as exc:
            raise RecordingUnreadable("key destroyed") from exc
        with dek:
            reader = SegmentReader(dek, region=recording.region, request_id=recording.request_id)
            key = RecordingKey(recording.request_id, recording.started_at)
            try:
                async for chunk in self._stores.store(recording.region).stream(key):
                    self.stored_bytes += len(chunk)
                    for segment in reader.feed(chunk):
                        for record in decode(segment.plaintext):
                            yield record
            except NotFound:
                if self.stored_bytes:
                    raise  # it vanished under the read: not a recording that stored nothing
            if self.stored_bytes == 0:
                # Nothing stored (the store was down or full before the first segment, C8): no blob, or an
                # empty one. It reads as empty and incomplete; the row says why.
                self.nothing_stored = True
                return
            self.complete = reader.close()


@dataclass
class RecordingContents:
    frames: list[FrameRecord] = field(default_factory=list)
    gaps: list[GapRecord] = field(default_factory=list)
    end: EndRecord | None = None
    complete: bool = False
    stored_bytes: int = 0


async def read_recording(recording: Recording, *, keyrings: RegionKeyrings, stores: RegionRouter) -> RecordingContents:
    """Everything of one recording in memory (tests, small tools); playback streams instead."""
    stream = RecordingStream(recording, keyrings=keyrings, stores=stores)
    contents = RecordingContents()
    async for record in stream:
        if isinstance(record, FrameRecord):
            contents.frames.append(record)
        elif isinstance(record, GapRecord):
            contents.gaps.append(record)
        else:
            contents.end = record
    contents.complete, contents.stored_bytes = stream.complete, stream.stored_bytes
    return contents
