"""Recorder metrics: live recordings, memory held, outcomes, drops and failures by reason."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CaptureMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.active = Gauge("voicelog_recordings_active", "Recordings being written by this process.",
                            registry=registry)
        self.backlog = Gauge("voicelog_recorder_backlog_bytes",
                             "Bytes held in memory by the recorder (buffered or sealed, not yet stored).",
                             registry=registry)
        self.started = Counter("voicelog_recordings_started", "Recordings started.", registry=registry)
        self.completed = Counter("voicelog_recordings_finished", "Recordings finished, by outcome.", ["outcome"],
                                 registry=registry)
        self.sealed_bytes = Counter("voicelog_recorder_sealed_bytes", "Sealed segment bytes produced.",
                                    registry=registry)
        self.dropped_frames = Counter("voicelog_recorder_dropped_frames",
                                      "Frames left out of recordings because a memory cap was reached (C9).",
                                      registry=registry)
        self.errors = Counter("voicelog_recorder_errors", "Recorder failures, by reason.", ["reason"],
                              registry=registry)
        self.store_free = Gauge("voicelog_storage_free_bytes",
                                "Free bytes on the filesystem of a local region store, as last probed with "
                                "readiness (NaN before the first probe); under `local_min_free_bytes` /readyz "
                                "reports the store `low_space`.", ["region"], registry=registry)
        for outcome in ("complete", "incomplete"):
            self.completed.labels(outcome)
