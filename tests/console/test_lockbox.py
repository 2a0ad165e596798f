"""Customer approval (Lockbox) in the console, and one derived grant status on every page, in Chromium on
SQLite and PostgreSQL.

The engineer asks, the manager approves, and until the customer's admin approves in the console every page
(engineer, manager, customer, auditor) and the API say "waiting for customer" and reads are refused; then the
read works and the status is "approved until". A denial by the customer, an erasure and the manager's view of
a granted duration are checked the same way, and the customer's form is probed: another tenant, forged or
absent CSRF tokens, staff roles, a second decision.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from uuid import uuid4

import pytest
from playwright.async_api import BrowserContext, Page, expect
from sqlalchemy import func, select

from app.access.models import AccessRequest
from app.audit.actions import ActorType
from app.audit.models import AuditEntryRow
from app.clock import SystemClock
from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from app.resources.schemas import ResourceCreate
from app.resources.service import add_resource
from tests.console.stack import chromium, console_stack, shot, sign_in
from tests.console.test_console_story import World, ask_for_access, hire, record_sdk_session
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.relay import StandinHandle
from tests.fixtures.saw import Issued, SawPki

pytestmark = pytest.mark.slow
NO_SUCH_REQUEST = "No access request with this ID waits for your decision on this resource."


@pytest.fixture
async def world(tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
                saw_pki: SawPki, saw_device: Callable[[str], Issued], db_kind: str,
                migrated_databases: dict[str, str]) -> AsyncIterator[World]:
    url = migrated_databases["postgresql"] if db_kind == "postgresql" else None  # None: a fresh SQLite file
    # A certificate of its own: PostgreSQL is shared by the tests, and a certificate registers once.
    device = replace(saw_pki, valid=saw_device(f"SAW-{uuid4().hex[:8]}"))
    async with console_stack(tmp_path, standin, identity_settings, mint_token, database_url=url) as stack, \
            chromium() as browser:
        yield World(stack, browser, await hire(stack, device), mint_token)


async def opt_in(world: World, *, lockbox: bool) -> Page:
    """The customer's admin turns recording on for the ticket, asking (or not) to approve each grant."""
    _context, page = await sign_in(world.browser, world.stack, world.cast.admin, ["customer_admin"],
                                   tenant=world.stack.tenant)
    await page.goto(f"/console/customer/resources/{world.stack.resource}")
    await page.get_by_label("Ticket ID").fill(world.stack.ticket_id)
    if lockbox:
        await page.get_by_label("Each engineer's access also needs my approval").check()
    await page.get_by_role("button", name="Turn recording on").click()
    await expect(page.get_by_role("status").filter(has_text="Recording is on")).to_be_visible()
    await world.stack.reload_consents()
    return page


async def manager_approves(world: World, minutes: str | None = None) -> Page:
    """The manager approves the one request in the queue, for `minutes` (as asked when None)."""
    _m, manager = await sign_in(world.browser, world.stack, world.cast.manager, ["manager"])
    await manager.goto("/console/manager")
    card = manager.locator("article.request")
    if minutes is not None:
        await card.get_by_label("Grant for").select_option(minutes)
    await card.get_by_role("button", name="Approve").click()
    await expect(manager.get_by_role("status").filter(has_text="Approved")).to_be_visible()
    return manager


async def the_one_request(world: World) -> AccessRequest:
    async with world.stack.app.state.ctx.session_factory() as session:
        rows = (await session.execute(select(AccessRequest).where(AccessRequest.requester == world.cast.engineer)
                                      .order_by(AccessRequest.created_at.desc()))).scalars().all()
    return rows[0]


async def api_read_status(world: World, request_id: str) -> int:
    """The API's read of the timeline by the engineer, from her SAW (through the trusted proxy's headers)."""
    token = bearer(world.mint_token(world.cast.engineer, [Role.ENGINEER]))
    response = await world.stack.api("GET", f"/recordings/{request_id}/events", {**token, **world.cast.on_saw})
    return response.status_code


