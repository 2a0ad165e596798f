"""Prometheus metrics: one registry per app instance, so tests can build many apps in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RelayMetrics:
    """What an operator watches on the relay: sessions, frames, bytes, errors and added latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.active_sessions = Gauge(
            "voicelog_relay_active_sessions", "Relayed sessions currently open.", registry=registry
        )
        self.sessions_total = Counter(
            "voicelog_relay_sessions", "Relayed sessions opened.", registry=registry
        )
        self.frames = Counter(
            "voicelog_relay_frames", "Frames relayed, by direction.", ["direction"], registry=registry
        )
        self.bytes = Counter(
            "voicelog_relay_bytes", "Payload bytes relayed, by direction.", ["direction"], registry=registry
        )
        self.errors = Counter(
            "voicelog_relay_errors", "Relay failures, by reason.", ["reason"], registry=registry
        )
        self.added_latency = Histogram(
            "voicelog_relay_added_latency_seconds",
            "Time from a frame's arrival at the relay to its hand-off to the other side.",
            ["direction"],
            buckets=(5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.25, 1.0),
            registry=registry,
        )
        for direction in ("c2s", "s2c"):  # series exist from the start, so rates and alerts see zeros
            self.frames.labels(direction)
            self.bytes.labels(direction)
            self.added_latency.labels(direction)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.relay = RelayMetrics(self.registry)
