"""The recorder's knobs (`VOICELOG_CAPTURE__*`)."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


class CaptureSettings(BaseModel):
    """Segment sizes, memory caps (C9), and how long failures are retried before a recording is incomplete (C8)."""

    segment_seconds: float = Field(
        default=2.0, gt=0, le=30, description="Seal a recording's buffered frames at least this often."
    )
    segment_bytes: int = Field(
        default=256 * 1024, ge=4096, description="...or as soon as this many bytes are buffered."
    )
    segment_max_bytes: int = Field(
        default=1024 * 1024, ge=4096, le=3 * 1024 * 1024,
        description="Largest frame log one segment carries: a backlog built up while sealing was held back "
        "(a stalled store or loop) is sealed as several segments of at most this size, each well under the "
        "store's 4 MiB append limit (`max_unit_bytes`). A single frame larger than this travels alone.",
    )
    session_cap_bytes: int = Field(
        default=8 * 1024 * 1024, ge=65536,
        description="Most bytes one recording may hold in memory (buffered and sealed-but-unstored). Past "
        "it, frames are dropped from the recording and a gap marker is written (C9).",
    )
    process_cap_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1024 * 1024,
        description="Most bytes all recordings of this process may hold in memory together (C9).",
    )
    tick_s: float = Field(default=0.25, gt=0, le=5, description="How often the sealer looks at each recording.")
    seal_pace_s: float = Field(
        default=0.02, gt=0, le=5,
        description="How often the sealer looks for streaming recordings due to be sealed (at most `tick_s`). "
        "Fine, so that the seals of calls that started together are spread out rather than run back to back: "
        "at 200 recorded sessions a 0.25 s pace added about 9 ms to the relay's p99, 0.02 s about 2 ms "
        "(docs/ARCHITECTURE.md, \"Recording cost\").",
    )
    starts_per_s: float = Field(
        default=50.0, gt=0,
        description="Most recordings one process starts (data key, row, blob) per second. A burst of calls "
        "starts its recordings spread out, their frames buffered meanwhile (within the caps), instead of all at "
        "once while the relay carries their first frames.",
    )
    retry_deadline_s: float = Field(
        default=30.0, gt=0,
        description="A database or key service failing this long ends the recording as incomplete (the relayed "
        "session is never affected, C8); within it the sealer retries with backoff. A store that fails while "
        "the call is live is waited for however long it is away (memory stays within the caps; past them a gap "
        "is marked) and recording resumes when it is back; once the call has ended, the store gets this long "
        "from the end to take what is left.",
    )
    db_timeout_s: float = Field(
        default=5.0, gt=0, le=60,
        description="Deadline of each of the recorder's database steps (row insert and close, heartbeat, "
        "recovery of stale rows). A database that hangs past it counts as a failed step (retried until "
        "`retry_deadline_s`), and never holds up appends to the store (C8).",
    )
    heartbeat_s: float = Field(
        default=5.0, gt=0, description="How often a replica marks its live recordings as still being written."
    )
    stale_after_s: float = Field(
        default=60.0, gt=0,
        description="A recording whose replica has not written a heartbeat for this long is closed as "
        "incomplete (`relay_restarted`) by any replica.",
    )

    @model_validator(mode="after")
    def _cap_above_cadence(self) -> CaptureSettings:
        if self.segment_max_bytes < self.segment_bytes:
            raise ValueError("segment_max_bytes must be at least segment_bytes")
        return self