async def api_status(world: World, access_request_id: str) -> dict[str, object]:
    token = bearer(world.mint_token(world.cast.engineer, [Role.ENGINEER]))
    response = await world.stack.api("GET", "/access/requests", token)
    assert response.status_code == 200, response.text
    found: dict[str, object] = next(r for r in response.json() if r["id"] == access_request_id)
    return found


async def expect_status_everywhere(world: World, grant: str, status: str, words: str | re.Pattern[str], *,
                                   engineer: Page, manager: Page, customer: Page) -> None:
    """The same derived status on the engineer's, the manager's, the customer's and the auditor's pages."""
    rows = [engineer.locator(f'table.requests tr[data-access-request="{grant}"]'),
            manager.locator(f'#team-requests tr[data-access-request="{grant}"]'),
            customer.locator(f'#access-requests tr[data-access-request="{grant}"]')]
    await world.stack.chain_audit()
    _a, auditor = await sign_in(world.browser, world.stack, world.cast.auditor, ["auditor"])
    await auditor.goto("/console/auditor")
    rows.append(auditor.locator(f'#grants tr[data-grant="{grant}"]'))
    for page, path in ((engineer, "/console/engineer"), (manager, "/console/manager"),
                       (customer, f"/console/customer/resources/{world.stack.resource}")):
        await page.goto(path)
    for row in rows:
        await expect(row.locator("[data-grant-status]").first).to_have_attribute("data-grant-status", status)
        await expect(row.locator(f'.state[data-grant-status="{status}"]')).to_have_text(words)
    await auditor.context.close()


async def test_lockbox_the_customer_approves_in_the_console_and_only_then_the_engineer_reads(
    world: World, standin: StandinHandle,
) -> None:
    stack, cast = world.stack, world.cast
    customer = await opt_in(world, lockbox=True)
    request_id = await record_sdk_session(stack, standin)
    _e, engineer = await sign_in(world.browser, stack, cast.engineer, ["engineer"], headers=cast.on_saw)
    await ask_for_access(engineer, world, request_id, minutes="240")
    manager = await manager_approves(world, "60")
    grant = (await the_one_request(world)).id

    # Approved by the manager, waiting for the customer: said everywhere, and nothing reads.
    await expect_status_everywhere(world, grant, "waiting_for_customer", "waiting for customer",
                                   engineer=engineer, manager=manager, customer=customer)
    row = engineer.locator(f'table.requests tr[data-access-request="{grant}"]')
    await expect(row.get_by_role("link", name=request_id)).to_have_count(0)
    await expect(row).to_contain_text("no read until the customer approves")
    await expect(engineer.locator("time[data-countdown]")).to_have_count(0)
    await shot(engineer, "lockbox-01-engineer-waiting-for-customer")
    refused = await engineer.goto(f"/console/recordings/{request_id}")
    assert refused is not None
    assert refused.status == 404
    assert await api_read_status(world, request_id) == 404
    listed = await api_status(world, grant)
    assert (listed["state"], listed["status"], listed["readable_request_ids"]) == ("approved", "waiting_for_customer",
                                                                                  [])
    assert (listed["requested_minutes"], listed["granted_minutes"]) == (240, 60)

    # The customer sees what waits for them, with everything they need to decide, and approves.
    await customer.reload()
    card = customer.locator(f'#waiting-for-you article[data-access-request="{grant}"]')
    for fact in ("engineer", stack.ticket_ref, "need to hear the turn", request_id, grant, "1 h 00 min granted",
                 "4 h 00 min asked"):
        await expect(card).to_contain_text(fact)
    await shot(customer, "lockbox-02-customer-waiting")
    await card.get_by_role("button", name="Approve").click()
    await expect(customer.get_by_role("status").filter(has_text="Approved")).to_be_visible()
    await expect(customer.locator("#waiting-for-you")).to_have_count(0)
    await shot(customer, "lockbox-03-customer-approved")

    # Now the engineer reads, and every page says until when.
    await expect_status_everywhere(world, grant, "approved", re.compile(r"^approved until \d{4}-\d\d-\d\d \d\d:\d\d"),
                                   engineer=engineer, manager=manager, customer=customer)
    await engineer.goto("/console/engineer")
    await expect(engineer.locator("time[data-countdown]")).to_have_text(
        re.compile(r"^(59 min \d+ s|1 h 0 min 0 s) left$"))
    await engineer.get_by_role("link", name=request_id).click()
    await engineer.wait_for_url(f"**/console/recordings/{request_id}")
    await expect(engineer.locator('.track[data-track="caller"]')).to_have_attribute("data-loaded", "true")
    assert await api_read_status(world, request_id) == 200
    assert (await api_status(world, grant))["readable_request_ids"] == [request_id]


