"""`voicelog retention report` (mounted as `retention`) and `voicelog worker` (the scheduler alone).

    cli.add_typer(retention_cli, name="retention")
    cli.command("worker")(worker)

Exit codes: 0 fine, 2 could not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from app.audit.actions import Actor
from app.audit.cli import (
    FormatOption,
    FromOption,
    OutputOption,
    SignatureOption,
    ToOption,
    parse_day,
    run_or_exit,
    write_signed_report,
)
from app.audit.reports.entries import Period
from app.audit.reports.service import ReportFormat, SignedReportOutput
from app.retention.report import chain_queued_entries, generate_retention_report
from app.retention.settings import RetentionSettings

if TYPE_CHECKING:
    from app.audit.settings import AuditSettings
    from app.config import Settings
    from app.retention.jobs import ScheduledJob

retention_cli = typer.Typer(help="Retention (C7): what was purged, per region and day, signed.", no_args_is_help=True)

T = TypeVar("T")
CLI_ACTOR = Actor.system("cli")



@retention_cli.callback()
def retention_group() -> None:
    """Retention (C7): what was purged, per region and day, signed."""


def _settings() -> tuple[Settings, AuditSettings, RetentionSettings]:
    from app.audit.settings import AuditSettings
    from app.config import Settings

    settings = Settings()
    audit = getattr(settings, "audit", None)  # Settings.audit / .retention once wired; the defaults until then
    retention = getattr(settings, "retention", None)
    return (settings, audit if isinstance(audit, AuditSettings) else AuditSettings(),
            retention if isinstance(retention, RetentionSettings) else RetentionSettings())


@retention_cli.command("report")
def report(first: FromOption, last: ToOption, fmt: FormatOption = ReportFormat.JSON, output: OutputOption = None,
           signature: SignatureOption = None) -> None:
    """Per region and UTC day: recordings started, purged, erased, max age at purge, overdue (should be 0),
    KEK buckets destroyed, blobs pending; signed with the audit key."""
    from app.audit.runtime import AuditRuntime
    from app.clock import SystemClock
    from app.db import create_engine, create_session_factory

    period = Period(parse_day(first), parse_day(last))

    async def main() -> SignedReportOutput:
        settings, audit, _ = _settings()
        engine = create_engine(settings.resolved_database_url, pool_size=settings.database_pool_size,
                               max_overflow=settings.database_max_overflow)
        try:
            factory = create_session_factory(engine)
            runtime = AuditRuntime.from_settings(audit, settings.data_dir)
            await chain_queued_entries(factory)
            async with factory() as session:
                result = await generate_retention_report(
                    session=session, clock=SystemClock(), keyring=runtime.keyring, period=period, fmt=fmt,
                    retention_days=audit.retention_days, requested_by=CLI_ACTOR,
                )
                await session.commit()
        finally:
            await engine.dispose()
        return result

    write_signed_report(run_or_exit(main), output, signature)


def worker(
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=0, max=65535, help="Serve Prometheus metrics on this port (default: not served).")
    ] = None,
) -> None:
    """Run the scheduled jobs alone (purge, pending blobs, audit checkpoints and verification, orphan sweep,
    daily retention report) for deployments that separate them from the relay. Stops on SIGTERM/SIGINT."""
    from app.logs import configure_logging

    settings, audit, retention = _settings()
    configure_logging(settings.log_level)
    run_or_exit(lambda: run_worker(settings, audit, retention, metrics_port=metrics_port))


async def run_worker(settings: Settings, audit_settings: AuditSettings, retention: RetentionSettings, *,
                     metrics_port: int | None = None, stop: asyncio.Event | None = None,
                     extra_jobs: Sequence[ScheduledJob] = ()) -> None:
    """The worker's body: build the parts, start the scheduler, wait for a signal (or `stop`), shut down."""
    from prometheus_client import CollectorRegistry, start_http_server

    from app import __version__, migrate
    from app.audit.runtime import AuditRuntime
    from app.clock import SystemClock
    from app.db import create_engine, create_session_factory
    from app.retention.scheduler import build_scheduler
    from app.storage.router import RegionRouter
    from app.tracing import Tracing
    from app.vault.factory import build_keyrings

    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(migrate.upgrade, settings.resolved_database_url)
    clock = SystemClock()
    registry = CollectorRegistry(auto_describe=True)
    tracing = Tracing(settings.tracing, version=__version__)
    engine = create_engine(settings.resolved_database_url, pool_size=settings.database_pool_size,
                           max_overflow=settings.database_max_overflow)
    stores = RegionRouter.from_settings(settings.regions, settings.storage, clock=clock)
    keyrings = build_keyrings(settings.vault, keyvault_urls={r.name: r.keyvault_url for r in settings.regions},
                              data_dir=settings.data_dir, clock=clock)
    scheduler = build_scheduler(
        settings=retention, lifetime=settings.vault.bucket_lifetime, session_factory=create_session_factory(engine),
        clock=clock, keyrings=keyrings, stores=stores,
        audit=AuditRuntime.from_settings(audit_settings, settings.data_dir, registry=registry), registry=registry,
        extra_jobs=extra_jobs, tracer=tracing.tracer,
    )
    if metrics_port is not None:
        start_http_server(metrics_port, registry=registry)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        scheduler.start()
        await stop.wait()
    finally:
        await scheduler.shutdown()
        await keyrings.aclose()
        await stores.close()
        await engine.dispose()
        await tracing.shutdown()
