"""`voicelog dev token --as alice --role engineer [--tenant T]`: a dev token from the service's own dev key."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from pydantic import ValidationError

from app.config import Settings
from app.identity.principal import Role
from app.identity.routes import load_dev_issuer

dev_cli = typer.Typer(help="Development helpers: tokens from the built-in dev issuer.", no_args_is_help=True)


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
    """Print a bearer token signed by the dev issuer key the service uses (same data dir and settings)."""
    try:
        settings = Settings()
    except ValidationError as exc:
        typer.echo(f"error: invalid settings: {exc.error_count()} error(s)\n{exc}", err=True)
        raise typer.Exit(2) from None
    issuer = load_dev_issuer(settings.identity, settings.data_dir)
    if issuer is None:
        typer.echo("error: the dev issuer is not enabled (set VOICELOG_IDENTITY__DEV_ISSUER_ENABLED=true)", err=True)
        raise typer.Exit(2)
    typer.echo(issuer.mint(subject, role or [], tenant, timedelta(seconds=ttl), name=name))
