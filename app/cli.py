"""`voicelog serve | demo | db upgrade|downgrade | resources add|list | standin`, and the other groups registered."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from typing import Annotated

import typer
import uvicorn
from fastapi import FastAPI

from app import migrate
from app.access.saw.cli import saw_cli
from app.audit.actions import Actor
from app.audit.cli import audit_cli
from app.cli_root import new_root
from app.cli_workflow import register as register_workflow
from app.config import Settings
from app.context import context_of
from app.db_privileges import SERVICE_GRANTS, PrivilegeError, RoleState, validate_role_name
from app.demo import demo
from app.errors import AppError
from app.heap import settle_after_startup
from app.identity.cli import dev_cli
from app.identity.staff.cli import staff_cli, teams_cli
from app.logs import configure_logging, get_logger
from app.relay.routes import Relay
from app.resources.schemas import ResourceCreate, ResourceOut
from app.resources.service import add_resource, list_resources
from app.retention.cli import retention_cli, worker
from app.server.banner import Listening, PortInUse, check_port_free, port_in_use, serve_banner
from app.server.http_protocol import guarded_http_protocol
from app.server.siblings import WorkerSlot
from app.server.workers import (
    UVICORN_GRACE_S,
    WorkerCountError,
    bind_listener,
    resolve_worker_count,
    serve_workers,
)
from app.wiring import opened_context

cli = new_root()
db_cli = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
resources_cli = typer.Typer(help="Customer resources.", no_args_is_help=True)
config_cli = typer.Typer(help="Configuration.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(config_cli, name="config")
cli.add_typer(dev_cli, name="dev")
cli.add_typer(staff_cli, name="staff")
cli.add_typer(teams_cli, name="teams")
cli.add_typer(saw_cli, name="saw")
cli.add_typer(audit_cli, name="audit")
cli.add_typer(retention_cli, name="retention")
cli.command("worker")(worker)
cli.add_typer(resources_cli, name="resources")
register_workflow(cli)
cli.command("demo")(demo)

log = get_logger("voicelog.cli")


class DrainingServer(uvicorn.Server):
    """uvicorn closes WebSockets with 1012 at once on SIGTERM; we first let live sessions finish."""

    def __init__(self, config: uvicorn.Config, drain_timeout: float, relay: Relay, *,
                 settle_heap: bool = False) -> None:
        super().__init__(config)
        self.drain_timeout = drain_timeout
        self.relay = relay
        self.settle_heap = settle_heap
        self.banner: str | None = None  # printed once listening, for a person at a terminal

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.settle_heap:  # the process's own server only: a test process builds many apps
            self._settle_before_serving()
        await super().startup(sockets)
        if not self.started:
            return
        for server in self.servers:  # uvicorn says nothing when handed its sockets
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                log.info("voicelog.listening", host=host, port=port)
        if self.banner is not None:
            sys.stderr.write(self.banner)
            sys.stderr.flush()

    def _settle_before_serving(self) -> None:
        """Settle the heap after the app's start-up and before the first connection is taken (uvicorn starts
        serving right after the lifespan's start-up): the full collection holds the event loop 0.3-0.4 s, and
        once serving, that would hold the first calls of a fresh or restarted worker."""
        lifespan = self.lifespan
        lifespan_startup = lifespan.startup

        async def startup_then_settle() -> None:
            await lifespan_startup()
            await asyncio.sleep(0)  # the tasks the lifespan started take their first step before the freeze
            settle_after_startup()

        lifespan.startup = startup_then_settle

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        registry = self.relay.registry
        log.info("relay.drain.started", sessions=len(registry), timeout_s=self.drain_timeout)
        closed = await registry.drain(self.drain_timeout)
        log.info("relay.drain.finished", closed_sessions=closed)
        await super().shutdown(sockets)


def build_server(settings: Settings, host: str, port: int, app: FastAPI | None = None, *,
                 settle_heap: bool = False, worker: WorkerSlot | None = None) -> DrainingServer:
    """uvicorn tuned for the relay: uvloop, no per-message deflate, our own (redacted) logging. `worker`: which
    of `voicelog serve`'s worker processes this is (None: the only one)."""
    from app.main import create_app

    app = app or create_app(settings, worker=worker)
    relay = context_of(app).relay
    take_over = relay.take_over if settings.relay_data_plane == "direct" else None
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        # httptools with head limits, timeouts, per-address bounds; relayed WebSockets go to the direct data plane
        http=guarded_http_protocol(settings.server, take_over),
        timeout_keep_alive=settings.server.keep_alive_timeout_s,
        ws="websockets-sansio",
        ws_max_size=settings.relay_max_message_bytes,
        ws_max_queue=settings.relay_queue_frames,
        ws_per_message_deflate=False,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,  # the peer address is what SAW trust checks; never taken from a header
        timeout_graceful_shutdown=int(settings.relay_drain_timeout_s) + UVICORN_GRACE_S,
    )
    return DrainingServer(config, settings.relay_drain_timeout_s, relay, settle_heap=settle_heap)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default VOICELOG_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default VOICELOG_PORT).")] = None,
) -> None:
    """Run the relay and API, in VOICELOG_WORKERS processes sharing the port (app/server/workers.py). On the
    embedded default the SQLite schema is migrated first. On a terminal a banner says where everything is."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        workers = resolve_worker_count(settings)
    except WorkerCountError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    host, port = host or settings.host, settings.port if port is None else port
    try:
        if settings.standin_enabled:  # bound later by the app's start-up: checked before anything starts
            check_port_free("the stand-in upstream's", settings.standin_host, settings.standin_port,
                            "VOICELOG_STANDIN_PORT")
        listener = _listen(host, port)
    except PortInUse as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    banner = serve_banner(settings, Listening(host, listener.getsockname()[1], workers)) \
        if sys.stderr.isatty() else None
    if workers > 1:
        if banner is not None:
            sys.stderr.write(banner)
        raise typer.Exit(serve_workers(settings, listener, host, workers))
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(settings.resolved_database_url)
    server = build_server(settings, host, port, settle_heap=True)
    server.banner = banner
    server.run(sockets=[listener])


def _listen(host: str, port: int) -> socket.socket:
    """The service's listening socket, bound before anything starts so a taken port is one clear line."""
    try:
        return bind_listener(host, port)
    except OSError as exc:
        in_use = port_in_use(exc, "the service's", host, port, "VOICELOG_PORT (or --port)")
        if in_use is not None:
            raise in_use from exc
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from exc


