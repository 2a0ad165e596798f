"""No 5xx from the console, whatever a browser (or anyone) sends (issue 15, finding 6 and its review).

schemathesis (tests/test_schemathesis.py) covers the OpenAPI only; the console's pages are not in it. Here every
console route the app serves (found from its routes, as tests/identity/test_every_route_checks_record.py does)
is called, signed in with the role its path needs, with odd query parameters, odd form fields (one field at a
time, the others well formed, a valid CSRF token), odd path values, repeated keys, non-UTF-8 percent-escapes,
a missing or wrong CSRF token. Each route is fuzzed on exactly the query keys and form fields it reads (watched
on a well-formed request first). Deterministic: a fixed list of inputs, no random generation.

Found on its first run (review of issue 15): on PostgreSQL, POST /console/engineer/requests with a NUL in
`ticket_id` answers 500 (the raw form value reaches a query; PostgreSQL text cannot hold NUL).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.datastructures import QueryParams
from starlette.routing import Mount

from app.access import service as access
from app.access.people import StaffRecords
from app.audit.actions import Actor
from app.capture.models import Recording
from app.clock import SystemClock
from app.console import security as console_security
from app.console.auth import ConsoleState
from app.identity.principal import Principal, Role
from app.identity.settings import IdentitySettings
from app.identity.staff import service as staff
from app.identity.staff.schemas import StaffCreate, TeamCreate
from app.main import create_app
from app.models import Resource
from app.tickets import service as tickets
from app.tickets.schemas import ConsentCreate, TicketCreate
from app.wiring import close_context
from tests.fixtures.identity import MintToken
from tests.fixtures.saw import app_settings

ADMIN = Actor.service("console-fuzz")
TENANT = "tenant-fuzz"

# Which signed-in person each part of the console is for; a console route under no prefix here fails the test.
ROLE_OF_PREFIX: dict[str, Role | None] = {
    "/console/engineer": Role.ENGINEER,
    "/console/recordings": Role.ENGINEER,
    "/console/manager": Role.MANAGER,
    "/console/auditor": Role.AUDITOR,
    "/console/customer": Role.CUSTOMER_ADMIN,
    "/console/login": None,
    "/console/callback": None,
    "/console/logout": Role.ENGINEER,
    "/console": Role.ENGINEER,
}

# Every query parameter and form field the console reads (app/console: query_params.get / first(form, ...)).
QUERY_KEYS = ("from", "to", "after", "before", "limit", "action", "actor", "since", "until", "next", "state",
              "code", "t", "speaker")
FORM_FIELDS = ("ticket_id", "ticket", "request_ids", "justification", "duration_minutes", "reason", "days",
               "confirm", "require_customer_approval", "name", "subject", "tenant", "roles")

# Odd values, percent-encoded by us (quote) unless raw; every one goes to every key and field at least once.
ODD_TEXT: dict[str, str] = {
    "control": "a\x01\x07\x1b[31m\x7fb",
    "nul": "a\x00b",
    "crlf": "x\r\nSet-Cookie: a=b",
    "huge": "9" * 40,
    "huge_negative": "-" + "9" * 40,
    "int64_edge": str(2**63),
    "float_overflow": "1e309",
    "superscript_digits": "\u00b2\u00b3",
    "fullwidth_digits": "\uff11\uff12",
    "very_long": "x" * 3_000,  # x 14 keys stays under httpx's 64 KiB URL limit
    "empty": "",
    "bad_date": "2030-02-30T25:61:00",
    "zone_less_date": "2030-03-04T10:00:00",
    "html": "<script>alert(1)</script>",
    "bidi": "\u202eevil",
}
ODD_RAW: dict[str, str] = {  # sent as they are: not valid UTF-8, or not valid escapes
    "non_utf8": "%FF%FE",
    "lone_surrogate": "%ED%A0%80",
    "truncated_utf8": "%C3",
    "bad_escape": "%zz%",
}
# A few for path values and the CSRF field.
PATH_ODD = ("nul", "huge", "non_utf8")


def encoded(name: str) -> str:
    return ODD_RAW[name] if name in ODD_RAW else quote(ODD_TEXT[name], safe="")


ALL_ODD = (*ODD_TEXT, *ODD_RAW)


@dataclass
class Console:
    app: FastAPI
    client: httpx.AsyncClient
    cookies: dict[Role | None, str]
    csrf: dict[Role | None, str]
    path_values: dict[str, str]
    form_values: dict[str, str]


def console_routes(app: FastAPI) -> list[tuple[str, str]]:
    found = set()
    for context in iter_route_contexts(app.routes):
        route, path = context.original_route, context.path
        assert path is not None
        if isinstance(route, Mount) or not path.startswith("/console"):
            continue
        found |= {(m, path) for m in context.methods or () if m != "HEAD"}
    return sorted(found)


def role_for(path: str) -> Role | None:
    for prefix, role in ROLE_OF_PREFIX.items():
        if path == prefix or path.startswith(prefix + "/"):
            return role
    raise AssertionError(f"{path}: say in ROLE_OF_PREFIX who signs in for it")


async def _world(app: FastAPI, mint: MintToken) -> Console:
    """Team fuzz: eve (engineer, assigned to a ticket, one pending request), mo (manager), aud (auditor); a
    customer admin of the tenant owning the ticket's resource, with a consent; one console session each."""
    ctx = app.state.ctx
    clock = SystemClock()
    tag = uuid4().hex[:8]
    directory = StaffRecords()
    async with ctx.session_factory() as db:
        team = f"fuzz-{tag}"
        await staff.create_team(session=db, clock=clock, actor=ADMIN, data=TeamCreate(name=team))
        for name, role in (("eve", Role.ENGINEER), ("mo", Role.MANAGER), ("aud", Role.AUDITOR)):
            await staff.create_staff(session=db, clock=clock, actor=ADMIN, data=StaffCreate(
                subject=f"{name}-{tag}", display_name=name, team=team, roles=[role]))
        await staff.add_manager(session=db, clock=clock, actor=ADMIN, team_id=team, subject=f"mo-{tag}")
        now = clock.now()
        resource = Resource(id=str(uuid4()), name=f"res-{tag}", region="eastus", upstream_endpoint="wss://up.example",
                            owner_tenant=TENANT, created_at=now)
        db.add(resource)
        await db.flush()
        ref = f"INC-{tag}"
        ticket = await tickets.create_ticket(
            session=db, clock=clock, actor=Principal("svc", frozenset({Role.TICKETING})),
            data=TicketCreate(resource=resource.name, external_ref=ref, engineers=[f"eve-{tag}"]))
        customer = Principal(f"admin@{TENANT}", frozenset({Role.CUSTOMER_ADMIN}), tenant=TENANT)
        consent = await tickets.grant_consent(session=db, clock=clock, actor=customer, resource=resource,
                                              data=ConsentCreate(ticket_id=ticket.id), consents=ctx.consents)
        request_id = uuid4().hex
        started = now - timedelta(hours=1)
        db.add(Recording(request_id=request_id, resource_id=resource.id, region="eastus", ticket_id=ticket.id,
                         consent_id=consent.id, started_at=started,
                         bucket_start=started.replace(minute=0, second=0, microsecond=0),
                         blob_name=f"b/{request_id}", wrapped_dek=b"k" * 40, state="complete"))
        await db.flush()
        eve = await directory.person(db, f"eve-{tag}")
        assert eve is not None
        pending = await access.create_access_request(
            session=db, clock=clock, actor=eve,
            data=access.NewAccessRequest(ticket.id, [request_id], f"Caller heard silence, see {ref}",
                                         timedelta(hours=1)))
        await db.commit()

    state: ConsoleState = ctx.console
    tokens = {Role.ENGINEER: mint(f"eve-{tag}", [Role.ENGINEER]), Role.MANAGER: mint(f"mo-{tag}", [Role.MANAGER]),
              Role.AUDITOR: mint(f"aud-{tag}", [Role.AUDITOR]),
              Role.CUSTOMER_ADMIN: mint(f"admin@{TENANT}", [Role.CUSTOMER_ADMIN], tenant=TENANT)}
    cookies: dict[Role | None, str] = {None: ""}
    csrf: dict[Role | None, str] = {None: ""}
    for role, token in tokens.items():
        session = await state.sessions.create(ctx.clock.now(), token=token)
        cookies[role] = f"{state.session_cookie}={session.id}"
        csrf[role] = session.csrf
    return Console(
        app=app, client=None,  # type: ignore[arg-type]  # set by the fixture
        cookies=cookies, csrf=csrf,
        path_values={"access_request_id": pending.id, "verdict": "approve", "name": resource.name,
                     "consent_id": consent.id, "request_id": request_id, "speaker": "caller",
                     "kind": "access-review", "fmt": "json"},
        form_values={"ticket_id": ticket.id, "ticket": ref, "request_ids": request_id,
                     "justification": f"Caller heard silence at 00:41, see {ref}", "duration_minutes": "60",
                     "reason": "done", "days": "7", "confirm": resource.name, "require_customer_approval": "on",
                     "name": resource.name, "subject": f"eve-{tag}", "tenant": TENANT, "roles": "engineer"},
    )


