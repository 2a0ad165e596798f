"""Access metrics: reads by part, refusals by reason, refusal bursts (the alert), rate limiting."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from app.access.policy import DenyReason


class AccessMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reads = Counter("voicelog_access_reads", "Recording reads served, by part.", ["part"],
                             registry=registry)
        self.read_bytes = Counter("voicelog_access_read_bytes", "Bytes of recordings served, by part.", ["part"],
                                  registry=registry)
        self.denied = Counter("voicelog_access_denied_reads", "Refused reads, by reason (never shown to callers).",
                              ["reason"], registry=registry)
        self.denial_bursts = Counter(
            "voicelog_access_denial_bursts",
            "A person or SAW reached the refused-read threshold (alert on any increase).", registry=registry)
        self.rate_limited = Counter("voicelog_access_rate_limited", "Reads refused with 429.", registry=registry)
        for reason in DenyReason:
            self.denied.labels(reason.value)