@cli.command()
def standin(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8765,
    api_key: Annotated[str | None, typer.Option(help="Require this key (api-key or Bearer).")] = None,
) -> None:
    """Run only the built-in stand-in upstream (Voice Live protocol; `?x-standin-mode=echo` echoes frames)."""
    from app.relay.standin.server import Standin, StandinOptions

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)

    async def run() -> None:
        server = await Standin(StandinOptions(api_key=api_key)).start(host, port)
        await server.serve_forever()

    try:
        import uvloop

        uvloop.run(run())
    except KeyboardInterrupt:
        pass


ServiceRoleOption = Annotated[str | None, typer.Option(
    "--service-role", envvar="VOICELOG_DATABASE_SERVICE_ROLE",
    help="PostgreSQL role the service connects as: after migrating, grant it exactly its privileges "
    "(app/db_privileges.py). Run as the owner role.")]


@db_cli.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    service_role: ServiceRoleOption = None,
) -> None:
    """Migrate the schema up (default: to the newest revision), then grant the service role its privileges."""
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    service_role = service_role or settings.database_service_role
    if service_role is not None:
        _valid_role_or_exit(service_role)
    migrate.upgrade(settings.resolved_database_url, revision)
    typer.echo(f"database upgraded to {revision}")
    if service_role is None:
        return
    try:
        summary = migrate.grant_service_role(settings.resolved_database_url, service_role)
    except PrivilegeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"granted {summary.role} its privileges on {len(summary.tables)} tables "
               f"and {len(summary.sequences)} sequences")
    for note in summary.notes():
        typer.echo(f"note: {note}")


def _valid_role_or_exit(name: str) -> None:
    try:
        validate_role_name(name)
    except PrivilegeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@db_cli.command("check-privileges")
