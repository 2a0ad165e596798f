"""The audit parts an app holds: settings, keyring, checkpoint sink and metrics (built once, passed down).

`app.wiring.build_context` builds it (`AppContext.audit`) for the app, the CLI and the worker; create_app
starts `ChainKeeper` and `VerifierJob` (app/audit/jobs.py) in its lifespan. Routes reach it through
`AuditRuntimeDep`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from fastapi import Depends
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.checkpoints import CheckpointPolicy, CheckpointSink, FileCheckpointSink
from app.audit.entry_mac import EntryMacKeys, bind_entry_mac, build_entry_mac_keys
from app.audit.keys import Keyring, build_keyring
from app.audit.metrics import AuditMetrics
from app.audit.reports.access_review import AccessReviewParams
from app.audit.settings import AuditSettings
from app.context import ContextDep


@dataclass
class AuditRuntime:
    settings: AuditSettings
    keyring: Keyring
    sink: CheckpointSink
    metrics: AuditMetrics | None = None
    mac_keys: EntryMacKeys | None = None  # None: MACs are neither written by the keeper nor checked

    @classmethod
    def from_settings(
        cls, settings: AuditSettings, data_dir: Path, *, registry: CollectorRegistry | None = None,
    ) -> AuditRuntime:
        """Build the parts. The entry MAC key is made if missing (so a CLI that audits before the first
        `serve` writes authenticated entries); `bind_sessions` gives it to the sessions that append."""
        mac_keys = build_entry_mac_keys(settings, data_dir)
        return cls(
            settings=settings,
            keyring=build_keyring(settings, data_dir),
            sink=build_checkpoint_sink(settings, data_dir),
            metrics=AuditMetrics(registry) if registry is not None else None,
            mac_keys=mac_keys,
        )

    def bind_sessions(self, factory: async_sessionmaker[AsyncSession]) -> async_sessionmaker[AsyncSession]:
        """`factory`, its sessions appending with this runtime's entry MAC keys."""
        return bind_entry_mac(factory, self.mac_keys)

    @property
    def policy(self) -> CheckpointPolicy:
        return CheckpointPolicy(
            every_entries=self.settings.checkpoint_every_entries,
            every=timedelta(seconds=self.settings.checkpoint_interval_s),
        )

    @property
    def review_params(self) -> AccessReviewParams:
        return AccessReviewParams.from_settings(self.settings)


def build_checkpoint_sink(settings: AuditSettings, data_dir: Path) -> CheckpointSink:
    """Where checkpoints are anchored: Azure append blobs (production) or the append-only file."""
    if settings.checkpoint_sink == "azure":
        from app.audit.blob_sink import AzureBlobCheckpointSink

        return AzureBlobCheckpointSink.from_settings(settings)
    return FileCheckpointSink(settings.export_path(data_dir))


def get_audit_runtime(ctx: ContextDep) -> AuditRuntime:
    return ctx.audit


AuditRuntimeDep = Annotated[AuditRuntime, Depends(get_audit_runtime)]
