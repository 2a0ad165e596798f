"""The one builder of `AppContext`, used by create_app, the CLI and the worker alike.

Building makes objects only (no connection is opened, no task started); the app's lifespan starts the
parts that run, and `close_context` releases what every process holds (keyrings, stores, engine, tracing).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__
from app.access.context import AccessContext
from app.access.grant_ender import AccessGrantEnder
from app.access.metrics import AccessMetrics
from app.access.notify import Notifier
from app.access.people import SawRegistry, StaffRecords
from app.access.ratelimit import ReadLimiter
from app.audit.runtime import AuditRuntime
from app.capture.metrics import CaptureMetrics
from app.capture.recorder import Recorder
from app.clock import Clock, SystemClock
from app.config import Settings
from app.console.mount import build_console_state
from app.context import AppContext
from app.db import create_engine, create_request_engine, create_session_factory
from app.identity.principal import Role
from app.identity.routes import load_dev_issuer
from app.identity.staff.deps import check_staff
from app.identity.tokens import build_token_verifier
from app.loop_lag import LoopLagMonitor
from app.metrics import Metrics
from app.relay.routes import Relay
from app.relay.tap import TapFactory
from app.resources.directory import ResourceDirectory
from app.storage.router import RegionRouter
from app.tickets.consent_cache import ConsentCache
from app.tracing.provider import Tracing
from app.vault.factory import build_keyrings


def _embedded_admin_token(data_dir: Path) -> str:
    """The embedded default's admin token: generated once, kept in a 0600 file, never logged."""
    path = data_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def admin_token(settings: Settings) -> str | None:
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    return _embedded_admin_token(settings.data_dir) if settings.embedded else None


def build_context(
    settings: Settings, *, clock: Clock | None = None, tap_factory: TapFactory | None = None,
    engine: AsyncEngine | None = None, audit: AuditRuntime | None = None,
) -> AppContext:
    """Every long-lived part, built once. `engine` and `audit` may be given (tests share theirs); the relay
    taps the recorder unless `tap_factory` says otherwise."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    clock = clock or SystemClock()
    request_engine = engine
    engine = engine or create_engine(settings.resolved_database_url, pool_size=settings.database_pool_size,
                                     max_overflow=settings.database_max_overflow,
                                     connect_timeout_s=settings.database_connect_timeout_s)
    if request_engine is None:
        request_engine = engine if engine.dialect.name == "sqlite" else create_request_engine(
            settings.resolved_database_url, pool_size=settings.database_request_pool_size,
            connect_timeout_s=settings.database_connect_timeout_s, timeout_s=settings.database_request_timeout_s)
    metrics = Metrics()
    audit = audit or AuditRuntime.from_settings(settings.audit, settings.data_dir, registry=metrics.registry)
    session_factory = audit.bind_sessions(create_session_factory(engine))  # appends carry the runtime's MACs
    consents = ConsentCache(clock=clock, refresh_s=settings.consent_refresh_s)
    stores = RegionRouter.from_settings(settings.regions, settings.storage, clock=clock)
    keyrings = build_keyrings(settings.vault, keyvault_urls={r.name: r.keyvault_url for r in settings.regions},
                              data_dir=settings.data_dir, clock=clock)
    recorder = Recorder(settings=settings.capture, clock=clock, consents=consents, keyrings=keyrings,
                        stores=stores, session_factory=session_factory, metrics=CaptureMetrics(metrics.registry))
    tracing = Tracing(settings.tracing, version=__version__)
    resources = ResourceDirectory(refresh_s=settings.resource_refresh_s, registry=metrics.registry)
    relay = Relay(settings=settings, clock=clock, session_factory=session_factory, metrics=metrics.relay,
                  tap_factory=tap_factory or recorder, tracing=tracing, resources=resources,
                  loop_lag=LoopLagMonitor(metrics.registry))
    access = AccessContext(
        directory=StaffRecords(), saws=SawRegistry(), limiter=ReadLimiter(),
        metrics=AccessMetrics(metrics.registry), retention=timedelta(hours=settings.vault.bucket_lifetime_hours),
        notifier=Notifier(settings.access_webhooks, metrics.registry),
    )
    dev_issuer = load_dev_issuer(settings.identity, settings.data_dir, clock=clock)
    return AppContext(
        settings=settings, clock=clock, engine=engine, session_factory=session_factory, metrics=metrics,
        request_engine=request_engine,
        request_session_factory=audit.bind_sessions(create_session_factory(request_engine)),
        admin_token=admin_token(settings),
        dev_issuer=dev_issuer, token_verifier=build_token_verifier(settings.identity, dev_issuer, clock=clock),
        stores=stores, keyrings=keyrings, consents=consents, recorder=recorder, resources=resources, relay=relay,
        access=access, audit=audit, auditors=check_staff(Role.AUDITOR),
        grant_ender=AccessGrantEnder(notifier=access.notifier), tracing=tracing,
        console=build_console_state(settings, session_factory),
    )


async def close_context(ctx: AppContext) -> None:
    """Release what the parts hold, once their tasks have stopped."""
    await ctx.keyrings.aclose()
    await ctx.stores.close()
    await ctx.audit.sink.close()
    await ctx.engine.dispose()
    if ctx.request_engine is not ctx.engine:
        await ctx.request_engine.dispose()
    await ctx.tracing.shutdown()


@contextlib.asynccontextmanager
async def opened_context(settings: Settings, *, clock: Clock | None = None) -> AsyncIterator[AppContext]:
    """The context for a CLI command or the worker: built, then closed however the work ends."""
    ctx = build_context(settings, clock=clock)
    try:
        yield ctx
    finally:
        await close_context(ctx)