def db_check_privileges(
    role: Annotated[str | None, typer.Option(
        "--role", help="Check this role instead of the one connecting (its privileges must be SERVICE_GRANTS).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """What a role can do on each table, and whether it could rewrite the audit trail (exit 1 if so, or if
    `--role` holds other privileges than the service role's)."""
    settings = Settings()
    if settings.embedded or not settings.resolved_database_url.startswith("postgresql"):
        typer.echo("database roles: not applicable (SQLite)")
        return
    if role is not None:
        _valid_role_or_exit(role)
    try:
        facts, assessment = migrate.check_role(settings.resolved_database_url, role)
    except PrivilegeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    differences = {t.table: sorted(t.privileges ^ SERVICE_GRANTS[t.table].expected())
                   for t in facts.tables if t.table in SERVICE_GRANTS
                   and t.privileges != SERVICE_GRANTS[t.table].expected()}
    undeclared = sorted(t.table for t in facts.tables if t.table not in SERVICE_GRANTS)
    if as_json:
        typer.echo(json.dumps({
            "role": facts.role, "state": assessment.state.value, "reasons": list(assessment.reasons),
            "tables": {t.table: sorted(t.privileges) for t in facts.tables},
            "differences": differences, "undeclared": undeclared,
            "schema_create": facts.schema_create, "database_temp": facts.database_temp,
            "notes": list(assessment.notes),
        }, indent=2))
    else:
        typer.echo(f"role {facts.role}: {assessment.state.value}")
        for reason in assessment.reasons:
            typer.echo(f"  ! {reason}")
        typer.echo(f"  schema {facts.schema}\t{'CREATE' if facts.schema_create else '-'}")
        typer.echo(f"  database\t{'TEMPORARY' if facts.database_temp else '-'}")
        for note in assessment.notes:
            typer.echo(f"  note: {note}")
        for t in facts.tables:
            typer.echo(f"  {t.table}\t{' '.join(sorted(t.privileges)) or '-'}")
        if role is not None:
            for table, privileges in differences.items():
                typer.echo(f"  differs from the service role's privileges on {table}: {' '.join(privileges)}")
            for table in undeclared:
                typer.echo(f"  no privilege decision for {table}")
    exact = not differences and not undeclared
    if assessment.state is not RoleState.OK or (role is not None and not exact):
        raise typer.Exit(1)


@db_cli.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, e.g. -1 or base.")]) -> None:
    """Migrate the schema down to REVISION."""
    settings = Settings()
    migrate.downgrade(settings.resolved_database_url, revision)
    typer.echo(f"database downgraded to {revision}")


@resources_cli.command("add")
def resources_add(
    name: Annotated[str, typer.Argument(help="Resource name (the /resources/{name} path segment).")],
    region: Annotated[str, typer.Option(help="A configured region.")],
    upstream: Annotated[str, typer.Option(help="Upstream endpoint, wss://...")],
    tenant: Annotated[str, typer.Option(help="Owner tenant id.")],
) -> None:
    """Register a customer resource."""
    settings = Settings()

    async def run() -> ResourceOut:
        async with opened_context(settings) as ctx, ctx.session_factory() as session:
            resource = await add_resource(
                session=session,
                clock=ctx.clock,
                data=ResourceCreate(name=name, region=region, upstream_endpoint=upstream, owner_tenant=tenant),
                regions=settings.region_names, actor=Actor.service("cli"),
            )
            await session.commit()
            return ResourceOut.model_validate(resource)

    try:
        out = asyncio.run(run())
    except AppError as exc:
        typer.echo(f"error: {exc.code}: {exc.detail}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"added {out.name} ({out.region}) -> {out.upstream_endpoint}")


@resources_cli.command("list")
def resources_list(as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """List registered resources."""
    settings = Settings()

    async def run() -> list[ResourceOut]:
        async with opened_context(settings) as ctx, ctx.session_factory() as session:
            return [ResourceOut.model_validate(r) for r in await list_resources(session=session)]

    rows = asyncio.run(run())
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    for r in rows:
        typer.echo(f"{r.name}\t{r.region}\t{r.upstream_endpoint}\t{r.owner_tenant}")


@config_cli.command("reference")
def config_reference() -> None:
    """Print docs/CONFIGURATION.md: every setting with its default and meaning."""
    from app.config import settings_reference

    typer.echo(settings_reference(), nl=False)


def main() -> None:
    cli()
