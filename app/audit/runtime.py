"""The audit parts an app holds: settings, keyring, checkpoint sink and metrics (built once, passed down).

create_app wires it: `app.state.audit = AuditRuntime.from_settings(settings.audit, settings.data_dir,
registry=ctx.metrics.registry)`, and starts `ChainKeeper` and `VerifierJob` (app/audit/jobs.py) in its
lifespan. Routes reach it through `get_audit_runtime`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from fastapi import Request
from prometheus_client import CollectorRegistry

from app.audit.checkpoints import CheckpointPolicy, CheckpointSink, FileCheckpointSink
from app.audit.keys import Keyring, build_keyring
from app.audit.metrics import AuditMetrics
from app.audit.reports.access_review import AccessReviewParams
from app.audit.settings import AuditSettings
from app.errors import AppError


class AuditNotConfigured(AppError):
    status = 503
    code = "audit_not_configured"
    title = "The audit trail is not configured in this process"


@dataclass
class AuditRuntime:
    settings: AuditSettings
    keyring: Keyring
    sink: CheckpointSink
    metrics: AuditMetrics | None = None

    @classmethod
    def from_settings(
        cls, settings: AuditSettings, data_dir: Path, *, registry: CollectorRegistry | None = None
    ) -> AuditRuntime:
        return cls(
            settings=settings,
            keyring=build_keyring(settings, data_dir),
            sink=FileCheckpointSink(settings.export_path(data_dir)),
            metrics=AuditMetrics(registry) if registry is not None else None,
        )

    @property
    def policy(self) -> CheckpointPolicy:
        return CheckpointPolicy(
            every_entries=self.settings.checkpoint_every_entries,
            every=timedelta(minutes=self.settings.checkpoint_every_minutes),
        )

    @property
    def review_params(self) -> AccessReviewParams:
        return AccessReviewParams.from_settings(self.settings)


def get_audit_runtime(request: Request) -> AuditRuntime:
    """The app's AuditRuntime: `app.state.ctx.audit` if the context carries one, else `app.state.audit`."""
    runtime = getattr(getattr(request.app.state, "ctx", None), "audit", None) or getattr(
        request.app.state, "audit", None
    )
    if not isinstance(runtime, AuditRuntime):
        raise AuditNotConfigured()
    return runtime
