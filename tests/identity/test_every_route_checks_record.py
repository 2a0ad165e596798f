"""C5 "every role, on every route, is token AND record", proved over every route the app serves.

The app's routes (API, console, OpenAPI) are discovered, not listed by hand: each must appear in `NEEDS`,
which says what it asks of a caller. For every route that needs a staff role, a token carrying the role is
refused when its subject has (a) no staff record, (b) a deactivated one, (c) one without that role; the same
token with an active record holding the role is not refused for its role. A new route missing from the table
fails the first test; a new staff route that checks the token alone fails the second.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from sqlalchemy import select
from starlette.routing import Mount, WebSocketRoute

from app.audit.actions import Actor
from app.audit.models import AuditEntryRow, AuditInboxRow
from app.clock import SystemClock
from app.console.auth import ConsoleState
from app.identity.principal import STAFF_ROLES, Role
from app.identity.settings import IdentitySettings
from app.identity.staff import service as staff_service
from app.identity.staff.schemas import StaffCreate
from app.main import create_app
from app.wiring import close_context
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.saw import app_settings

Refusal = Literal["problem", "console", "read", "console_read"]


@dataclass(frozen=True)
class Public:
    """Anyone: probes, public keys, sign-in plumbing, the relay (the client's own upstream credentials)."""

    why: str


@dataclass(frozen=True)
class AdminToken:
    """Only the configured admin token (`AdminDep`); no OIDC role opens it."""


@dataclass(frozen=True)
class TokenRole:
    """A customer's or a service's role: no staff record exists for them, the token alone decides."""

    role: Role


@dataclass(frozen=True)
class StaffRole:
    """One of `roles` in the token AND in the person's active staff record; how the route says no."""

    roles: tuple[Role, ...]
    refusal: Refusal = "problem"


Need = Public | AdminToken | TokenRole | StaffRole

ENGINEER, MANAGER, AUDITOR, ADMIN = (StaffRole((r,)) for r in (Role.ENGINEER, Role.MANAGER, Role.AUDITOR,
                                                                Role.ADMIN))
TICKETING, CUSTOMER = TokenRole(Role.TICKETING), TokenRole(Role.CUSTOMER_ADMIN)
READ = StaffRole((Role.ENGINEER,), "read")  # C4: every refusal is the same 404; the audited reason tells
CONSOLE_READ = StaffRole((Role.ENGINEER,), "console_read")
DEV = Public("the dev issuer (dev settings only, loopback callers)")
RELAY = Public("the relay: the client's own credentials go upstream")
WS = "WEBSOCKET"
MOUNT = "MOUNT"


def console(need: StaffRole) -> StaffRole:
    return StaffRole(need.roles, "console")


NEEDS: dict[tuple[str, str], Need] = {
    ("GET", "/openapi.json"): Public("the API's description"),
    ("GET", "/docs"): Public("the API's description"),
    ("GET", "/docs/oauth2-redirect"): Public("the API's description"),
    ("GET", "/redoc"): Public("the API's description"),
    ("GET", "/healthz"): Public("probe"),
    ("GET", "/readyz"): Public("probe"),
    ("GET", "/metrics"): Public("scraped; no content, no identities"),
    ("GET", "/dev/oidc/.well-known/openid-configuration"): DEV,
    ("GET", "/dev/oidc/jwks.json"): DEV,
    ("POST", "/dev/oidc/token"): DEV,
    ("GET", "/dev/oidc/authorize"): DEV,
    ("POST", "/dev/oidc/authorize"): DEV,
    ("POST", "/dev/oidc/oauth2/token"): DEV,
    (WS, "/resources/{resource}/voice-live/realtime"): RELAY,
    (WS, "/resources/{resource}/v1/realtime"): RELAY,
    (WS, "/resources/{resource}/openai/realtime"): RELAY,
    (WS, "/resources/{resource}/openai/v1/realtime"): RELAY,
    (WS, "/resources/{resource}/{rest:path}"): RELAY,
    ("POST", "/admin/resources"): AdminToken(),
    ("GET", "/admin/resources"): AdminToken(),
    ("GET", "/admin/resources/{name}"): AdminToken(),
    ("DELETE", "/admin/resources/{name}"): AdminToken(),
    ("POST", "/tickets"): TICKETING,
    ("GET", "/tickets/{ticket_id}"): TICKETING,
    ("POST", "/tickets/{ticket_id}/engineers"): TICKETING,
    ("DELETE", "/tickets/{ticket_id}/engineers/{engineer}"): TICKETING,
    ("POST", "/tickets/{ticket_id}/close"): TICKETING,
    ("GET", "/me/tickets"): ENGINEER,
    ("POST", "/customer/resources/{resource}/consents"): CUSTOMER,
    ("GET", "/customer/resources/{resource}/consents"): CUSTOMER,
    ("POST", "/customer/resources/{resource}/consents/{consent_id}/withdraw"): CUSTOMER,
    ("GET", "/customer/resources/{resource}/recordings"): CUSTOMER,
    ("POST", "/customer/resources/{resource}/consents/{consent_id}/erasure"): CUSTOMER,
    ("POST", "/customer/resources/{resource}/access-requests/{access_request_id}/{verdict}"): CUSTOMER,
    ("GET", "/customer/resources/{resource}/access-log"): CUSTOMER,
    # The staff directory and the SAW registry: the admin token, or a staff admin (token AND record).
    ("POST", "/admin/teams"): ADMIN,
    ("GET", "/admin/teams"): ADMIN,
    ("GET", "/admin/teams/{team}"): ADMIN,
    ("POST", "/admin/teams/{team}/managers"): ADMIN,
    ("DELETE", "/admin/teams/{team}/managers/{subject}"): ADMIN,
    ("POST", "/admin/staff"): ADMIN,
    ("GET", "/admin/staff"): ADMIN,
    ("GET", "/admin/staff/{subject}"): ADMIN,
    ("PATCH", "/admin/staff/{subject}"): ADMIN,
    ("PUT", "/admin/staff/{subject}/roles"): ADMIN,
    ("POST", "/admin/staff/{subject}/deactivate"): ADMIN,
    ("POST", "/admin/staff/{subject}/activate"): ADMIN,
    ("POST", "/admin/saws"): ADMIN,
    ("GET", "/admin/saws"): ADMIN,
    ("GET", "/admin/saws/{saw_id}"): ADMIN,
    ("POST", "/admin/saws/{saw_id}/revoke"): ADMIN,
    ("GET", "/access/saw/me"): ENGINEER,
    ("POST", "/access/requests"): ENGINEER,
    ("GET", "/access/requests"): ENGINEER,
    ("GET", "/access/queue"): MANAGER,
    ("POST", "/access/requests/{access_request_id}/approve"): MANAGER,
    ("POST", "/access/requests/{access_request_id}/deny"): MANAGER,
    ("POST", "/access/requests/{access_request_id}/revoke"): StaffRole((Role.ENGINEER, Role.MANAGER)),
    ("POST", "/access/requests/{access_request_id}/extend"): ENGINEER,
    ("GET", "/recordings/{request_id}/audio/{speaker}.wav"): READ,
    ("GET", "/recordings/{request_id}/events"): READ,
    ("GET", "/recordings/{request_id}/transcript"): READ,
    ("GET", "/recordings/{request_id}/audio/session.wav"): READ,
    ("GET", "/recordings/{request_id}/turns"): READ,
    ("GET", "/recordings/{request_id}/bundle"): READ,
    ("GET", "/audit/entries"): AUDITOR,
    ("GET", "/audit/keys"): Public("verifiers outside voicelog need the public keys"),
    ("GET", "/audit/verify"): AUDITOR,
    ("GET", "/audit/checkpoints"): AUDITOR,
    ("GET", "/audit/reports/access-review"): AUDITOR,
    ("GET", "/audit/reports/retention"): AUDITOR,
    ("POST", "/audit/reports/verify"): AUDITOR,
    ("GET", "/retention/report"): AUDITOR,
    # The console.
    (MOUNT, "/console/static"): Public("vendored assets"),
    (MOUNT, "/docs-assets"): Public("Swagger UI and ReDoc assets"),
    ("GET", "/console"): Public("the signed-out page, or links to the pages (each checks its role)"),
    ("GET", "/console/login"): Public("sign-in"),
    ("GET", "/console/callback"): Public("sign-in"),
    ("POST", "/console/logout"): Public("sign-out"),
    ("GET", "/console/engineer"): console(ENGINEER),
    ("POST", "/console/engineer/requests"): console(ENGINEER),
    ("POST", "/console/engineer/requests/{access_request_id}/revoke"): console(ENGINEER),
    ("GET", "/console/manager"): console(MANAGER),
    ("POST", "/console/manager/requests/{access_request_id}/{verdict}"): console(MANAGER),
    ("GET", "/console/customer"): CUSTOMER,
    ("GET", "/console/customer/resources/{name}"): CUSTOMER,
    ("POST", "/console/customer/resources/{name}/consents"): CUSTOMER,
    ("POST", "/console/customer/resources/{name}/consents/{consent_id}/withdraw"): CUSTOMER,
    ("POST", "/console/customer/resources/{name}/consents/{consent_id}/erase"): CUSTOMER,
    ("POST", "/console/customer/resources/{name}/access-requests/{access_request_id}/{verdict}"): CUSTOMER,
    ("GET", "/console/auditor"): console(AUDITOR),
    ("GET", "/console/auditor/retention"): console(AUDITOR),
    ("GET", "/console/auditor/reports/{kind}.{fmt}"): console(AUDITOR),
    ("GET", "/console/recordings/{request_id}"): CONSOLE_READ,
    ("GET", "/console/recordings/{request_id}/audio/{speaker}.wav"): CONSOLE_READ,
    ("GET", "/console/recordings/{request_id}/audio/session.wav"): CONSOLE_READ,
    ("GET", "/console/recordings/{request_id}/bundle"): CONSOLE_READ,
    ("GET", "/console/auditor/entries"): console(AUDITOR),
}

# Well-formed bodies where the role is checked inside the endpoint, after the body is validated.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/access/requests"): {"ticket_id": "no-such-ticket", "request_ids": ["0" * 32],
                                   "justification": "Probe: the caller heard silence on INC-0", "duration_minutes": 60},
    ("POST", "/access/requests/{access_request_id}/approve"): {"reason": "probe"},
    ("POST", "/access/requests/{access_request_id}/deny"): {"reason": "probe"},
    ("POST", "/access/requests/{access_request_id}/revoke"): {"reason": "probe"},
    ("POST", "/access/requests/{access_request_id}/extend"): {"justification": "Probe: more time for INC-0",
                                                              "duration_minutes": 60},
}
PATH_VALUES = {"request_id": "0" * 32, "speaker": "caller", "kind": "access-review", "fmt": "json",
               "verdict": "approve"}