@pytest.fixture
async def console(app_db_url: str, tmp_path: Path, identity_settings: IdentitySettings,
                  mint_token: MintToken) -> AsyncIterator[Console]:
    app = create_app(app_settings(tmp_path, app_db_url, identity=identity_settings))
    try:
        made = await _world(app, mint_token)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                     base_url="http://127.0.0.1") as client:
            made.client = client
            yield made
    finally:
        await close_context(app.state.ctx)


def _path(template: str, values: dict[str, str], odd: tuple[str, str] | None = None) -> str:
    """The template with its parameters filled in; `odd` = (parameter, encoded value) replaces one."""
    out = template
    for name, value in values.items():
        replacement = odd[1] if odd is not None and odd[0] == name else quote(value, safe="")
        out = out.replace("{" + name + "}", replacement)
    assert "{" not in out, f"{template}: no path value for a parameter"
    return out


def _params(template: str) -> list[str]:
    return [part.split("}")[0] for part in template.split("{")[1:]]


def _form(base: dict[str, str], csrf: str | None, odd: dict[str, str], *, repeat: Iterable[str] = ()) -> bytes:
    """An urlencoded body: the well-formed fields, `odd` ones (already encoded) in their place, `csrf` first."""
    pairs = [] if csrf is None else [f"csrf={quote(csrf, safe='')}"]
    for name, value in base.items():
        pairs.append(f"{name}={odd[name] if name in odd else quote(value, safe='')}")
    pairs += [f"{name}=1&{name}={encoded('huge')}" for name in repeat]
    return "&".join(pairs).encode("ascii")


