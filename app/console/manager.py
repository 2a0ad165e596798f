"""Manager pages: the approval queue of the teams I manage, each request with its requester's history."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import decisions
from app.access import service as access
from app.access.grant_facts import grant_situations
from app.access.grant_status import GrantSituation, GrantStatus
from app.access.service import AccessRequestRow, StaffDirectory
from app.console.auth import signed_in
from app.console.security import checked_form, first
from app.console.staff import staff_person
from app.console.templating import page
from app.deps import ContextDep, SessionDep, settle_refusal
from app.errors import AppError, InvalidInput
from app.identity.principal import Role
from app.identity.staff.service import get_team, list_staff
from app.input_text import checked_form_int, checked_single_line
from app.tickets.service import ticket_view

SHORTER = (15, 30, 60, 120, 240)
RECENT = timedelta(days=7)

router = APIRouter(prefix="/console/manager", include_in_schema=False)


@dataclass(frozen=True)
class PastRequest:
    row: AccessRequestRow
    situation: GrantSituation


@dataclass(frozen=True)
class History:
    """What a manager wants to see of a requester before deciding (presentation only, no rule)."""

    past: list[PastRequest]
    states: dict[str, int]
    notes: list[str]


def requester_history(rows: list[AccessRequestRow], situations: dict[str, GrantSituation], current: AccessRequestRow,
                      now: datetime) -> History:
    """Past requests with their derived status (the one `grant_status` every page shows)."""
    past = [PastRequest(r, situations[r.id]) for r in rows if r.id != current.id]
    states: Counter[str] = Counter(p.situation.status.label for p in past)
    notes = []
    recent = [p for p in past if now - p.row.created_at <= RECENT]
    if len(recent) >= 3:
        notes.append(f"{len(recent)} other requests in the last 7 days")
    denied = sum(1 for p in past if p.situation.status == GrantStatus.DENIED)
    if denied:
        notes.append(f"denied {denied} time(s) before")
    if current.requested_duration_s >= 8 * 3600:
        notes.append("asks for the longest duration (8 h)")
    if any(p.situation.status in (GrantStatus.APPROVED, GrantStatus.WAITING_FOR_CUSTOMER)
           and p.row.ticket_id == current.ticket_id for p in past):
        notes.append("already holds a grant on this ticket")
    return History(past=past[:5], states=dict(states), notes=notes)


async def _queue(db: AsyncSession, directory: StaffDirectory, person: access.Person, now: datetime,
                 retention: timedelta) -> list[dict[str, object]]:
    teams = await directory.teams_managed(db, person.subject)
    rows = await access.queue_for(session=db, actor=person, team_ids=teams)
    out: list[dict[str, object]] = []
    for row in rows:
        ticket = await ticket_view(session=db, ticket_id=row.ticket_id)
        theirs = list(await access.access_requests_of(session=db, requester=row.requester))
        situations = await grant_situations(session=db, rows=theirs, now=now, retention=retention)
        out.append({"row": row, "ticket_ref": ticket.external_ref if ticket else "?",
                    "history": requester_history(theirs, situations, row, now),
                    "request_ids": await access.request_ids_of(session=db, access_request=row),
                    "shorter": [m for m in SHORTER if m * 60 < row.requested_duration_s]})
    return out


async def _team_requests(db: AsyncSession, team_ids: list[str], now: datetime,
                         retention: timedelta) -> list[dict[str, object]]:
    """The teams' latest requests whatever their state, so a decision stays visible after it is made (waiting
    for the customer, approved until, denied by the customer, ended...)."""
    rows = await access.requests_of_teams(session=db, team_ids=team_ids, limit=50)
    situations = await grant_situations(session=db, rows=rows, now=now, retention=retention)
    refs: dict[str, str] = {}
    out: list[dict[str, object]] = []
    for row in rows:
        if row.ticket_id not in refs:
            ticket = await ticket_view(session=db, ticket_id=row.ticket_id)
            refs[row.ticket_id] = ticket.external_ref if ticket else "?"
        out.append({"row": row, "ticket_ref": refs[row.ticket_id], "situation": situations[row.id]})
    return out


@router.get("")
async def manager_home(http_request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    session, actor = await signed_in(http_request, ctx, Role.MANAGER, db=db)
    person = await staff_person(db, ctx.access, actor, Role.MANAGER)
    now, retention = ctx.clock.now(), ctx.access.retention
    queue = await _queue(db, ctx.access.directory, person, now, retention)
    team_ids = await ctx.access.directory.teams_managed(db, actor.subject)
    recent = await _team_requests(db, team_ids, now, retention)
    teams = []
    for team_id in team_ids:
        team = await get_team(session=db, team_id=team_id)
        members = await list_staff(session=db, team_id=team_id)
        teams.append({"name": team.name if team else team_id, "members": members})
    return page(http_request, "manager.html", session, queue=queue, teams=teams, recent=recent)


@router.post("/requests/{access_request_id}/{verdict}")
async def decide(access_request_id: str, verdict: str, http_request: Request, ctx: ContextDep,
                 db: SessionDep) -> Response:
    session, actor = await signed_in(http_request, ctx, Role.MANAGER, db=db)
    form = await checked_form(http_request, session)
    clock, directory, notifier = ctx.clock, ctx.access.directory, ctx.access.notifier
    try:
        person = await staff_person(db, ctx.access, actor, Role.MANAGER)
        if verdict == "approve":
            minutes = checked_form_int(first(form, "duration_minutes"), field="duration", default=0,
                                       minimum=0, maximum=480)
            duration = timedelta(minutes=minutes) if minutes else None
            row = await decisions.approve_access(session=db, clock=clock, directory=directory, notifier=notifier,
                                                 access_request_id=access_request_id, actor=person,
                                                 duration=duration)
            session.flash("ok", f"Approved {row.requester}'s request until {row.expires_at:%H:%M} UTC.")
        elif verdict == "deny":
            reason = checked_single_line(first(form, "reason") or "", field="reason", max_length=200)
            row = await decisions.deny_access(session=db, clock=clock, directory=directory, notifier=notifier,
                                              access_request_id=access_request_id, actor=person, reason=reason)
            session.flash("ok", f"Denied {row.requester}'s request.")
        else:
            raise InvalidInput("Approve or deny.")
    except AppError as error:
        await settle_refusal(db, error)
        session.flash("error", f"{error.title}: {error.detail}")
    return RedirectResponse("/console/manager", status_code=303)