PERIOD = {"from": "2030-03-04", "to": "2030-03-04"}
ROLE_REFUSALS = {"missing_role", "unknown_staff", "staff_inactive", "not_staff"}


def served_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) the app answers, from its routes and from its OpenAPI document."""
    found: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):
        route, path = context.original_route, context.path
        assert path is not None
        if isinstance(route, Mount):
            found.add((MOUNT, path))
        elif isinstance(route, WebSocketRoute) or type(route).__name__ == "APIWebSocketRoute":
            found.add((WS, path))
        else:
            found |= {(m, path) for m in context.methods or () if m != "HEAD"}
    for path, operations in app.openapi()["paths"].items():
        found |= {(method.upper(), path) for method in operations}
    return found


def concrete(path: str, tag: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: PATH_VALUES.get(m.group(1), f"probe-{tag}"), path)


@pytest.fixture
async def app(app_db_url: str, tmp_path: Path, identity_settings: IdentitySettings) -> AsyncIterator[FastAPI]:
    app = create_app(app_settings(tmp_path, app_db_url, identity=identity_settings))
    yield app
    await close_context(app.state.ctx)


def test_every_route_says_what_it_needs(app: FastAPI) -> None:
    served = served_routes(app)

    assert served - NEEDS.keys() == set(), "new routes: say in NEEDS what each asks of its caller"
    assert NEEDS.keys() - served == set(), "NEEDS lists routes the app no longer serves"
    token_roles = {n.role for n in NEEDS.values() if isinstance(n, TokenRole)}
    assert token_roles.isdisjoint(STAFF_ROLES)
    staff_roles = {r for n in NEEDS.values() if isinstance(n, StaffRole) for r in n.roles}
    assert staff_roles == set(STAFF_ROLES)


@dataclass
class Probe:
    app: FastAPI
    client: httpx.AsyncClient
    mint: MintToken
    tag: str

    def who(self, name: str) -> str:
        return f"{name}-{self.tag}"

    async def add_staff(self, name: str, roles: set[Role], *, active: bool = True) -> None:
        actor = Actor.service("probe")
        async with self.app.state.ctx.session_factory() as session:
            await staff_service.create_staff(session=session, clock=SystemClock(), actor=actor, data=StaffCreate(
                subject=self.who(name), display_name=name, roles=sorted(roles)))
            if not active:
                await staff_service.set_active(session=session, clock=SystemClock(), actor=actor,
                                               subject=self.who(name), active=False,
                                               grant_ender=self.app.state.ctx.grant_ender)
            await session.commit()

    async def call(self, method: str, path: str, need: StaffRole, name: str, role: Role) -> httpx.Response:
        token = self.mint(self.who(name), [role])
        url = concrete(path, self.tag)
        if need.refusal in ("console", "console_read"):
            state: ConsoleState = self.app.state.ctx.console
            session = await state.sessions.create(self.app.state.ctx.clock.now(), token=token)
            headers = {"cookie": f"{state.session_cookie}={session.id}"}
            body = None
        else:
            headers, body = bearer(token), BODIES.get((method, path), {} if method != "GET" else None)
        return await self.client.request(method, url, headers=headers, json=body,
                                         params=PERIOD if method == "GET" else None)

    async def read_denied_reason(self, name: str) -> str | None:
        """The reason audited for this person's last refused read (C4 hides it from the caller)."""
        async with self.app.state.ctx.session_factory() as session:
            rows: list[AuditEntryRow | AuditInboxRow] = [
                *(await session.execute(select(AuditEntryRow).where(AuditEntryRow.actor_id == self.who(name))))
                .scalars(),
                *(await session.execute(select(AuditInboxRow).where(AuditInboxRow.actor_id == self.who(name))))
                .scalars()]
        reasons = [r.detail for r in rows if r.action == "recording.read_denied"]
        return reasons[-1] if reasons else None


