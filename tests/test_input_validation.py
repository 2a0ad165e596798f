"""Issue 15, findings 6 and 8b: ordinary bad input is a clear 4xx with a stable code, never a 500.

Each case goes through the real API (create_app, SQLite and PostgreSQL) with the people it needs; before the
edge checked text, every one of them was a 500 `invalid_audit_entry` or a traceback from deep in a service.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest

from app.access.models import AccessRequest
from app.capture.models import Recording
from app.config import Settings
from app.errors import InvalidInput
from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from app.input_text import audit_form, checked_form_int, checked_prose, checked_single_line
from app.main import create_app
from app.tickets.models import Ticket
from app.wiring import close_context
from tests.fixtures.audit import audit_rows
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.relay import TEST_ADMIN_TOKEN

ADMIN = bearer(TEST_ADMIN_TOKEN)
UNKNOWN_REQUEST_ID = "0" * 32
JUSTIFICATION = "Caller reports silence at 00:41 on {ref}; need both directions."


@dataclass
class World:
    client: httpx.AsyncClient
    app: Any
    tag: str
    tenant: str
    ticket_id: str
    ticket_ref: str
    access_request_id: str
    recording: str  # a recording of the ticket's resource nobody has asked for yet
    ticketing: dict[str, str]
    engineer: dict[str, str]
    manager: dict[str, str]
    auditor: dict[str, str]
    mint: MintToken

    async def call(self, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def audited(self, action: str) -> list[dict[str, Any]]:
        async with self.app.state.ctx.session_factory() as session:
            details = [r[0] for r in await audit_rows(session, "detail", action=action)]
        return [d if isinstance(d, dict) else json.loads(str(d)) for d in details]


async def _ok(response: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def _recording(app: Any, consent: dict[str, Any]) -> str:
    """A recording row of the consent's resource (reads are not exercised here, so no blob is needed)."""
    request_id = uuid4().hex
    async with app.state.ctx.session_factory() as session:
        ticket = await session.get(Ticket, consent["ticket_id"])
        now = datetime.now(UTC)
        session.add(Recording(request_id=request_id, resource_id=ticket.resource_id, region="eastus",
                              ticket_id=ticket.id, consent_id=consent["id"], started_at=now,
                              bucket_start=now.replace(minute=0, second=0, microsecond=0),
                              blob_name=f"test/{request_id}", state="complete"))
        await session.commit()
    return request_id


@pytest.fixture
async def world(app_db_url: str, tmp_path: Path, identity_settings: IdentitySettings,
                mint_token: MintToken) -> AsyncIterator[World]:
    settings = Settings(data_dir=tmp_path / "data", database_url=app_db_url, standin_enabled=False,
                        demo_resource=False, admin_token=TEST_ADMIN_TOKEN, identity=identity_settings)
    app = create_app(settings)
    tag = uuid4().hex[:8]
    resource, tenant, team = f"res-{tag}", f"tenant-{tag}", f"voice-{tag}"
    alice, mona, audrey = f"alice-{tag}", f"mona-{tag}", f"audrey-{tag}"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        await _ok(await client.post("/admin/resources", headers=ADMIN, json={
            "name": resource, "region": "eastus", "upstream_endpoint": "wss://up.example", "owner_tenant": tenant}))
        await _ok(await client.post("/admin/teams", headers=ADMIN, json={"name": team}))
        for subject, roles in ((alice, ["engineer"]), (mona, ["manager"]), (audrey, ["auditor"])):
            await _ok(await client.post("/admin/staff", headers=ADMIN, json={
                "subject": subject, "display_name": subject, "team": team, "roles": roles}))
        await _ok(await client.post(f"/admin/teams/{team}/managers", headers=ADMIN, json={"subject": mona}), 200)
        ticketing = bearer(mint_token(f"svc-ticketing-{tag}", [Role.TICKETING]))
        ref = f"INC-{tag}"
        ticket = await _ok(await client.post("/tickets", headers=ticketing, json={
            "resource": resource, "external_ref": ref, "engineers": [alice]}))
        customer = bearer(mint_token(f"admin-{tag}", [Role.CUSTOMER_ADMIN], tenant=tenant))
        consent = await _ok(await client.post(f"/customer/resources/{resource}/consents", headers=customer,
                                              json={"ticket_id": ticket["id"]}))
        recordings = [await _recording(app, consent) for _ in range(2)]
        engineer = bearer(mint_token(alice, [Role.ENGINEER]))
        asked = await _ok(await client.post("/access/requests", headers=engineer, json={
            "ticket_id": ticket["id"], "request_ids": [recordings[0]], "justification": JUSTIFICATION.format(ref=ref),
            "duration_minutes": 60}))
        yield World(client, app, tag, tenant, ticket["id"], ref, asked["id"], recordings[1], ticketing, engineer,
                    manager=bearer(mint_token(mona, [Role.MANAGER])),
                    auditor=bearer(mint_token(audrey, [Role.AUDITOR])), mint=mint_token)
    await close_context(app.state.ctx)


