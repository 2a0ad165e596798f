"""`voicelog saw register|list|revoke`: the SAW registry from the command line (audited as `system:cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.saw import service
from app.access.saw.schemas import SawOut, SawRegister, SawRevoke
from app.clock import Clock
from app.identity.staff.cli import CLI_ACTOR, echo_rows, run_admin_work

saw_cli = typer.Typer(help="Secure access workstations: register, list, revoke.", no_args_is_help=True)


def _line(row: BaseModel) -> str:
    assert isinstance(row, SawOut)  # noqa: S101 - typing aid
    state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
    return f"{row.id}\t{row.owner_subject}\t{row.label}\t{row.cert_sha256}\t{state}"


@saw_cli.command("register")
def saw_register(
    owner: Annotated[str, typer.Option(help="The staff member's OIDC subject.")],
    label: Annotated[str, typer.Option(help="Asset tag or host name.")],
    cert: Annotated[Path | None, typer.Option(help="The device's client certificate (PEM file).",
                                              exists=True, dir_okay=False)] = None,
    sha256: Annotated[str | None, typer.Option(help="Or the certificate's SHA-256 (hex).")] = None,
) -> None:
    """Register a SAW for one person."""
    if (cert is None) == (sha256 is None):
        typer.echo("error: give --cert or --sha256", err=True)
        raise typer.Exit(2)
    pem = cert.read_text() if cert is not None else None

    async def work(session: AsyncSession, clock: Clock) -> SawOut:
        data = SawRegister(owner=owner, label=label, cert_pem=pem, cert_sha256=sha256)
        return SawOut.model_validate(await service.register_saw(session=session, clock=clock, actor=CLI_ACTOR,
                                                                data=data))

    out = run_admin_work(work)
    typer.echo(f"registered {out.id} for {out.owner_subject} (sha256 {out.cert_sha256})")


@saw_cli.command("list")
def saw_list(
    owner: Annotated[str | None, typer.Option(help="Only this person's devices.")] = None,
    active_only: Annotated[bool, typer.Option("--active-only", help="Leave out revoked devices.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List SAWs: id, owner, label, fingerprint, state."""

    async def work(session: AsyncSession, _clock: Clock) -> list[BaseModel]:
        rows = await service.list_saws(session=session, owner=owner, include_revoked=not active_only)
        return [SawOut.model_validate(s) for s in rows]

    echo_rows(run_admin_work(work), as_json, _line)


@saw_cli.command("revoke")
def saw_revoke(
    saw_id: Annotated[str, typer.Argument(help="The SAW's id.")],
    reason: Annotated[str, typer.Option(help="Short reason: lost, reimaged, left, ...")],
) -> None:
    """Revoke a SAW at once (also revoke its certificate at the CA and publish the CRL)."""

    async def work(session: AsyncSession, clock: Clock) -> SawOut:
        checked = SawRevoke(reason=reason).reason
        saw = await service.revoke_saw(session=session, clock=clock, actor=CLI_ACTOR, saw_id=saw_id,
                                       reason=checked)
        return SawOut.model_validate(saw)

    out = run_admin_work(work)
    typer.echo(f"revoked {out.id}")