async def test_lockbox_a_customer_deny_in_the_console_is_denied_everywhere_and_reads_stay_refused(
    world: World, standin: StandinHandle,
) -> None:
    stack, cast = world.stack, world.cast
    customer = await opt_in(world, lockbox=True)
    request_id = await record_sdk_session(stack, standin)
    _e, engineer = await sign_in(world.browser, stack, cast.engineer, ["engineer"], headers=cast.on_saw)
    await ask_for_access(engineer, world, request_id, minutes="60")
    manager = await manager_approves(world, "30")
    grant = (await the_one_request(world)).id

    await customer.reload()
    await customer.locator(f'#waiting-for-you article[data-access-request="{grant}"]').get_by_role(
        "button", name="Deny").click()
    await expect(customer.get_by_role("status").filter(has_text="Denied")).to_be_visible()

    await expect_status_everywhere(world, grant, "denied", "denied by the customer",
                                   engineer=engineer, manager=manager, customer=customer)
    row = engineer.locator(f'table.requests tr[data-access-request="{grant}"]')
    await expect(row.get_by_role("link", name=request_id)).to_have_count(0)
    await expect(row.get_by_role("button", name="End now")).to_have_count(0)
    await shot(engineer, "lockbox-04-engineer-denied-by-customer")
    refused = await engineer.goto(f"/console/recordings/{request_id}")
    assert refused is not None
    assert refused.status == 404
    assert await api_read_status(world, request_id) == 404
    assert (await api_status(world, grant))["status"] == "denied"


async def test_after_an_erasure_the_engineer_sees_recording_erased_and_no_read_link(
    world: World, standin: StandinHandle,
) -> None:
    stack, cast = world.stack, world.cast
    customer = await opt_in(world, lockbox=False)
    request_id = await record_sdk_session(stack, standin)
    _e, engineer = await sign_in(world.browser, stack, cast.engineer, ["engineer"], headers=cast.on_saw)
    await ask_for_access(engineer, world, request_id, minutes="60")
    manager = await manager_approves(world)
    grant = (await the_one_request(world)).id
    await engineer.reload()
    row = engineer.locator(f'table.requests tr[data-access-request="{grant}"]')
    await expect(row.get_by_role("link", name=request_id)).to_have_count(1)

    await customer.reload()
    consent = customer.locator("#consents tbody tr").first
    await consent.get_by_label("erase its recordings now").check()
    await consent.get_by_role("button", name="Erase").click()
    await expect(customer.get_by_role("status").filter(has_text="Erased 1 recording")).to_be_visible()

    await expect_status_everywhere(world, grant, "recording_erased", "recording erased",
                                   engineer=engineer, manager=manager, customer=customer)
    await expect(row.get_by_role("link")).to_have_count(0)
    await expect(row.locator("small.item-erased")).to_have_text("erased")
    await expect(engineer.locator("time[data-countdown]")).to_have_count(0)
    await shot(engineer, "lockbox-05-engineer-recording-erased")
    assert await api_read_status(world, request_id) == 404
    listed = await api_status(world, grant)
    assert (listed["status"], listed["readable_request_ids"]) == ("recording_erased", [])