def refused_for_role(need: StaffRole, response: httpx.Response, audited: str | None) -> bool:
    if need.refusal == "problem":
        return response.status_code == 403 and response.json().get("code") in ROLE_REFUSALS
    if need.refusal == "console":
        return response.status_code == 403 and any(f"<code>{c}</code>" in response.text for c in ROLE_REFUSALS)
    return response.status_code == 404 and audited is not None and '"not_engineer"' in audited


async def role_case_failure(probe: Probe, method: str, path: str, need: StaffRole, role: Role, case: str,
                            name: str, must_refuse: bool) -> str | None:
    """Call the route as `name` holding a `role` token and say what went wrong, if anything: a case that must
    be refused was served, or one that must be served was refused (or failed)."""
    response = await probe.call(method, path, need, name, role)
    audited = await probe.read_denied_reason(name) if need.refusal.endswith("read") else None
    refused = refused_for_role(need, response, audited)
    if must_refuse and (not refused or response.is_success):
        return f"{method} {path}: {role} token, {case}: {response.status_code} {response.text[:120]}"
    if not must_refuse and (refused or response.status_code == 401 or response.status_code >= 500):
        return f"{method} {path}: {role} token, {case}, refused: {response.status_code} {response.text[:160]}"
    return None


@pytest.fixture
async def probe(app: FastAPI, mint_token: MintToken) -> AsyncIterator[Probe]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://voicelog.test") as client:
        yield Probe(app, client, mint_token, uuid4().hex[:8])