def _problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code
    assert body["detail"]


# (name, method, path template, caller, body): each was a 500 before; now a 422 `invalid_input`.
BAD_INPUT = [
    ("justification_with_bell", "POST", "/access/requests", "engineer",
     {"ticket_id": "{ticket}", "request_ids": ["{recording}"],
      "justification": "Silence at 00:41 on {ref}\x07 please, both directions"}),
    ("extension_justification_with_nul", "POST", "/access/requests/{request}/extend", "engineer",
     {"justification": "More time for {ref}\x00 the caller called back"}),
    ("deny_reason_with_escape", "POST", "/access/requests/{request}/deny", "manager", {"reason": "no\x1b[31m"}),
    ("deny_reason_with_newline", "POST", "/access/requests/{request}/deny", "manager", {"reason": "no\nticket"}),
    ("revoke_reason_with_control", "POST", "/access/requests/{request}/revoke", "engineer", {"reason": "done\x01"}),
    ("engineers_entry_with_control", "POST", "/tickets", "ticketing",
     {"resource": "res-{tag}", "external_ref": "INC-a-{tag}", "engineers": ["bob\x02"]}),
    ("engineers_entry_too_long", "POST", "/tickets", "ticketing",
     {"resource": "res-{tag}", "external_ref": "INC-b-{tag}", "engineers": ["b" * 129]}),
    ("assigned_engineer_with_newline", "POST", "/tickets/{ticket}/engineers", "ticketing", {"engineer": "bob\n"}),
    ("owner_tenant_with_control", "POST", "/admin/resources", "admin",
     {"name": "res2-{tag}", "region": "eastus", "upstream_endpoint": "wss://up.example", "owner_tenant": "t\x05"}),
    ("owner_tenant_with_space", "POST", "/admin/resources", "admin",
     {"name": "res3-{tag}", "region": "eastus", "upstream_endpoint": "wss://up.example", "owner_tenant": "a b"}),
    ("staff_display_name_with_control", "POST", "/admin/staff", "admin",
     {"subject": "zed-{tag}", "display_name": "Zed\x1b[2J", "roles": []}),
    ("staff_display_name_with_bidi_override", "POST", "/admin/staff", "admin",
     {"subject": "zoe-{tag}", "display_name": "Zoe \u202eevil", "roles": []}),
    ("staff_display_name_changed_to_newline", "PATCH", "/admin/staff/alice-{tag}", "admin",
     {"display_name": "Alice\nAdmin"}),
    ("checkpoints_after_beyond_64_bits", "GET", f"/audit/checkpoints?after={2**64}", "auditor", None),
    ("verify_from_seq_beyond_64_bits", "GET", f"/audit/verify?from_seq={2**63}", "auditor", None),
]


@pytest.mark.parametrize(("method", "path", "caller", "body"), [case[1:] for case in BAD_INPUT],
                         ids=[case[0] for case in BAD_INPUT])
