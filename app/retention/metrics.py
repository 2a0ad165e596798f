"""Scheduler and retention metrics: job runs, durations and failures; what the purge and the sweep did (C7).

The scheduled job is the `job_name` label: `job` is the label Prometheus gives every scraped series (the
scrape job), and a series' own `job` would be renamed `exported_job` on scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

JOB_OUTCOMES = ("ok", "failed", "skipped")


class RetentionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.job_runs = Counter(
            "voicelog_scheduler_job_runs", "Scheduled job runs, by job and outcome (ok, failed, skipped: another "
            "replica held the job or it ran recently).", ["job_name", "outcome"], registry=registry,
        )
        self.job_failures = Counter(
            "voicelog_scheduler_job_failures", "Scheduled job runs that raised, by job and error type.",
            ["job_name", "error"], registry=registry,
        )
        self.job_duration = Histogram(
            "voicelog_scheduler_job_duration_seconds", "Duration of scheduled job runs that did run, by job.",
            ["job_name"], buckets=(0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0),
            registry=registry,
        )
        self.job_last_success = Gauge(
            "voicelog_scheduler_job_last_success_timestamp_seconds", "When each job last finished without error.",
            ["job_name"], registry=registry,
        )
        self.job_items = Counter(
            "voicelog_scheduler_job_items", "Units of work done by each job (recordings, blobs, entries...).",
            ["job_name"], registry=registry,
        )
        self.recordings_purged = Counter(
            "voicelog_retention_recordings_purged", "Recordings whose data key the purge destroyed, by region.",
            ["region"], registry=registry,
        )
        self.blobs_deleted = Counter(
            "voicelog_retention_blobs_deleted", "Recording blobs deleted after their key (purge, retries).",
            registry=registry,
        )
        self.blob_delete_failures = Counter(
            "voicelog_retention_blob_delete_failures", "Blob deletes that failed and wait as \"blob pending\".",
            registry=registry,
        )
        self.blobs_pending = Gauge(
            "voicelog_retention_blobs_pending", "Recordings whose key is gone but whose blob delete is pending.",
            registry=registry,
        )
        self.kek_buckets_destroyed = Counter(
            "voicelog_retention_kek_buckets_destroyed", "KEK buckets destroyed by the purge, by region.",
            ["region"], registry=registry,
        )
        self.overdue_buckets = Gauge(
            "voicelog_retention_overdue_buckets", "Buckets past their 30 days whose purge is not finished (alert "
            "on > 0: reads refuse them, but their keys or rows are still there).", registry=registry,
        )
        self.purge_errors = Counter(
            "voicelog_retention_purge_errors", "Purge steps that failed and will be retried, by step.",
            ["step"], registry=registry,
        )
        self.orphans_deleted = Counter(
            "voicelog_retention_orphan_blobs_deleted", "Orphan blobs the sweep deleted, by region and reason.",
            ["region", "reason"], registry=registry,
        )
        self.orphans_kept = Gauge(
            "voicelog_retention_orphan_blobs_kept", "Orphan blobs the last sweep found but could not delete "
            "(store error, or no audit action to record it), by region.", ["region"], registry=registry,
        )
        self.rows_missing_blob = Gauge(
            "voicelog_retention_rows_missing_blob", "Live recording rows older than the orphan age whose blob the "
            "last sweep did not find, by region.", ["region"], registry=registry,
        )
        self.report_overdue = Gauge(
            "voicelog_retention_report_overdue", "Overdue items in the newest daily report (should be 0), by kind.",
            ["kind"], registry=registry,
        )
        self.report_last_day = Gauge(
            "voicelog_retention_report_last_day_timestamp_seconds", "Start of the newest UTC day with a signed "
            "daily report.", registry=registry,
        )