async def test_the_managers_history_shows_the_granted_duration_not_the_one_asked(
    world: World, standin: StandinHandle,
) -> None:
    stack, cast = world.stack, world.cast
    await opt_in(world, lockbox=False)
    request_id = await record_sdk_session(stack, standin)
    _e, engineer = await sign_in(world.browser, stack, cast.engineer, ["engineer"], headers=cast.on_saw)
    await ask_for_access(engineer, world, request_id, minutes="240")
    manager = await manager_approves(world, "60")
    first = (await the_one_request(world)).id
    await ask_for_access(engineer, world, request_id, minutes="120")

    await manager.goto("/console/manager")
    history = manager.locator("article.request details.history")
    await history.locator("summary").click()
    past = history.locator(f'tr[data-access-request="{first}"]')
    await expect(past).to_contain_text("1 h 00 min granted")
    await expect(past).not_to_contain_text("4 h")
    await expect(past.locator("[data-grant-status]")).to_have_attribute("data-grant-status", "approved")
    await expect(history).to_contain_text("already holds a grant on this ticket")
    recent = manager.locator(f'#team-requests tr[data-access-request="{first}"]')
    await expect(recent).to_contain_text("1 h 00 min granted")
    await shot(manager, "lockbox-06-manager-history-granted-duration")


async def _csrf(page: Page) -> str:
    value = await page.locator("input[name=csrf]").first.get_attribute("value")
    assert value
    return value


async def _flash_after(context: BrowserContext, path: str, form: dict[str, str]) -> tuple[int, str]:
    """POST the form (following the redirect, as a browser does); the status and the page's error flash."""
    response = await context.request.post(path, form=form)
    found = re.search(r'<p class="flash flash-error"[^>]*>([^<]*)</p>', await response.text())
    return response.status, found.group(1) if found else ""


