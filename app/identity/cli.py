"""`voicelog dev token --as alice --role engineer [--tenant T]`: a dev token from the service's own dev key;
`voicelog dev saw --owner alice`: a local development SAW (certificates, nginx config) registered to alice."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import Clock
from app.config import Settings
from app.identity.principal import Role
from app.identity.staff.cli import CLI_ACTOR, run_admin_work
from app.wiring import opened_context

dev_cli = typer.Typer(help="Development helpers: tokens from the built-in dev issuer, a local SAW.",
                      no_args_is_help=True)


@dev_cli.callback()
def dev() -> None:
    """Development helpers (only for a service running the dev issuer)."""


@dev_cli.command("token")
def dev_token(
    subject: Annotated[str, typer.Option("--as", help="The token's subject (`sub`), e.g. alice.")],
    role: Annotated[list[Role] | None, typer.Option("--role", help="An app role; repeat for several.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant id (`tid`), e.g. a customer admin's.")] = None,
    name: Annotated[str | None, typer.Option(help="Display name (`name`).")] = None,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.", min=60, max=86400)] = 3600,
) -> None:
    """Print a bearer token signed by the dev issuer key the service uses (same data dir and settings): the one
    the CLI's context loaded, as the app's and the worker's do, so the issuer is loaded in one place."""
    settings = _settings()

    async def mint() -> str | None:
        async with opened_context(settings) as ctx:
            if ctx.dev_issuer is None:
                return None
            return ctx.dev_issuer.mint(subject, role or [], tenant, timedelta(seconds=ttl), name=name)

    token = asyncio.run(mint())
    if token is None:
        typer.echo("error: the dev issuer is not enabled (set VOICELOG_IDENTITY__DEV_ISSUER_ENABLED=true)", err=True)
        raise typer.Exit(2)
    typer.echo(token)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        typer.echo(f"error: invalid settings: {exc.error_count()} error(s)\n{exc}", err=True)
        raise typer.Exit(2) from None


@dev_cli.command("saw")
def dev_saw(
    owner: Annotated[str, typer.Option(help="The engineer (OIDC subject, an active staff member) it is bound to.")],
    directory: Annotated[Path | None, typer.Option(
        "--dir", help="Where to write it (default <data dir>/local-saw); its files are replaced.",
        file_okay=False)] = None,
    port: Annotated[int, typer.Option(help="The port nginx listens on (127.0.0.1).", min=1, max=65535)] = 8443,
    upstream_port: Annotated[int | None, typer.Option(
        help="voicelog's port (default VOICELOG_PORT).", min=1, max=65535)] = None,
) -> None:
    """A LOCAL DEVELOPMENT SAW: a generated CA, a SAW client certificate (+ PKCS#12 for the browser) and an
    nginx config, registered to OWNER. Prints the nginx command and the settings voicelog needs."""
    from app.access.saw import service
    from app.access.saw.local import LocalSawError, local_saw_label, nginx_binary, write_local_saw
    from app.access.saw.schemas import SawRegister
    from app.access.saw.settings import refuse_local_saw_beside_production

    settings = _settings()
    try:
        refuse_local_saw_beside_production(settings.saw.model_copy(update={"local_dev": True}),
                                           production_issuer=settings.identity.production)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if settings.embedded:  # as `voicelog serve` does: the SQLite schema before its first use
        from app import migrate

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(settings.resolved_database_url)
    target = directory or settings.data_dir / "local-saw"
    try:
        saw = write_local_saw(target, owner=owner, port=port, upstream_port=upstream_port or settings.port)
    except (LocalSawError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    async def work(session: AsyncSession, clock: Clock) -> str:
        data = SawRegister(owner=owner, label=local_saw_label(owner), cert_pem=saw.cert_pem)
        return (await service.register_saw(session=session, clock=clock, actor=CLI_ACTOR, data=data)).id

    saw_id = run_admin_work(work)
    nginx = nginx_binary() or "nginx"
    typer.echo(f"""LOCAL DEVELOPMENT SAW {saw_id} registered to {owner} (sha256 {saw.sha256}), in {saw.directory}

1. Run voicelog trusting it (restart `voicelog serve` with):
     VOICELOG_SAW__LOCAL_DEV=true
2. Start its nginx (foreground; Ctrl-C stops it):
     {saw.nginx_command(nginx)}
3. Import into your browser, as a personal certificate: {saw.path('saw.p12')} (password: {saw.p12_password})
   and trust (or accept) the server CA {saw.path('server-ca.crt')}; then open {saw.url}/console
   From a terminal: curl {saw.curl_tls()} {saw.url}/access/saw/me -H "Authorization: Bearer $TOKEN"
""")
