"""Opening a stored recording: unwrap its data key, stream its blob, decrypt, decode the frame log.

Used by playback (point-wise, after the read policy allowed it) and by tests. The region always comes
from the recording's row, never from a caller (C3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.capture.frame_log import EndRecord, FrameRecord, GapRecord, decode
from app.capture.models import Recording
from app.storage.layout import RecordingKey
from app.storage.router import RegionRouter
from app.vault.envelope import unwrap_data_key
from app.vault.errors import KeyUnavailable
from app.vault.keyring import RegionKeyrings
from app.vault.segments import SegmentReader


class RecordingUnreadable(Exception):
    """The recording's key is gone (erased, purged) or it was never written."""


@dataclass
class RecordingContents:
    frames: list[FrameRecord] = field(default_factory=list)
    gaps: list[GapRecord] = field(default_factory=list)
    end: EndRecord | None = None
    complete: bool = False
    stored_bytes: int = 0


async def read_recording(recording: Recording, *, keyrings: RegionKeyrings, stores: RegionRouter) -> RecordingContents:
    """Every frame, gap and the end marker of one recording; `complete` is False for a truncated stream."""
    if recording.wrapped_dek is None:
        raise RecordingUnreadable("no data key")
    try:
        dek = await unwrap_data_key(keyrings.for_region(recording.region), recording.wrapped_dek,
                                    region=recording.region, request_id=recording.request_id)
    except KeyUnavailable as exc:
        raise RecordingUnreadable("key destroyed") from exc
    contents = RecordingContents()
    with dek:
        reader = SegmentReader(dek, region=recording.region, request_id=recording.request_id)
        key = RecordingKey(recording.request_id, recording.started_at)
        async for chunk in stores.store(recording.region).stream(key):
            contents.stored_bytes += len(chunk)
            for segment in reader.feed(chunk):
                for record in decode(segment.plaintext):
                    if isinstance(record, FrameRecord):
                        contents.frames.append(record)
                    elif isinstance(record, GapRecord):
                        contents.gaps.append(record)
                    else:
                        contents.end = record
        contents.complete = reader.close()
    return contents