async def test_bad_input_is_a_422_with_a_code_not_a_500(world: World, method: str, path: str, caller: str,
                                                      body: dict[str, Any] | None) -> None:
    fill = {"ticket": world.ticket_id, "request": world.access_request_id, "tag": world.tag, "ref": world.ticket_ref,
            "recording": world.recording}
    headers = {"admin": ADMIN, "engineer": world.engineer, "manager": world.manager, "ticketing": world.ticketing,
               "auditor": world.auditor}[caller]
    text = json.dumps(body)
    for name, value in fill.items():
        text = text.replace("{" + name + "}", value)
    payload = json.loads(text) if body else None
    response = await world.call(method, path.format(**fill), headers, json=payload)
    _problem(response, 422, "invalid_input")
    assert not {"\x1b", "\x07"} & set(response.text)  # submitted values are never echoed


async def test_a_justification_written_over_several_lines_is_kept_and_audited_on_one(world: World) -> None:
    written = f"Caller hears silence at 00:41.\r\nTicket {world.ticket_ref}:\n\tboth directions, please."
    response = await world.call("POST", "/access/requests", world.engineer, json={
        "ticket_id": world.ticket_id, "request_ids": [world.recording], "justification": written})
    created = await _ok(response)
    assert created["justification"] == written
    async with world.app.state.ctx.session_factory() as session:
        assert (await session.get(AccessRequest, created["id"])).justification == written
    audited = [d["justification"] for d in await world.audited("access.requested")]
    assert f"Caller hears silence at 00:41. Ticket {world.ticket_ref}: both directions, please." in audited


async def test_a_deny_reason_of_one_plain_line_still_works(world: World) -> None:
    response = await world.call("POST", f"/access/requests/{world.access_request_id}/deny", world.manager,
                                json={"reason": "Use the customer's own logs first — ask again if needed."})
    assert (await _ok(response, 200))["state"] == "denied"


SUBJECTS = {"space": "alice smith", "non_ascii": "alicé", "too_long": "a" * 200, "control": "alice\x7f"}


@pytest.mark.parametrize("shape", sorted(SUBJECTS))
async def test_a_token_subject_that_cannot_be_an_audit_actor_is_refused_the_same_way_everywhere(
        world: World, shape: str) -> None:
    subject = SUBJECTS[shape]
    reads = [f"/recordings/{rid}/events" for rid in (UNKNOWN_REQUEST_ID, "not-an-id")]
    for path in reads:  # a read answers before it looks at the ID: nothing about the recording is revealed
        _problem(await world.call("GET", path, bearer(world.mint(subject, [Role.ENGINEER]))), 401, "invalid_subject")
    filing = await world.call("POST", "/tickets", bearer(world.mint(subject, [Role.TICKETING])), json={
        "resource": f"res-{world.tag}", "external_ref": f"INC-s-{world.tag}"})
    _problem(filing, 401, "invalid_subject")
    consents = await world.call("GET", f"/customer/resources/res-{world.tag}/consents",
                                bearer(world.mint(subject, [Role.CUSTOMER_ADMIN], tenant=world.tenant)))
    _problem(consents, 401, "invalid_subject")


@pytest.mark.parametrize(("path", "caller"), [
    ("/tickets/a%00b", "ticketing"), ("/admin/resources/a%00b", "admin"), ("/admin/staff/a%00b", "admin"),
    ("/admin/teams/a%0Ab", "admin"), ("/admin/saws/a%1Bb", "admin"), ("/customer/resources/a%00b/consents", "customer"),
])
async def test_a_path_with_a_control_character_is_a_400_before_any_query(world: World, path: str, caller: str) -> None:
    """PostgreSQL refuses NUL in text: such an id in a path was a 500 from inside the query."""
    headers = {"admin": ADMIN, "ticketing": world.ticketing,
               "customer": bearer(world.mint(f"admin-{world.tag}", [Role.CUSTOMER_ADMIN], tenant=world.tenant))}
    _problem(await world.call("GET", path, headers[caller]), 400, "invalid_path")


# --- the console's form checks (the same rules, as a form error instead of a 422) ---------------------------


