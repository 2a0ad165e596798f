"""When a recording's time is up (C7): the one rule the purge and the read policy share.

A recording lives in the KEK bucket of (region, UTC hour it started). The bucket ends `lifetime` (30 days)
after that hour began; from then on the recording is refused to every reader, whether or not the purge has
run yet, and the purge destroys it (`purge_lead` earlier, so that it is gone by then).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class RecordingTimes(Protocol):
    """What the rule needs of a recording: when it started. A `bucket_start` is honoured when the object has one
    (an `app.capture.models.Recording` does; the access domain's `RecordingView` need not)."""

    @property
    def started_at(self) -> datetime: ...


def bucket_hour(moment: datetime) -> datetime:
    """The UTC hour an instant falls in: its KEK bucket's start."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime given for a bucket")
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def bucket_end(recording: RecordingTimes, lifetime: timedelta) -> datetime:
    """The instant the recording's bucket is past its life: its hour's start plus `lifetime`.

    The earlier of the stored bucket (if any) and the hour of `started_at`, so a row with a wrong bucket
    never lives longer than its own start allows.
    """
    hour = bucket_hour(recording.started_at)
    stored = getattr(recording, "bucket_start", None)
    if isinstance(stored, datetime):
        hour = min(hour, bucket_hour(stored))
    return hour + lifetime


def recording_expired(recording: RecordingTimes, now: datetime, lifetime: timedelta) -> bool:
    """C7: True once the recording's bucket is past its lifetime. Reads must refuse it, even if not purged yet."""
    return now >= bucket_end(recording, lifetime)


def purge_due_at(bucket_start: datetime, lifetime: timedelta, lead: timedelta) -> datetime:
    """When the purge takes a bucket: `lead` before the end of its life."""
    return bucket_hour(bucket_start) + lifetime - lead


def purge_cutoff(now: datetime, lifetime: timedelta, lead: timedelta) -> datetime:
    """Buckets that started at or before this instant are due for purge now."""
    return now - lifetime + lead
