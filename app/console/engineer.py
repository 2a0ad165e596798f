"""Engineer pages: my tickets, asking for access, my requests and grants (with a live countdown)."""

from __future__ import annotations

import re
from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from app.access import decisions
from app.access import service as access
from app.access.grant_facts import grant_situations
from app.access.saw.trust import saw_fingerprint
from app.console.auth import signed_in
from app.console.security import checked_form, first
from app.console.staff import staff_person
from app.console.templating import page
from app.deps import ContextDep, SessionDep, settle_refusal
from app.errors import AppError
from app.identity.principal import Role
from app.input_text import checked_form_int, checked_prose, checked_single_line
from app.resources.service import get_resource
from app.tickets.service import ticket_view, tickets_of_engineer

DURATIONS = (30, 60, 120, 240, 480)
_SPLIT = re.compile(r"[\s,;]+")

router = APIRouter(prefix="/console/engineer", include_in_schema=False)


@router.get("")
async def engineer_home(http_request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    session, actor = await signed_in(http_request, ctx, Role.ENGINEER, db=db)
    await staff_person(db, ctx.access, actor, Role.ENGINEER)
    tickets = [t for t in await tickets_of_engineer(session=db, engineer=actor.subject) if t.is_open]
    resources = {t.id: await get_resource(session=db, resource_id=t.resource_id) for t in tickets}
    rows = await access.access_requests_of(session=db, requester=actor.subject)
    now = ctx.clock.now()
    situations = await grant_situations(session=db, rows=rows, now=now, retention=ctx.access.retention)
    # A link to play only where a read would be allowed: the grant's side (its status and each recording's)
    # and this page coming from the engineer's own SAW, as playback checks (C5).
    fingerprint = saw_fingerprint(http_request, ctx.settings.saw)
    on_saw = await ctx.access.saws.saw_for(db, fingerprint, actor.subject) is not None
    refs: dict[str, str] = {}
    requests = []
    for row in rows:
        if row.ticket_id not in refs:
            ticket = await ticket_view(session=db, ticket_id=row.ticket_id)
            refs[row.ticket_id] = ticket.external_ref if ticket else "?"
        situation = situations[row.id]
        requests.append({"row": row, "ticket_ref": refs[row.ticket_id], "situation": situation,
                         "links": situation.readable if on_saw else frozenset(),
                         "request_ids": await access.request_ids_of(session=db, access_request=row)})
    return page(http_request, "engineer.html", session, tickets=tickets, resources=resources, requests=requests,
                durations=DURATIONS, now=now, on_saw=on_saw)


@router.post("/requests")
async def ask(http_request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    session, actor = await signed_in(http_request, ctx, Role.ENGINEER, db=db)
    form = await checked_form(http_request, session)
    ids = [i for i in _SPLIT.split((first(form, "request_ids") or "").strip().lower()) if i]
    try:
        minutes = checked_form_int(first(form, "duration_minutes"), field="duration", default=240,
                                   minimum=5, maximum=480)
        justification = checked_prose(first(form, "justification") or "", field="justification", max_length=2000)
        person = await staff_person(db, ctx.access, actor, Role.ENGINEER)
        row = await decisions.request_access(
            session=db, clock=ctx.clock, notifier=ctx.access.notifier, actor=person, data=access.NewAccessRequest(
                ticket_id=first(form, "ticket_id") or "", request_ids=ids, justification=justification,
                duration=timedelta(minutes=minutes)))
        session.flash("ok", f"Access request {row.id[:8]} sent to your team's managers.")
    except AppError as error:
        await settle_refusal(db, error)
        session.flash("error", f"{error.title}: {error.detail}")
    return RedirectResponse("/console/engineer", status_code=303)


@router.post("/requests/{access_request_id}/revoke")
async def give_back(access_request_id: str, http_request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    session, actor = await signed_in(http_request, ctx, Role.ENGINEER, db=db)
    form = await checked_form(http_request, session)
    try:
        reason = checked_single_line(first(form, "reason") or "no longer needed", field="reason", max_length=200)
        person = await staff_person(db, ctx.access, actor, Role.ENGINEER)
        await decisions.revoke_access(session=db, clock=ctx.clock, directory=ctx.access.directory,
                                      notifier=ctx.access.notifier, access_request_id=access_request_id,
                                      actor=person, reason=reason)
        session.flash("ok", "Access ended.")
    except AppError as error:
        await settle_refusal(db, error)
        session.flash("error", f"{error.title}: {error.detail}")
    return RedirectResponse("/console/engineer", status_code=303)