@pytest.mark.parametrize(("value", "ok"), [
    ("line one\r\nline two\n\tindented", True), ("bell\x07", False), ("nul\x00", False), ("del\x7f", False),
    ("line\u2028separator", False), ("\ud800", False), ("x" * 2001, False),
])
def test_console_prose_allows_line_breaks_and_tabs_only(value: str, ok: bool) -> None:
    if ok:
        assert checked_prose(value, field="justification", max_length=2000) == value.strip()
    else:
        with pytest.raises(InvalidInput):
            checked_prose(value, field="justification", max_length=2000)


@pytest.mark.parametrize("value", ["two\nlines", "tab\there", "esc\x1b", "\u202eflip", "sep\u2028arated", "x" * 201])
def test_console_single_line_refuses_breaks_and_controls(value: str) -> None:
    with pytest.raises(InvalidInput):
        checked_single_line(value, field="reason", max_length=200)


@pytest.mark.parametrize("value", ["99999999999999999999", "²", "-5", "4.5", "481", "1e3"])
def test_console_numbers_out_of_range_are_form_errors_not_overflows(value: str) -> None:
    with pytest.raises(InvalidInput):
        checked_form_int(value, field="duration", default=240, minimum=5, maximum=480)
    assert checked_form_int("", field="duration", default=240, minimum=5, maximum=480) == 240


def test_the_audit_form_of_prose_is_one_line_within_its_limit() -> None:
    assert audit_form("a\r\n\tb\n\nc", 1000) == "a b c"
    assert len(audit_form("x\n" * 900, 1000)) == 1000


# The schemathesis run (tests/test_schemathesis.py) uses SQLite; PostgreSQL refuses a NUL in text itself, so
# every string query parameter and body field gets odd text there too (attack review of issue 15).
ODD_TEXT = ["a\x00b", "\u202eevil", "x" * 5000, "\ud800"]


def _resolve_schema(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
async def test_odd_text_in_any_string_parameter_or_body_field_is_never_a_5xx_on_postgresql(world: World) -> None:
    spec = (await world.client.get("/openapi.json")).json()
    customer = bearer(world.mint(f"admin-{world.tag}", [Role.CUSTOMER_ADMIN], tenant=world.tenant))
    callers = [bearer(TEST_ADMIN_TOKEN), world.engineer, world.manager, world.ticketing, world.auditor, customer]
    fill = {"ticket_id": world.ticket_id, "access_request_id": world.access_request_id, "request_id": world.recording,
            "resource": f"res-{world.tag}", "resource_name": f"res-{world.tag}", "subject": f"alice-{world.tag}"}
    failures: list[str] = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            params = op.get("parameters", [])
            concrete = path
            for p in params:
                if p["in"] == "path":
                    concrete = concrete.replace("{" + p["name"] + "}", fill.get(p["name"], "x"))
            body_schema = None
            content = op.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                body_schema = _resolve_schema(spec, content["application/json"]["schema"])
            cases: list[tuple[dict[str, str], Any]] = []
            for p in params:
                if p["in"] == "query" and _resolve_schema(spec, p.get("schema", {})).get("type") in ("string", None):
                    cases += [({p["name"]: bad}, None) for bad in ODD_TEXT if bad != "\ud800"]
            if body_schema and body_schema.get("type") == "object":
                for name, prop in body_schema.get("properties", {}).items():
                    prop = _resolve_schema(spec, prop)
                    if prop.get("type") == "string" or any(_resolve_schema(spec, a).get("type") == "string"
                                                          for a in prop.get("anyOf", [])):
                        base = dict.fromkeys(body_schema.get("required", []), "x")
                        cases += [({}, {**base, name: bad}) for bad in ODD_TEXT]
            for query, body in cases:
                for headers in callers:
                    kwargs: dict[str, Any] = {"params": query}
                    if body is not None:
                        kwargs["content"] = json.dumps(body, ensure_ascii=True).encode()
                        headers = {**headers, "content-type": "application/json"}
                    response = await world.client.request(method.upper(), concrete, headers=headers, **kwargs)
                    if response.status_code >= 500:
                        failures.append(f"{method.upper()} {path} {query or body!r}: {response.status_code} "
                                        f"{response.text[:120]}")
                        break
    assert world.app.state.ctx.engine.dialect.name == "postgresql"
    assert not failures, "\n".join(failures[:40])
