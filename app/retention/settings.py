"""RetentionSettings: the retention scheduler's knobs, nested into the app's Settings as `retention`.

The lifetime itself is the vault's `bucket_lifetime_hours` (one number decides when a KEK dies and when its
recordings are purged); the report's limit is the audit's `retention_days`. Both default to 30 days (C7).
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field


class RetentionSettings(BaseModel):
    """The retention scheduler (C7): purge cadence and batching, orphan sweep, daily report, job cadences."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheduler_enabled: bool = Field(
        default=True,
        description="Run the scheduled jobs (purge, audit checkpoints, orphan sweep, report) in this process. "
        "Safe on every replica; turn it off where a separate `voicelog worker` runs them.",
    )
    purge_every_s: int = Field(
        default=60, ge=10, le=3600,
        description="Purge cadence. Runs are aligned to multiples of this since the epoch, so with 60 s they "
        "start at second 0 of each minute, when bucket deadlines fall.",
    )
    purge_lead_s: int = Field(
        default=60, ge=0, le=3600,
        description="A bucket is purged this long before its 30 days are up, so a purge that starts on the tick "
        "before the deadline finishes in time: recordings are gone at 30 days at the latest, and none before "
        "29 days 23 hours minus this lead. 0 purges on the deadline itself (a recording that started in the "
        "first seconds of its hour may then be purged that many seconds past its 30 days).",
    )
    purge_batch: int = Field(
        default=200, ge=1, le=5000,
        description="Recordings whose data keys are destroyed in one transaction (purge step 1).",
    )
    key_erase_concurrency: int = Field(
        default=16, ge=1, le=256,
        description="Key service erasures in flight at once (purge step 1; the local keyring does one at a time).",
    )
    blob_delete_concurrency: int = Field(
        default=8, ge=1, le=256, description="Blob deletes in flight at once (purge step 2, pending retries)."
    )
    pending_blobs_every_s: int = Field(
        default=60, ge=10, le=3600,
        description="How often blob deletes that failed (\"blob pending\") are retried.",
    )
    pending_blobs_batch: int = Field(
        default=500, ge=1, le=10_000, description="Pending blob deletes retried per run."
    )
    orphan_sweep_every_s: int = Field(
        default=3600, ge=60, description="How often every region's store is listed for orphans."
    )
    orphan_min_age_s: int = Field(
        default=3600, ge=60,
        description="A blob without a live recording row is an orphan once it is this old (a recording's row "
        "is written before its blob; this covers clock skew and slow commits). Rows this old whose blob is "
        "missing are flagged.",
    )
    report_every_s: int = Field(
        default=3600, ge=60,
        description="How often the daily report job looks for finished UTC days without a stored signed "
        "report (so a day missed while the process was down is made on the next run).",
    )
    report_delay_s: int = Field(
        default=900, ge=0, description="A day is reported this long after it ends (late writers settle)."
    )
    report_catch_up_days: int = Field(
        default=7, ge=1, le=366, description="Most past days the report job makes up after an outage."
    )
    audit_checkpoint_every_s: int = Field(
        default=5, ge=1,
        description="`voicelog worker` only: how often its scheduler runs one round of the audit chain keeper "
        "(chain queued entries, sign a checkpoint when the audit policy says one is due, export it); it bounds "
        "how long a tail the worker alone leaves unanchored. Under `voicelog serve` the audit's own keeper does "
        "this, on `VOICELOG_AUDIT__CHECKPOINT_EVERY_S`.",
    )
    audit_verify_every_s: int | None = Field(
        default=None, ge=60,
        description="`voicelog worker` only: how often the audit chain is verified; unset = the audit settings' "
        "`verify_every_minutes`, which is what `voicelog serve` uses. One replica verifies per period.",
    )
    shutdown_timeout_s: float = Field(
        default=30.0, ge=0, description="On shutdown, how long running jobs may finish before they are cancelled."
    )

    @property
    def purge_lead(self) -> timedelta:
        return timedelta(seconds=self.purge_lead_s)

    @property
    def orphan_min_age(self) -> timedelta:
        return timedelta(seconds=self.orphan_min_age_s)
