"""`voicelog staff add|list|set-roles|set-team|deactivate|activate` and `voicelog teams add|add-manager|...`.

The CLI talks to the configured database directly (an operator with database access); its changes are
audited with the actor `system:cli`. A change that ends grants (deactivation, losing the engineer role, a
team move) tells the team's webhook as the admin API does, before the command exits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import Actor
from app.clock import Clock
from app.config import Settings
from app.errors import AppError
from app.identity.principal import Role
from app.identity.staff import service
from app.identity.staff.grant_endings import GrantEnder
from app.identity.staff.schemas import StaffCreate, StaffOut, StaffUpdate, TeamCreate, TeamOut
from app.wiring import opened_context

CLI_ACTOR = Actor.system("cli")
T = TypeVar("T")

staff_cli = typer.Typer(help="Staff: people, their team and roles.", no_args_is_help=True)
teams_cli = typer.Typer(help="Teams and their managers.", no_args_is_help=True)


class StaffRoleName(StrEnum):
    ENGINEER = "engineer"
    MANAGER = "manager"
    AUDITOR = "auditor"
    ADMIN = "admin"


def run_admin_work(work: Callable[[AsyncSession, Clock], Awaitable[T]]) -> T:
    """Run `work` in one committed transaction against the configured database; errors exit 2."""
    return run_staff_change(lambda session, clock, _grant_ender: work(session, clock))


def run_staff_change(work: Callable[[AsyncSession, Clock, GrantEnder], Awaitable[T]]) -> T:
    """`run_admin_work` for a change that may end grants: `work` gets the context's grant ender, and the teams
    are told of every grant it ended once the transaction has committed."""
    try:
        settings = Settings()
    except ValidationError as exc:
        typer.echo(f"error: invalid settings: {exc.error_count()} error(s)", err=True)
        raise typer.Exit(2) from None

    async def run() -> T:
        async with opened_context(settings) as ctx:
            notifier = ctx.access.notifier
            notifier.start()
            try:
                async with ctx.session_factory() as session:
                    result = await work(session, ctx.clock, ctx.grant_ender)
                    # A team move, a lost engineer role or a deactivation ends grants: the team is told as
                    # for a revocation, exactly as the admin API does (after the commit, never before).
                    await ctx.grant_ender.notify_ended(session=session)
                    await session.commit()
            finally:
                await notifier.stop()  # delivers what the commit queued (with its retries) before exiting
            return result

    try:
        return asyncio.run(run())
    except AppError as exc:
        typer.echo(f"error: {exc.code}: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"error: invalid_input: {problems}", err=True)
        raise typer.Exit(2) from None


def echo_rows(rows: list[BaseModel], as_json: bool, line: Callable[[BaseModel], str]) -> None:
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    for row in rows:
        typer.echo(line(row))


def _staff_line(row: BaseModel) -> str:
    assert isinstance(row, StaffOut)  # noqa: S101 - typing aid
    state = "active" if row.active else "inactive"
    return f"{row.subject}\t{row.display_name}\t{row.team_id or '-'}\t{','.join(row.roles) or '-'}\t{state}"


def _team_line(row: BaseModel) -> str:
    assert isinstance(row, TeamOut)  # noqa: S101 - typing aid
    return f"{row.id}\t{row.name}\t{','.join(row.managers) or '-'}"


RoleOption = Annotated[list[StaffRoleName] | None, typer.Option("--role", help="A role; repeat for several.")]


# --- staff --------------------------------------------------------------------------------------------


@staff_cli.command("add")
def staff_add(
    subject: Annotated[str, typer.Argument(help="The person's OIDC subject (`sub`).")],
    name: Annotated[str, typer.Option("--name", help="Display name.")],
    team: Annotated[str | None, typer.Option(help="Team name or id.")] = None,
    role: RoleOption = None,
) -> None:
    """Add a staff member."""

    async def work(session: AsyncSession, clock: Clock) -> StaffOut:
        data = StaffCreate(subject=subject, display_name=name, team=team, roles=[Role(r) for r in role or []])
        return StaffOut.model_validate(await service.create_staff(session=session, clock=clock, actor=CLI_ACTOR,
                                                                  data=data))

    out = run_admin_work(work)
    typer.echo(f"added {out.subject} ({','.join(out.roles) or 'no roles'})")


@staff_cli.command("list")
def staff_list(
    team: Annotated[str | None, typer.Option(help="Only this team (name or id).")] = None,
    active_only: Annotated[bool, typer.Option("--active-only", help="Leave out deactivated people.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List staff: subject, name, team id, roles, state."""

    async def work(session: AsyncSession, _clock: Clock) -> list[BaseModel]:
        team_id = (await service.resolve_team(session=session, ref=team)).id if team is not None else None
        rows = await service.list_staff(session=session, team_id=team_id, include_inactive=not active_only)
        return [StaffOut.model_validate(s) for s in rows]

    echo_rows(run_admin_work(work), as_json, _staff_line)


