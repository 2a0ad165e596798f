"""create_app(settings) -> FastAPI. The lifespan starts and stops every part."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.server import Server

from app import __version__
from app.access.jobs import run_access_job
from app.access.routes import router as access_router
from app.access.saw.routes import router as saw_router
from app.access.saw.trust import SawHeaderGuard
from app.audit.actions import Actor
from app.audit.jobs import ChainKeeper, VerifierJob
from app.audit.routes import router as audit_router
from app.capture.routes import router as capture_router
from app.clock import Clock
from app.config import Settings
from app.console.mount import include_console
from app.context import AppContext, attach_context
from app.db_privileges import RoleAssessment, RoleState, check_connected_role
from app.errors import install_error_handlers
from app.identity.routes import include_dev_routes
from app.identity.staff.routes import router as staff_router
from app.input_text import ControlCharacterPathGuard
from app.logs import get_logger
from app.readiness import DATABASE_PROBE_TIMEOUT_S, DependencyProbes
from app.relay.routes import router as relay_router
from app.relay.standin.server import Standin
from app.relay.tap import TapFactory
from app.resources.routes import router as resources_router
from app.resources.schemas import ResourceCreate
from app.resources.service import add_resource, get_resource_by_name
from app.retention.jobs import JobContext, ScheduledJob
from app.retention.routes import router as retention_router
from app.retention.scheduler import build_scheduler
from app.server.api_docs import include_api_docs
from app.server.merged_metrics import merge_worker_metrics, worker_exposition
from app.server.siblings import SiblingEndpoint, WorkerSlot, WorkerStatus, worker_metrics, worker_statuses
from app.storage.errors import StorageError
from app.tickets.routes import router as tickets_router
from app.tracing.http import TracingMiddleware
from app.wiring import build_context, close_context

log = get_logger("voicelog")

DEMO_RESOURCE = "demo"
DEMO_TENANT = "demo-tenant"
READINESS_FIRST_ROUND_WAIT_S = 1.0  # a healthy start reports its probes' results; a hung one starts anyway


async def _check_database_role(engine: AsyncEngine, found: list[RoleAssessment]) -> None:
    """C6, once at start-up: warn loudly when the service's role could rewrite the audit trail (it owns the
    audit tables, is a superuser, or may act as their owner). Reported by /readyz, never gating it."""
    try:
        async with asyncio.timeout(DATABASE_PROBE_TIMEOUT_S):
            assessment = await check_connected_role(engine)
    except Exception as exc:
        assessment = RoleAssessment(RoleState.UNKNOWN, ())
        log.warning("database.role.unchecked", error=type(exc).__name__)
    found.append(assessment)
    if assessment.state not in (RoleState.OK, RoleState.NOT_APPLICABLE, RoleState.UNKNOWN):
        log.warning("database.role.unsafe", state=assessment.state.value, reasons=list(assessment.reasons),
                    see="docs/AUDIT.md#database-roles")


async def _seed_demo_resource(ctx: AppContext, standin_port: int) -> None:
    async with ctx.session_factory() as session:
        if await get_resource_by_name(session=session, name=DEMO_RESOURCE) is None:
            await add_resource(
                session=session,
                clock=ctx.clock,
                data=ResourceCreate(
                    name=DEMO_RESOURCE,
                    region=ctx.settings.regions[0].name,
                    upstream_endpoint=f"ws://{ctx.settings.standin_host}:{standin_port}",
                    owner_tenant=DEMO_TENANT,
                ),
                regions=ctx.settings.region_names,
                actor=Actor.system("embedded-default"),
            )
            await session.commit()
            log.info("demo.resource.created", resource=DEMO_RESOURCE, region=ctx.settings.regions[0].name)


def create_app(
    settings: Settings, *, clock: Clock | None = None, tap_factory: TapFactory | None = None,
    worker: WorkerSlot | None = None,
) -> FastAPI:
    """Build the service. Nothing is global: tests build as many apps as they like. `worker`: which of
    `voicelog serve`'s worker processes this app serves in (None: the only one, as in tests)."""
    ctx = build_context(settings, clock=clock, tap_factory=tap_factory)
    clock, access, audit = ctx.clock, ctx.access, ctx.audit
    consents, stores, recorder, resources, relay = ctx.consents, ctx.stores, ctx.recorder, ctx.resources, ctx.relay
    loop_lag = relay.loop_lag
    chain_keeper = ChainKeeper(audit, ctx.session_factory, clock)
    verifier = VerifierJob(audit, ctx.session_factory, clock)

    async def access_job(job: JobContext) -> int:
        counts = await run_access_job(session_factory=job.session_factory, clock=job.clock, access=access)
        return sum(counts.values())

    # Every replica runs the scheduler; jobs claim their work (row claims, advisory locks), so none runs twice.
    scheduler = build_scheduler(
        settings=settings.retention, lifetime=settings.vault.bucket_lifetime, session_factory=ctx.session_factory,
        clock=clock, keyrings=ctx.keyrings, stores=stores, audit=audit, registry=ctx.metrics.registry,
        extra_jobs=[ScheduledJob(name="access_grants", every=timedelta(minutes=1), run=access_job)],
        audit_jobs=False,  # this process runs the audit's own chain keeper and verifier
        tracer=ctx.tracing.tracer,
    )
    engine = ctx.engine

    probes = DependencyProbes(engine=engine, stores=stores, regions=settings.region_names)
    database_role: list[RoleAssessment] = []  # filled once by the start-up check; /readyz reads it
    # The stand-in binds one port and the demo resource is one row: one worker of a pod runs them.
    first_worker = worker is None or worker.index == 0
    siblings_of = worker if worker is not None and worker.count > 1 else None

    def gating_checks() -> dict[str, str]:
        """What decides readiness (see /readyz); the rest of its checks are reported only."""
        return {"relay": "draining" if relay.registry.draining else "ok",
                "resources": "ok" if resources.loaded else "not_loaded"}

    def own_status() -> WorkerStatus:
        return WorkerStatus(index=0 if worker is None else worker.index, pid=os.getpid(),
                            ready=all(v == "ok" for v in gating_checks().values()),
                            active_sessions=len(relay.registry))

    def own_metrics() -> bytes:
        return generate_latest(ctx.metrics.registry)

    def own_worker_metrics() -> bytes:
        assert siblings_of is not None  # noqa: S101 - only asked with siblings
        return worker_exposition(ctx.metrics.registry, siblings_of.index)

    endpoint = None if siblings_of is None else SiblingEndpoint(siblings_of, metrics=own_worker_metrics,
                                                                status=own_status)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        standin_server: Server | None = None
        if endpoint is not None:  # first up, last down: siblings see this worker start, drain and stop
            await endpoint.start()
        role_check = asyncio.create_task(_check_database_role(engine, database_role), name="database-role-check")
        if settings.standin_enabled and first_worker:
            standin_server = await Standin().start(settings.standin_host, settings.standin_port)
        if settings.demo_resource and first_worker:
            await _seed_demo_resource(ctx, settings.standin_port)
        try:
            await stores.prepare()
        except StorageError:
            # C8: a region's store being down never keeps the relay from starting; /readyz says so.
            log.warning("storage.prepare_failed")
        loop_lag.start()
        await probes.start(wait_s=READINESS_FIRST_ROUND_WAIT_S)
        await resources.start(ctx.session_factory)  # waits 5 s at most: a hung database must not hold start-up
        consents.start(ctx.session_factory)
        chain_keeper.start()
        verifier.start()
        if settings.retention.scheduler_enabled:
            scheduler.start()
        recorder.start()
        access.notifier.start()
        log.info("voicelog.started", regions=settings.region_names, embedded=settings.embedded)
        try:
            yield
        finally:
            closed = await relay.registry.drain(settings.relay_drain_timeout_s)
            if closed:
                log.warning("relay.drain.closed_sessions", sessions=closed)
            await scheduler.shutdown()
            await probes.stop()
            await role_check
            await recorder.stop()
            await verifier.stop()
            await chain_keeper.stop()
            await access.notifier.stop()
            await consents.stop()
            await resources.stop()
            await loop_lag.stop()
            if standin_server is not None:
                standin_server.close()
                await standin_server.wait_closed()
            await close_context(ctx)
            if endpoint is not None:
                await endpoint.stop()
            log.info("voicelog.stopped")

    app = FastAPI(
        title="voicelog",
        version=__version__,
        summary="Opt-in, encrypted debug logging for realtime voice AI sessions.",
        description=(
            "voicelog relays Voice Live / Realtime WebSocket sessions at "
            "`/resources/{resource}/voice-live/realtime` (and the OpenAI Realtime paths) and, only when the "
            "customer opted in, records them encrypted in the resource's region. Errors are "
            "`application/problem+json` (RFC 9457) with a stable `code`."
        ),
        lifespan=lifespan,
        docs_url=None,  # served by include_api_docs from local assets, not a CDN
        redoc_url=None,
    )
    include_api_docs(app)
    attach_context(app, ctx)
    install_error_handlers(app)
    if ctx.tracing.enabled:  # innermost of ours: it sees the route the router matched, in the scope it fills
        app.add_middleware(TracingMiddleware, tracing=ctx.tracing)
    app.add_middleware(SawHeaderGuard, settings=settings.saw)  # SAW headers only from trusted proxies
    app.add_middleware(ControlCharacterPathGuard)  # a path with a control character names nothing: 400
    include_dev_routes(app, ctx.dev_issuer)
    app.include_router(relay_router)
    app.include_router(resources_router)
    app.include_router(tickets_router)
    app.include_router(capture_router)
    app.include_router(staff_router)
    app.include_router(saw_router)
    app.include_router(access_router)
    app.include_router(audit_router)
    app.include_router(retention_router)
    include_console(app, ctx)

    @app.get("/healthz", tags=["operations"], summary="Process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Ready to take sessions")
    async def readyz() -> JSONResponse:
        """503 while draining, or until the resource directory (which routes every session) has loaded once.
        The database and each region's store are reported but do not gate readiness: with the directory in
        memory, calls are admitted and relayed without them, and only recording degrades (C8); taking every
        replica out of the load balancer for them would stop the calls themselves. It reads memory only: the
        database and the stores are probed in the background (app/readiness.py), so it answers at once.
        With several worker processes, `workers` lists each (asked over its private socket, 0.5 s at most);
        the status is still this worker's own: a probe through the shared port reaches one of them at random."""
        checks = gating_checks()
        ready = all(v == "ok" for v in checks.values())
        checks["database"] = probes.database
        checks["database_role"] = database_role[0].state.value if database_role else RoleState.CHECKING.value
        for region, state in probes.storage.items():
            checks[f"storage:{region}"] = state
        body: dict[str, object] = {"status": "ready" if ready else "not_ready", "checks": checks}
        if siblings_of is not None:
            body["worker"] = siblings_of.index
            body["workers"] = [s.as_json() for s in await worker_statuses(siblings_of, own_status())]
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics() -> Response:
        """This process's registry; with several worker processes, every worker's samples, labelled `worker`
        (a worker that does not answer within 1 s, or whose answer is cut short, is left out and counted in
        `voicelog_metrics_worker_unreachable`)."""
        if siblings_of is None:
            return Response(own_metrics(), media_type=CONTENT_TYPE_LATEST)
        merged = merge_worker_metrics(await worker_metrics(siblings_of, own_worker_metrics()))
        return Response(merged, media_type=CONTENT_TYPE_LATEST)

    return app