class ReadKeys:
    """Which query keys and form fields a request read: the console reads them through Starlette's QueryParams
    and through read_form's parse_qs, both watched here, so each route is fuzzed on exactly what it reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.query: set[str] = set()
        self.form: set[str] = set()
        reads = self

        original_item, original_list = QueryParams.__getitem__, QueryParams.getlist
        original_contains = QueryParams.__contains__

        def item(params: QueryParams, key: object) -> str:
            reads.query.add(str(key))
            return original_item(params, key)

        def getlist(params: QueryParams, key: object) -> list[str]:
            reads.query.add(str(key))
            return original_list(params, key)

        def contains(params: QueryParams, key: object) -> bool:
            reads.query.add(str(key))
            return original_contains(params, key)

        class WatchedForm(dict[str, list[str]]):
            def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
                reads.form.add(key)
                return super().get(key, default)

            def __getitem__(self, key: str) -> list[str]:
                reads.form.add(key)
                return super().__getitem__(key)

            def __contains__(self, key: object) -> bool:
                reads.form.add(str(key))
                return super().__contains__(key)

        def parse_qs(*args: object, **kwargs: object) -> WatchedForm:
            return WatchedForm(urllib.parse.parse_qs(*args, **kwargs))  # type: ignore[arg-type]

        monkeypatch.setattr(QueryParams, "__getitem__", item)
        monkeypatch.setattr(QueryParams, "getlist", getlist)
        monkeypatch.setattr(QueryParams, "__contains__", contains)
        monkeypatch.setattr(console_security, "parse_qs", parse_qs)

    def clear(self) -> None:
        self.query.clear()
        self.form.clear()


async def test_no_console_route_answers_5xx_to_odd_input(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    routes = console_routes(console.app)
    assert ("GET", "/console/auditor/entries") in routes  # the enumeration found the console
    assert len(routes) >= 20
    reads = ReadKeys(monkeypatch)
    failures: list[str] = []
    sent = 0
    fuzzed_keys: set[str] = set()

    async def send(method: str, url: str, role: Role | None, body: bytes | None = None) -> None:
        nonlocal sent
        headers = {"cookie": console.cookies[role]} if console.cookies[role] else {}
        if body is not None:
            headers["content-type"] = "application/x-www-form-urlencoded"
        response = await console.client.request(method, url, headers=headers, content=body)
        sent += 1
        if response.status_code >= 500:
            shown = url if len(url) < 200 else url[:200] + "..."
            form = "" if body is None else f" form={body[:200]!r}"
            failures.append(f"{method} {shown}{form} -> {response.status_code} {response.json().get('code')}")

    for method, template in routes:
        role = role_for(template)
        path = _path(template, console.path_values)
        csrf = console.csrf[role]
        good_form = None if method == "GET" else _form(console.form_values, csrf, {})
        # What this route reads: a well-formed request with no query, and one with every known key present.
        reads.clear()
        await send(method, path, role, good_form)
        await send(method, f"{path}?" + "&".join(f"{k}=1" for k in QUERY_KEYS), role, good_form)
        query_keys, form_fields = sorted(reads.query), sorted(reads.form - {"csrf"})
        fuzzed_keys.update(query_keys, form_fields)
        # Path values: each parameter odd in turn (the others the world's own).
        for param in _params(template):
            for name in PATH_ODD:
                await send(method, _path(template, console.path_values, (param, encoded(name))), role, good_form)
        # Query parameters it reads: each odd value alone, and every key odd and repeated at once.
        for key in query_keys:
            for name in ALL_ODD:
                await send(method, f"{path}?{key}={encoded(name)}", role, good_form)
        await send(method, f"{path}?" + "&".join(f"{k}=1&{k}=&{k}={encoded('huge')}" for k in QUERY_KEYS), role,
                   good_form)
        if method != "POST":
            continue
        # Form fields it reads: one odd at a time, the others well formed, with the session's CSRF token.
        for field in form_fields:
            for name in ALL_ODD:
                await send(method, path, role, _form(console.form_values, csrf, {field: encoded(name)}))
        await send(method, path, role, _form(console.form_values, csrf, {}, repeat=FORM_FIELDS))
        await send(method, path, role, _form(console.form_values, csrf, {"justification": "x" * 200_000}))
        # The CSRF token missing, wrong, odd or repeated; a body that is not a form; no body.
        await send(method, path, role, _form(console.form_values, None, {}))
        await send(method, path, role, _form(console.form_values, "wrong", {}))
        for name in PATH_ODD:
            await send(method, path, role, f"csrf={encoded(name)}".encode())
        await send(method, path, role, f"csrf={quote(csrf, safe='')}&csrf=x".encode())
        await send(method, path, role, b"\xff\xfe\x00garbage=%%%&&==")
        await send(method, path, role, b"")

    # The watch saw what the console reads (else this would fuzz nothing but paths).
    assert {"after", "before", "limit", "actor", "from", "next"} <= fuzzed_keys
    assert {"ticket_id", "justification", "duration_minutes", "reason"} <= fuzzed_keys
    assert not failures, f"{len(failures)} of {sent} requests answered 5xx:\n" + "\n".join(failures[:40])


def test_the_odd_inputs_are_what_they_claim() -> None:
    """The list is the check's substance: NUL, control characters, non-ASCII digits, numbers beyond 64 bits and
    escapes that are not UTF-8."""
    assert "\x00" in ODD_TEXT["nul"]
    assert any(ord(c) < 0x20 for c in ODD_TEXT["control"])
    assert int(ODD_TEXT["huge"]) > 2**64
    assert ODD_TEXT["superscript_digits"].isdigit()  # str.isdigit() says yes, int() says no
    assert not ODD_TEXT["superscript_digits"].isdecimal()
    for raw in ("non_utf8", "lone_surrogate", "truncated_utf8"):
        with pytest.raises(UnicodeDecodeError):
            urllib.parse.unquote_to_bytes(ODD_RAW[raw]).decode("utf-8")
