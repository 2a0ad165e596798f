"""Retention: every recording and its data key gone within 30 days, provably (C7); erasure on request.

- `scheduler.build_scheduler(...)` -> `RetentionScheduler` (`start()`, `await shutdown()`, `run_job(name)`):
  purge, pending blob retries, audit checkpoint and verify, orphan sweep, daily signed report, extra jobs.
- `policy.recording_expired(recording, now, lifetime)`: the read policy's C7 check.
- `purge.Purger`, `orphans.OrphanSweep`, `report.generate_retention_report`, `shred.shred_recording`.
- `routes.router` (GET /retention/report, auditors), `cli.retention_cli` and `cli.worker` (`voicelog worker`).
- `settings.RetentionSettings` (`VOICELOG_RETENTION__*`). docs/RETENTION.md explains it all.
"""
