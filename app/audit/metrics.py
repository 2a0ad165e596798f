"""Audit metrics: what the scheduled verifier found and how the chain keeper is doing (C6)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

DAMAGE_KINDS = ("edited", "deleted", "inserted", "reordered", "tail_truncated", "bad_signature", "forged")


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.chain_ok = Gauge(
            "voicelog_audit_chain_ok", "1 when the last verification found no damage, 0 when it did.",
            registry=registry,
        )
        self.damage = Gauge(
            "voicelog_audit_damage", "1 for the kind of damage the last verification found first.", ["kind"],
            registry=registry,
        )
        self.verified_head = Gauge(
            "voicelog_audit_verified_head_seq", "Last entry the verifier checked.", registry=registry
        )
        self.sealed_through = Gauge(
            "voicelog_audit_sealed_through_seq", "Highest entry covered by a verified checkpoint.", registry=registry
        )
        self.last_verification = Gauge(
            "voicelog_audit_last_verification_timestamp_seconds", "When the verifier last finished.",
            registry=registry,
        )
        self.verification_seconds = Gauge(
            "voicelog_audit_verification_duration_seconds", "How long the last verification took.",
            registry=registry,
        )
        self.pending = Gauge(
            "voicelog_audit_pending_entries", "Entries committed but not chained yet (PostgreSQL inbox).",
            registry=registry,
        )
        self.chained = Counter(
            "voicelog_audit_entries_chained", "Queued entries the sequencer chained.", registry=registry
        )
        self.checkpoints = Counter(
            "voicelog_audit_checkpoints_signed", "Checkpoints signed.", registry=registry
        )
        self.exported = Counter(
            "voicelog_audit_checkpoints_exported", "Checkpoints copied to the external sink.", registry=registry
        )
        self.unauthenticated = Counter(
            "voicelog_audit_unauthenticated_entries",
            "Queued rows the sequencer chained without a MAC (forged, replayed or written without the key), by reason.",
            ["reason"], registry=registry,
        )
        self.unanchored_entries = Gauge(
            "voicelog_audit_unanchored_entries",
            "Entries (chained or queued) no exported checkpoint covered at the last verification.", registry=registry,
        )
        self.unanchored_seconds = Gauge(
            "voicelog_audit_unanchored_seconds",
            "Age of the oldest entry no exported checkpoint covered at the last verification (0: none).",
            registry=registry,
        )
        self.anchored_head = Gauge(
            "voicelog_audit_anchored_head_seq", "Head seq of the newest checkpoint this replica saw exported.",
            registry=registry,
        )
        self.last_anchored = Gauge(
            "voicelog_audit_last_anchored_checkpoint_timestamp_seconds",
            "signed_at of the newest checkpoint this replica saw exported (alert when it lags while entries arrive).",
            registry=registry,
        )
        self.keeper_errors = Counter(
            "voicelog_audit_keeper_errors", "Chain keeper failures, by step.", ["step"], registry=registry
        )
