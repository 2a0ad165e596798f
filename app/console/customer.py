"""Customer-admin pages: consents (grant, withdraw, erase), recorded request IDs, the access transparency log,
and (Lockbox) the requests that wait for the customer's approval, decided through the API's own use case."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from app.access import decisions, transparency
from app.access.grant_status import GrantStatus
from app.access.service import AccessRequestNotFound
from app.capture import service as capture
from app.console.auth import signed_in
from app.console.security import checked_form, first
from app.console.templating import page
from app.deps import ContextDep, SessionDep, roll_back, settle_refusal
from app.errors import AppError, InvalidInput
from app.identity.principal import Role
from app.input_text import checked_form_int
from app.resources.service import ResourceNotFound, list_resources
from app.tickets import service as tickets
from app.tickets.schemas import ConsentCreate

router = APIRouter(prefix="/console/customer", include_in_schema=False)


@router.get("")
async def customer_home(request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    session, actor = await signed_in(request, ctx, Role.CUSTOMER_ADMIN, db=db)
    owned = []
    for resource in await list_resources(session=db):
        try:  # the tickets service decides what a tenant owns
            owned.append(await tickets.customer_resource(session=db, principal=actor, name=resource.name))
        except ResourceNotFound:
            continue
    if len(owned) == 1:
        return RedirectResponse(f"/console/customer/resources/{owned[0].name}", status_code=303)
    return page(request, "customer_home.html", session, resources=owned)


@router.get("/resources/{name}")
async def resource_page(name: str, request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    session, actor = await signed_in(request, ctx, Role.CUSTOMER_ADMIN, db=db)
    resource = await tickets.customer_resource(session=db, principal=actor, name=name)
    now = ctx.clock.now()
    consents = []
    for consent in await tickets.consents_of_resource(session=db, resource=resource):
        ticket = await tickets.ticket_view(session=db, ticket_id=consent.ticket_id)
        consents.append({"row": consent, "state": tickets.consent_state(consent, now),
                         "ticket_ref": ticket.external_ref if ticket else "?"})
    recordings = await capture.recordings_of_resource(session=db, resource=resource, limit=200)
    log = await transparency.access_log(session=db, resource=resource, now=now, retention=ctx.access.retention,
                                        limit=200)
    waiting = [a for a in log["access_requests"] if a["status"] == GrantStatus.WAITING_FOR_CUSTOMER]
    return page(request, "customer.html", session, resource=resource, consents=consents, recordings=recordings,
                log=log, waiting=waiting)


@router.post("/resources/{name}/consents")
async def grant(name: str, request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    session, actor = await signed_in(request, ctx, Role.CUSTOMER_ADMIN, db=db)
    form = await checked_form(request, session)
    try:
        resource = await tickets.customer_resource(session=db, principal=actor, name=name)
        days = checked_form_int(first(form, "days"), field="number of days", default=7, minimum=1, maximum=30)
        data = ConsentCreate.naming((first(form, "ticket_id") or "").strip(), days=days,
                                    require_customer_approval=first(form, "require_customer_approval") == "on")
        await tickets.grant_consent(session=db, clock=ctx.clock, actor=actor, resource=resource, data=data,
                                    consents=ctx.consents)
        session.flash("ok", "Recording is on for this resource, for the ticket you named: from now on for calls "
                      "this server takes, on every server within a few seconds.")
    except AppError as error:
        await settle_refusal(db, error)
        session.flash("error", f"{error.title}: {error.detail}")
    except ValidationError as error:
        await roll_back(db)
        session.flash("error", "The consent is not valid: " + "; ".join(e["msg"] for e in error.errors()))
    return RedirectResponse(f"/console/customer/resources/{name}", status_code=303)


@router.post("/resources/{name}/consents/{consent_id}/withdraw")
async def withdraw(name: str, consent_id: str, request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    session, actor = await signed_in(request, ctx, Role.CUSTOMER_ADMIN, db=db)
    await checked_form(request, session)
    try:
        resource = await tickets.customer_resource(session=db, principal=actor, name=name)
        await tickets.withdraw_consent(session=db, clock=ctx.clock, consents=ctx.consents, actor=actor,
                                       resource=resource, consent_id=consent_id)
        session.flash("ok", "Consent withdrawn: recording has stopped.")
    except AppError as error:
        await settle_refusal(db, error)
        session.flash("error", f"{error.title}: {error.detail}")
    return RedirectResponse(f"/console/customer/resources/{name}", status_code=303)


@router.post("/resources/{name}/consents/{consent_id}/erase")
async def erase(name: str, consent_id: str, request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    """The erasure API's use case, in its order (keys destroyed and committed, then blobs deleted)."""
    session, actor = await signed_in(request, ctx, Role.CUSTOMER_ADMIN, db=db)
    form = await checked_form(request, session)
    if first(form, "confirm") != "erase":
        session.flash("error", "Tick the box to confirm the erasure.")
        return RedirectResponse(f"/console/customer/resources/{name}", status_code=303)
    try:
        resource = await tickets.customer_resource(session=db, principal=actor, name=name)
        receipt = await capture.erase_customer_recordings(
            session=db, clock=ctx.clock, keyrings=ctx.keyrings, consents=ctx.consents, stores=ctx.stores,
            recorder=ctx.recorder, actor=actor, resource=resource, consent_id=consent_id, commit=db.commit)
        session.flash("ok", f"Erased {receipt.recordings} recording(s); their keys are destroyed "
                      f"({len(receipt.blobs_pending)} blob deletion(s) retried later). "
                      f"Receipt SHA-256 {receipt.receipt_sha256}.")
    except AppError as error:
        await settle_refusal(db, error)
        session.flash("error", f"{error.title}: {error.detail}")
    return RedirectResponse(f"/console/customer/resources/{name}", status_code=303)


NO_SUCH_REQUEST = "No access request with this ID waits for your decision on this resource."
VERDICTS = {"approve": True, "deny": False}


@router.post("/resources/{name}/access-requests/{access_request_id}/{verdict}")
async def decide(name: str, access_request_id: str, verdict: str, request: Request, ctx: ContextDep,
                 db: SessionDep) -> Response:
    """Customer Lockbox from the console: the API's use case (`customer_decide_access`), audited the same way.
    An unknown request, another resource's and a resource the tenant does not own get one message."""
    session, actor = await signed_in(request, ctx, Role.CUSTOMER_ADMIN, db=db)
    await checked_form(request, session)
    back = f"/console/customer/resources/{name}"
    try:
        if verdict not in VERDICTS:
            raise InvalidInput("Approve or deny.")
        resource = await tickets.customer_resource(session=db, principal=actor, name=name)
        await decisions.customer_decide_access(
            session=db, clock=ctx.clock, access_request_id=access_request_id, actor=actor.subject,
            resource_id=resource.id, approve=VERDICTS[verdict], retention=ctx.access.retention)
        session.flash("ok", "Approved: the engineer may now read the recordings named, until the grant ends."
                      if VERDICTS[verdict] else "Denied: no recording will be read under this request.")
    except (ResourceNotFound, AccessRequestNotFound) as refused:
        await settle_refusal(db, refused)
        session.flash("error", NO_SUCH_REQUEST)
        if isinstance(refused, ResourceNotFound):  # not theirs, or no such name: their own list, either way
            back = "/console/customer"
    except AppError as error:
        await settle_refusal(db, error)
        session.flash("error", f"{error.title}: {error.detail}")
    return RedirectResponse(back, status_code=303)
