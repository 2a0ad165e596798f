"""Audit knobs (C6): checkpoint cadence, signing keys, the external checkpoint export, report thresholds."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class RetiredPublicKey(BaseModel):
    """A signing key no longer in use whose public half still verifies old checkpoints and reports."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str = Field(min_length=1, max_length=64, description="The key id checkpoints name (`ed25519:<hex>`).")
    public_key: str = Field(description="Raw 32-byte Ed25519 public key, standard base64.")
    not_before: datetime = Field(description="Start of the key's validity window (UTC).")
    not_after: datetime = Field(description="End of the key's validity window (UTC, exclusive).")


class RetiredEntryMacKey(BaseModel):
    """An entry MAC key no longer current: its MACs verify up to `last_seq` (unset: at any seq)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: SecretStr = Field(description="The retired key: 32 bytes, standard base64.")
    last_seq: int | None = Field(
        default=None, ge=0,
        description="The last seq it may MAC (`voicelog audit verify` reports each key's highest). Unset: "
        "any seq, so whoever holds a leaked retired key can still append; pin it once every process runs the "
        "new key.",
    )


class AuditSettings(BaseModel):
    """How the audit trail is sealed, exported, verified and reported on. Defaults suit the embedded mode."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- chaining (PostgreSQL queues entries; the sequencer chains them) -------------------------------------
    sequencer_interval_s: float = Field(
        default=0.2, gt=0, le=60,
        description="How often each replica's sequencer chains queued entries (PostgreSQL). An entry is "
        "committed with its change at once; one queued by this process wakes its sequencer at the commit, and "
        "rounds come at most this often while entries keep coming.",
    )
    sequencer_quiet_poll_s: float = Field(
        default=1.0, gt=0, le=60,
        description="Entries queued elsewhere (another replica, the CLI) are found by polling the inbox: every "
        "`sequencer_interval_s` while entries keep coming, slowing to this once the inbox stays empty "
        "(PostgreSQL; on SQLite entries are chained as they are written and nothing is polled).",
    )
    sequencer_idle_s: float = Field(
        default=5.0, gt=0, le=300,
        description="A full sequencer round (chain, sign a checkpoint due by time, export checkpoints signed "
        "elsewhere) runs when woken by an entry this process queued, when a poll finds one queued elsewhere, and "
        "at least this often (and at least every `checkpoint_every_s`).",
    )
    sequencer_batch: int = Field(
        default=2000, ge=1, le=50_000, description="Most queued entries chained in one sequencer transaction."
    )

    # --- signed checkpoints ----------------------------------------------------------------------------------
    checkpoint_every_entries: int = Field(
        default=1000, ge=1, description="Sign a checkpoint once this many entries follow the last one."
    )
    checkpoint_every_s: float = Field(
        default=5.0, gt=0, le=3600,
        description="Sign (and export) a checkpoint at least this often while new entries arrive: the bound on "
        "the unanchored tail, in seconds. A checkpoint is never signed for the keeper's own entries alone.",
    )
    checkpoint_every_minutes: float | None = Field(
        default=None, gt=0,
        description="Deprecated spelling of `checkpoint_every_s` (minutes); when set it wins. Do not set both.",
    )
    checkpoint_sink: Literal["file", "azure"] = Field(
        default="file",
        description="Where checkpoints are anchored outside the database: `file` (an append-only JSON-lines "
        "file, `checkpoint_export_path`; the embedded default) or `azure` (append blobs in a container with a "
        "time-based immutability policy; production).",
    )
    checkpoint_blob_account_url: str | None = Field(
        default=None,
        description="With `checkpoint_sink=azure`: the storage account's blob endpoint, reached with Entra ID "
        "(DefaultAzureCredential). The account must not be writable by database administrators.",
    )
    checkpoint_blob_connection_string: SecretStr | None = Field(
        default=None,
        description="With `checkpoint_sink=azure`: a connection string instead of the account URL "
        "(Azurite, tests).",
    )
    checkpoint_blob_container: str = Field(
        default="audit-checkpoints", min_length=3, max_length=63,
        description="With `checkpoint_sink=azure`: the container (ops/deploy/storage.bicep makes it, WORM).",
    )
    checkpoint_blob_prefix: str = Field(
        default="checkpoints/", max_length=200,
        description="With `checkpoint_sink=azure`: name prefix of the append blobs (one per 10,000 checkpoints).",
    )
    signing_key_dir: Path | None = Field(
        default=None,
        description="Directory of the file keyring (one 0600 JSON file per Ed25519 key, directory 0700); "
        "default `<data_dir>/audit-keys`. Ignored when `signing_key` is set.",
    )
    signing_key: SecretStr | None = Field(
        default=None,
        description="The checkpoint signing key from configuration instead of the file keyring: a raw "
        "32-byte Ed25519 private key, standard base64 (e.g. a Key Vault secret). Every replica shares it.",
    )
    signing_key_not_before: datetime | None = Field(
        default=None,
        description="With `signing_key`: start of its validity window, published on /audit/keys. Required "
        "with `signing_key`.",
    )
    retired_public_keys: list[RetiredPublicKey] = Field(
        default_factory=list,
        description="With `signing_key`: the public halves of previous keys and their windows (JSON list), "
        "so checkpoints signed before a rotation still verify.",
    )
    signing_key_rotation_days: float = Field(
        default=90.0, gt=0,
        description="File keyring: a new signing key replaces the current one once it is this old.",
    )
    checkpoint_export_path: Path | None = Field(
        default=None,
        description="Append-only JSON-lines file every checkpoint is copied to (the external write-once "
        "place that makes a truncated tail detectable); default `<data_dir>/audit-checkpoints.jsonl`. Put it "
        "on storage the database administrators cannot write (and `chattr +a` it).",
    )

    # --- entry MACs: an entry written with the database role alone does not verify ------------------------
    entry_mac_key: SecretStr | None = Field(
        default=None,
        description="The key that authenticates every entry (HMAC-SHA256): 32 random bytes, standard base64, "
        "e.g. a Key Vault secret, shared by every replica, worker and CLI that writes audit entries. Unset: a "
        "0600 file `entry-mac.key` in the signing key directory, created on first use.",
    )
    require_configured_keys: bool = Field(
        default=False,
        description="Refuse to start unless `entry_mac_key` and `signing_key` are set, instead of making keys "
        "in the data directory: where several replicas share one chain (a deployment), a key made per pod "
        "would make each pod's entries forged to the others. The Helm chart sets it.",
    )
    retired_entry_mac_keys: list[RetiredEntryMacKey] = Field(
        default_factory=list,
        description="Previous (or not yet current) entry MAC keys (JSON list of `{\"key\": base64, \"last_seq\": "
        "N}`; a bare base64 string is a key without `last_seq`): entries and queued rows MAC'd with them verify up "
        "to `last_seq`. Rotation: docs/AUDIT.md, \"Entry MACs\".",
    )
    entry_mac_from_seq: int = Field(
        default=1, ge=1,
        description="Entries below this seq were chained before entry MACs existed (a chain upgraded past "
        "migration 0010): their MACs are not checked. Set it once, to the first seq after the upgrade.",
    )

    # --- verification ----------------------------------------------------------------------------------------
    verify_every_minutes: float = Field(
        default=60.0, gt=0, description="How often the scheduled verifier re-checks the whole chain."
    )
    pending_alarm_s: float = Field(
        default=300.0, gt=0,
        description="The verifier reports queued entries older than this as a stalled sequencer.",
    )

    # --- reports ---------------------------------------------------------------------------------------------
    retention_days: int = Field(
        default=30, ge=1, le=3650, description="Recordings and their KEK buckets must be gone by this age (C7)."
    )
    fast_approval_s: int = Field(
        default=60, ge=0, description="Access review: an approval this soon after its request is flagged."
    )
    working_hours_start: int = Field(default=8, ge=0, le=23, description="Working hours start (local hour).")
    working_hours_end: int = Field(default=18, ge=1, le=24, description="Working hours end (local hour, exclusive).")
    working_days: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        description="Working days, 0 = Monday. Approvals outside these days/hours are flagged.",
    )
    working_timezone: str = Field(
        default="UTC", description="IANA time zone of the working hours, e.g. `Europe/Berlin`."
    )
    dominant_pair_percent: int = Field(
        default=50, ge=1, le=100,
        description="Flag a requester-approver pair holding at least this share of the period's approvals.",
    )
    dominant_pair_min_approvals: int = Field(
        default=5, ge=1, description="...when the pair made at least this many approvals."
    )
    repeated_denials: int = Field(
        default=3, ge=2, description="Flag a requester with at least this many denials (access or reads)."
    )

    @field_validator("retired_entry_mac_keys", mode="before")
    @classmethod
    def _bare_mac_keys(cls, keys: object) -> object:
        """A bare key (the form before `last_seq` existed) is a retired key valid at any seq."""
        if not isinstance(keys, list):
            return keys
        return [{"key": k} if isinstance(k, str | SecretStr) else k for k in keys]

    @field_validator("working_days")
    @classmethod
    def _weekdays(cls, days: list[int]) -> list[int]:
        if any(d < 0 or d > 6 for d in days):
            raise ValueError("working days are 0 (Monday) to 6 (Sunday)")
        return sorted(set(days))

    @field_validator("working_timezone")
    @classmethod
    def _timezone(cls, name: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {name!r}") from exc
        return name

    @model_validator(mode="after")
    def _consistent(self) -> AuditSettings:
        if self.working_hours_end <= self.working_hours_start:
            raise ValueError("working_hours_end must be after working_hours_start")
        if self.require_configured_keys and (self.entry_mac_key is None or self.signing_key is None):
            missing = [name for name in ("entry_mac_key", "signing_key") if getattr(self, name) is None]
            raise ValueError(f"`require_configured_keys` is set but {' and '.join(missing)} is not: the keys come "
                             "from the secrets vault, never from the data directory (docs/DEPLOY.md, Audit keys)")
        if self.signing_key is not None and self.signing_key_not_before is None:
            raise ValueError("`signing_key` needs `signing_key_not_before` (published on /audit/keys)")
        if self.checkpoint_every_minutes is not None and "checkpoint_every_s" in self.model_fields_set:
            raise ValueError("set `checkpoint_every_s` or the deprecated `checkpoint_every_minutes`, not both")
        if self.checkpoint_sink == "azure" and not (
            self.checkpoint_blob_account_url or self.checkpoint_blob_connection_string
        ):
            raise ValueError("`checkpoint_sink=azure` needs `checkpoint_blob_account_url` or a connection string")
        if self.retired_public_keys and self.signing_key is None:
            raise ValueError("`retired_public_keys` go with `signing_key`; the file keyring keeps its own")
        return self

    @property
    def checkpoint_interval_s(self) -> float:
        """The time cadence of checkpoints, whichever spelling set it."""
        if self.checkpoint_every_minutes is not None:
            return self.checkpoint_every_minutes * 60
        return self.checkpoint_every_s

    def key_dir(self, data_dir: Path) -> Path:
        return self.signing_key_dir or data_dir / "audit-keys"

    def export_path(self, data_dir: Path) -> Path:
        return self.checkpoint_export_path or data_dir / "audit-checkpoints.jsonl"