async def test_probes_of_the_customers_decision_form(world: World, standin: StandinHandle) -> None:
    stack, cast = world.stack, world.cast
    customer = await opt_in(world, lockbox=True)
    request_id = await record_sdk_session(stack, standin)
    _e, engineer = await sign_in(world.browser, stack, cast.engineer, ["engineer"], headers=cast.on_saw)
    await ask_for_access(engineer, world, request_id, minutes="60")
    manager = await manager_approves(world)
    grant = (await the_one_request(world)).id
    decide = f"/console/customer/resources/{stack.resource}/access-requests/{grant}/approve"

    async def undecided() -> bool:
        async with stack.app.state.ctx.session_factory() as session:
            row = await session.get(AccessRequest, grant)
            return row is not None and row.customer_decided_at is None

    # A customer admin of another tenant, with a resource of their own: sees nothing, decides nothing, and
    # gets one answer for this request, an unknown one, and the other tenant's resource.
    other_tenant, other_resource = f"rival-{stack.tag}", f"rival-res-{stack.tag}"
    async with stack.app.state.ctx.session_factory() as session:
        await add_resource(session=session, clock=SystemClock(), regions=stack.app.state.ctx.settings.region_names,
                           data=ResourceCreate(name=other_resource, region="westeurope",
                                               upstream_endpoint=standin.url, owner_tenant=other_tenant))
        await session.commit()
    rival_context, rival = await sign_in(world.browser, stack, f"rival-admin-{stack.tag}", ["customer_admin"],
                                         tenant=other_tenant)
    await rival.goto(f"/console/customer/resources/{other_resource}")
    await expect(rival.locator("#waiting-for-you")).to_have_count(0)
    assert grant not in await rival.content()
    token = await _csrf(rival)
    paths = [f"/console/customer/resources/{other_resource}/access-requests/{grant}/approve",
             f"/console/customer/resources/{other_resource}/access-requests/{uuid4()}/approve",
             decide, f"/console/customer/resources/no-such-{stack.tag}/access-requests/{grant}/deny"]
    answers = [await _flash_after(rival_context, path, {"csrf": token}) for path in paths]
    assert answers == [(200, NO_SUCH_REQUEST)] * 4
    pages = [await rival_context.request.get(f"/console/customer/resources/{name}")
             for name in (stack.resource, f"no-such-{stack.tag}")]
    assert [(p.status, (await p.json())["code"]) for p in pages] == [(404, "resource_not_found")] * 2
    assert await undecided()

    # The customer's own session, without its CSRF token or with a forged one: refused before anything is read.
    customer_context = customer.context
    for form in ({}, {"csrf": "forged-token"}, {"csrf": token}):  # the last: another session's real token
        response = await customer_context.request.post(decide, form=form, max_redirects=0)
        assert response.status == 403
        assert "csrf_rejected" in await response.text()
    assert await undecided()

    # Staff cannot use the customer's form, even with their own session's valid token.
    for page in (engineer, manager):
        await page.goto("/console")
        response = await page.context.request.post(decide, form={"csrf": await _csrf(page)}, max_redirects=0)
        assert response.status == 403
        assert "missing_role" in await response.text()
    assert await undecided()

    # Deciding twice: a clear error the second time, and one audit entry.
    await customer.reload()
    own_token = await _csrf(customer)
    assert await _flash_after(customer_context, decide, {"csrf": own_token}) == (200, "")
    status, flash = await _flash_after(customer_context, decide.replace("/approve", "/deny"), {"csrf": own_token})
    assert status == 200
    assert flash.startswith("You have already decided this request: You approved it at ")
    api = await stack.api("POST", f"/customer/resources/{stack.resource}/access-requests/{grant}/refuse",
                          bearer(world.mint_token(cast.admin, [Role.CUSTOMER_ADMIN], tenant=stack.tenant)))
    assert (api.status_code, api.json()["code"]) == (409, "customer_already_decided")
    await stack.chain_audit()
    async with stack.app.state.ctx.session_factory() as session:
        decisions = await session.scalar(select(func.count()).select_from(AuditEntryRow).where(
            AuditEntryRow.grant_id == grant, AuditEntryRow.actor_type == ActorType.CUSTOMER_ADMIN))
        row = await session.get(AccessRequest, grant)
    assert decisions == 1
    assert row is not None
    assert row.customer_approved is True


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
async def test_two_verdicts_sent_at_once_are_one_decision_and_one_audit_entry(
    world: World, standin: StandinHandle,
) -> None:
    """The row is locked while the customer decides: of an approve and a refuse racing, one wins, the other is
    told it was decided (PostgreSQL, where two transactions really run at once)."""
    stack, cast = world.stack, world.cast
    admin = bearer(world.mint_token(cast.admin, [Role.CUSTOMER_ADMIN], tenant=stack.tenant))
    consent = await stack.api("POST", f"/customer/resources/{stack.resource}/consents", admin,
                              json={"ticket_id": stack.ticket_id, "require_customer_approval": True})
    assert consent.status_code == 201, consent.text
    await stack.reload_consents()
    request_id = await record_sdk_session(stack, standin)
    asked = await stack.api("POST", "/access/requests", bearer(world.mint_token(cast.engineer, [Role.ENGINEER])),
                            json={"ticket_id": stack.ticket_id, "request_ids": [request_id], "duration_minutes": 30,
                                  "justification": f"Clipped audio on {stack.ticket_ref}, need the first turn."})
    assert asked.status_code == 201, asked.text
    grant = asked.json()["id"]
    approved = await stack.api("POST", f"/access/requests/{grant}/approve",
                               bearer(world.mint_token(cast.manager, [Role.MANAGER])), json={})
    assert approved.json()["status"] == "waiting_for_customer"

    verdicts = await asyncio.gather(*(
        stack.api("POST", f"/customer/resources/{stack.resource}/access-requests/{grant}/{verdict}", admin)
        for verdict in ("approve", "refuse")))
    answers = sorted((r.status_code, r.json().get("code", r.json().get("status"))) for r in verdicts)
    assert [status for status, _ in answers] == [200, 409]
    assert answers[1][1] == "customer_already_decided"
    await stack.chain_audit()
    async with stack.app.state.ctx.session_factory() as session:
        decisions = await session.scalar(select(func.count()).select_from(AuditEntryRow).where(
            AuditEntryRow.grant_id == grant, AuditEntryRow.actor_type == ActorType.CUSTOMER_ADMIN))
    assert decisions == 1