async def test_a_staff_role_counts_only_with_an_active_record_that_holds_it_on_every_route(probe: Probe) -> None:
    routes = {key: need for key, need in NEEDS.items() if key in served_routes(probe.app)}
    staff_routes = {key: need for key, need in routes.items() if isinstance(need, StaffRole)}
    for roles in {need.roles for need in staff_routes.values()}:
        await probe.add_staff(f"lacks-{'-'.join(roles)}", set(STAFF_ROLES) - set(roles))
    for role in STAFF_ROLES:
        await probe.add_staff(f"off-{role}", {role}, active=False)
        await probe.add_staff(f"ok-{role}", {role})

    wrong: list[str] = []
    checked = 0
    for (method, path), need in sorted(staff_routes.items()):
        for role in need.roles:
            cases = {"no record": (f"none-{role}", True), "deactivated": (f"off-{role}", True),
                     "record without it": (f"lacks-{'-'.join(need.roles)}", True),
                     "active record": (f"ok-{role}", False)}
            for case, (name, must_refuse) in cases.items():
                failure = await role_case_failure(probe, method, path, need, role, case, name, must_refuse)
                checked += 1
                if failure is not None:
                    wrong.append(failure)

    assert not wrong, "\n".join(wrong)
    assert checked == 4 * sum(len(n.roles) for n in staff_routes.values())