@staff_cli.command("set-roles")
def staff_set_roles(
    subject: Annotated[str, typer.Argument(help="The person's OIDC subject.")],
    role: RoleOption = None,
    none: Annotated[bool, typer.Option("--none", help="Remove every role.")] = False,
) -> None:
    """Replace a person's roles with exactly the given ones (`--none` to clear)."""
    if bool(role) == none:
        typer.echo("error: give one or more --role, or --none", err=True)
        raise typer.Exit(2)

    async def work(session: AsyncSession, clock: Clock, grant_ender: GrantEnder) -> StaffOut:
        staff = await service.set_roles(session=session, clock=clock, actor=CLI_ACTOR, subject=subject,
                                        roles=[Role(r) for r in role or []], grant_ender=grant_ender)
        return StaffOut.model_validate(staff)

    out = run_staff_change(work)
    typer.echo(f"{out.subject}: {','.join(out.roles) or 'no roles'}")


@staff_cli.command("set-team")
def staff_set_team(
    subject: Annotated[str, typer.Argument(help="The person's OIDC subject.")],
    team: Annotated[str | None, typer.Argument(help="Team name or id.")] = None,
    none: Annotated[bool, typer.Option("--none", help="Take the person out of their team.")] = False,
) -> None:
    """Move a person to a team (or out of any team with `--none`)."""
    if (team is None) != none:
        typer.echo("error: give a TEAM, or --none", err=True)
        raise typer.Exit(2)

    async def work(session: AsyncSession, clock: Clock, grant_ender: GrantEnder) -> StaffOut:
        staff = await service.update_staff(session=session, clock=clock, actor=CLI_ACTOR, subject=subject,
                                           data=StaffUpdate(team=team), grant_ender=grant_ender)
        return StaffOut.model_validate(staff)

    out = run_staff_change(work)
    typer.echo(f"{out.subject}: team {out.team_id or '-'}")


def _set_active(subject: str, active: bool) -> StaffOut:
    async def work(session: AsyncSession, clock: Clock, grant_ender: GrantEnder) -> StaffOut:
        staff = await service.set_active(session=session, clock=clock, actor=CLI_ACTOR, subject=subject,
                                         active=active, grant_ender=grant_ender)
        return StaffOut.model_validate(staff)

    return run_staff_change(work)


@staff_cli.command("deactivate")
def staff_deactivate(subject: Annotated[str, typer.Argument(help="The person's OIDC subject.")]) -> None:
    """Deactivate a person: every staff route refuses them at once; their history stays."""
    typer.echo(f"{_set_active(subject, False).subject}: deactivated")


@staff_cli.command("activate")
def staff_activate(subject: Annotated[str, typer.Argument(help="The person's OIDC subject.")]) -> None:
    """Reactivate a deactivated person."""
    typer.echo(f"{_set_active(subject, True).subject}: active")


# --- teams --------------------------------------------------------------------------------------------


@teams_cli.command("add")
def teams_add(
    name: Annotated[str, typer.Argument(help="Unique team name.")],
    manager: Annotated[list[str] | None, typer.Option("--manager", help="A manager's subject; repeatable.")] = None,
) -> None:
    """Create a team, optionally with its managers (active staff with the manager role)."""

    async def work(session: AsyncSession, clock: Clock) -> TeamOut:
        team = await service.create_team(session=session, clock=clock, actor=CLI_ACTOR,
                                         data=TeamCreate(name=name, managers=manager or []))
        return TeamOut.model_validate(team)

    out = run_admin_work(work)
    typer.echo(f"added team {out.name} ({out.id})")


@teams_cli.command("add-manager")
def teams_add_manager(
    team: Annotated[str, typer.Argument(help="Team name or id.")],
    subject: Annotated[str, typer.Argument(help="The manager's OIDC subject.")],
) -> None:
    """Add a manager to a team."""

    async def work(session: AsyncSession, clock: Clock) -> TeamOut:
        updated = await service.add_manager(session=session, clock=clock, actor=CLI_ACTOR, team_id=team,
                                            subject=subject)
        return TeamOut.model_validate(updated)

    out = run_admin_work(work)
    typer.echo(f"{out.name}: managers {','.join(out.managers)}")


@teams_cli.command("remove-manager")
def teams_remove_manager(
    team: Annotated[str, typer.Argument(help="Team name or id.")],
    subject: Annotated[str, typer.Argument(help="The manager's OIDC subject.")],
) -> None:
    """Remove a manager from a team."""

    async def work(session: AsyncSession, clock: Clock) -> TeamOut:
        updated = await service.remove_manager(session=session, clock=clock, actor=CLI_ACTOR, team_id=team,
                                               subject=subject)
        return TeamOut.model_validate(updated)

    out = run_admin_work(work)
    typer.echo(f"{out.name}: managers {','.join(out.managers) or '-'}")


@teams_cli.command("list")
def teams_list(as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """List teams: id, name, managers."""

    async def work(session: AsyncSession, _clock: Clock) -> list[BaseModel]:
        return [TeamOut.model_validate(t) for t in await service.list_teams(session=session)]

    echo_rows(run_admin_work(work), as_json, _team_line)
