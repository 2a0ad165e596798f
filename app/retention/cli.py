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

if TYPE_CHECKING:
    from app.config import Settings
    from app.retention.jobs import ScheduledJob

retention_cli = typer.Typer(help="Retention (C7): what was purged, per region and day, signed.", no_args_is_help=True)

T = TypeVar("T")
CLI_ACTOR = Actor.system("cli")



@retention_cli.callback()
def retention_group() -> None:
    """Retention (C7): what was purged, per region and day, signed."""


@retention_cli.command("report")
def report(first: FromOption, last: ToOption, fmt: FormatOption = ReportFormat.JSON, output: OutputOption = None,
           signature: SignatureOption = None) -> None:
    """Per region and UTC day: recordings started, purged, erased, max age at purge, overdue (should be 0),
    KEK buckets destroyed, blobs pending; signed with the audit key."""
    from app.config import Settings
    from app.wiring import opened_context

    period = Period(parse_day(first), parse_day(last))

    async def main() -> SignedReportOutput:
        async with opened_context(Settings()) as ctx:
            await chain_queued_entries(ctx.session_factory)
            async with ctx.session_factory() as session:
                result = await generate_retention_report(
                    session=session, clock=ctx.clock, keyring=ctx.audit.keyring, period=period, fmt=fmt,
                    retention_days=ctx.settings.audit.retention_days, requested_by=CLI_ACTOR,
                )
                await session.commit()
        return result

    write_signed_report(run_or_exit(main), output, signature)


def worker(
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=0, max=65535, help="Serve Prometheus metrics on this port (default: not served).")
    ] = None,
) -> None:
    """Run the scheduled jobs alone (purge, pending blobs, audit checkpoints and verification, orphan sweep,
    daily retention report) for deployments that separate them from the relay. Stops on SIGTERM/SIGINT."""
    from app.config import Settings
    from app.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    run_or_exit(lambda: run_worker(settings, metrics_port=metrics_port))


async def run_worker(settings: Settings, *, metrics_port: int | None = None, stop: asyncio.Event | None = None,
                     extra_jobs: Sequence[ScheduledJob] = ()) -> None:
    """The worker's body: build the context, start the scheduler, wait for a signal (or `stop`), shut down."""
    from prometheus_client import start_http_server

    from app import migrate
    from app.retention.scheduler import build_scheduler
    from app.wiring import build_context, close_context

    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(migrate.upgrade, settings.resolved_database_url)
    ctx = build_context(settings)
    scheduler = build_scheduler(
        settings=settings.retention, lifetime=settings.vault.bucket_lifetime, session_factory=ctx.session_factory,
        clock=ctx.clock, keyrings=ctx.keyrings, stores=ctx.stores, audit=ctx.audit, registry=ctx.metrics.registry,
        extra_jobs=extra_jobs, tracer=ctx.tracing.tracer,
    )
    if metrics_port is not None:
        start_http_server(metrics_port, registry=ctx.metrics.registry)
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
        await close_context(ctx)
