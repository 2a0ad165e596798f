"""Round-2 probes of reading the audit trail (issue 19): `GET /audit/entries` and the console's
/console/auditor/entries page. Nobody but an active auditor (token AND record) sees an entry (request IDs,
justifications), however the request is dressed; odd filters are a 422 with a code or an empty page, never
a 500; a zoned time means the same instant whatever its offset. SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI

from app.audit.actions import Actor
from app.clock import ManualClock, SystemClock
from app.console.auth import ConsoleState
from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from app.identity.staff import service as staff_service
from app.identity.staff.schemas import StaffCreate
from app.main import create_app
from app.wiring import close_context
from tests.audit.scenario import append_and_chain, example_steps
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.relay import TEST_ADMIN_TOKEN
from tests.fixtures.saw import app_settings

SECRETS = ("req-0", "req-1", "silence at 00:41", "grant-0", "admin@contoso")


@dataclass
class Served:
    app: FastAPI
    client: httpx.AsyncClient
    mint: MintToken
    tag: str

    def who(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def token(self, name: str, roles: list[Role], tenant: str | None = None) -> str:
        return self.mint(self.who(name), roles, tenant)

    async def api(self, query: str, headers: dict[str, str]) -> httpx.Response:
        return await self.client.get(f"/audit/entries{query}", headers=headers)

    async def page(self, query: str, token: str | None) -> httpx.Response:
        headers = {}
        if token is not None:
            state: ConsoleState = self.app.state.ctx.console
            session = await state.sessions.create(self.app.state.ctx.clock.now(), token=token)
            headers = {"cookie": f"{state.session_cookie}={session.id}"}
        return await self.client.get(f"/console/auditor/entries{query}", headers=headers)


@pytest.fixture
async def served(app_db_url: str, tmp_path: Path, identity_settings: IdentitySettings,
                 mint_token: MintToken) -> AsyncIterator[Served]:
    app: FastAPI = create_app(app_settings(tmp_path, app_db_url, identity=identity_settings))
    tag = uuid4().hex[:8]
    actor = Actor.service("probe")
    clock = ManualClock(datetime(2030, 3, 4, 10, 0, tzinfo=UTC) + timedelta(minutes=int(tag[:4], 16)))
    async with app.state.ctx.session_factory() as session:
        for name, roles, active in (("audrey", [Role.AUDITOR], True), ("retired", [Role.AUDITOR], False),
                                    ("mona", [Role.MANAGER], True), ("eve", [Role.ENGINEER], True),
                                    ("adam", [Role.ADMIN], True)):
            await staff_service.create_staff(session=session, clock=SystemClock(), actor=actor, data=StaffCreate(
                subject=f"{name}-{tag}", display_name=name, roles=roles))
            if not active:
                await staff_service.set_active(session=session, clock=SystemClock(), actor=actor,
                                               subject=f"{name}-{tag}", active=False,
                                               grant_ender=app.state.ctx.grant_ender)
        for n in range(2):
            await append_and_chain(session, clock, example_steps(n, clock.now()))
        await session.commit()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://voicelog.test") as client:
        yield Served(app, client, mint_token, tag)
    await close_context(app.state.ctx)


FORGED = {"x-voicelog-role": "auditor", "x-forwarded-user": "audrey", "x-remote-user": "audrey",
          "x-ms-client-principal-name": "audrey", "x-ssl-client-verify": "SUCCESS", "x-forwarded-for": "127.0.0.1"}


def _no_secret(response: httpx.Response) -> None:
    for secret in SECRETS:
        assert secret not in response.text, (response.status_code, response.text[:300])


async def test_only_an_active_auditor_sees_entries_however_the_request_is_dressed(served: Served) -> None:
    own = await served.api("?limit=1000", bearer(served.token("audrey", [Role.AUDITOR])))
    assert own.status_code == 200, own.text
    assert all(secret in own.text for secret in SECRETS[:3])  # the probe's secrets are there to leak

    audrey = served.who("audrey")
    callers: dict[str, dict[str, str]] = {
        "forged headers, no token": FORGED,
        "admin token": bearer(TEST_ADMIN_TOKEN),
        "basic auth": {"authorization": "Basic YXVkcmV5OmF1ZGl0b3I="},
        "manager": bearer(served.token("mona", [Role.MANAGER])),
        "manager claiming auditor": bearer(served.token("mona", [Role.AUDITOR])),
        "staff admin": bearer(served.token("adam", [Role.ADMIN, Role.AUDITOR])),
        "engineer claiming auditor": bearer(served.token("eve", [Role.AUDITOR])),
        "deactivated auditor": bearer(served.token("retired", [Role.AUDITOR])),
        "auditor record, engineer token": bearer(served.token("audrey", [Role.ENGINEER])),
        "customer admin named like the auditor": bearer(served.mint(audrey, [Role.CUSTOMER_ADMIN], "contoso")),
        "ticketing": bearer(served.mint("svc-ticketing", [Role.TICKETING])),
        "auditor's subject with a trailing space": bearer(served.mint(audrey + " ", [Role.AUDITOR])),
        "auditor's subject upper-cased": bearer(served.mint(audrey.upper(), [Role.AUDITOR])),
        "auditor token plus forged headers of another": {**FORGED, **bearer(served.token("eve", [Role.AUDITOR]))},
    }
    for case, headers in callers.items():
        response = await served.api("?limit=1000", headers)
        assert response.status_code in (401, 403), (case, response.status_code, response.text[:200])
        assert "entries" not in response.json(), case
        _no_secret(response)

    sessions: dict[str, str | None] = {
        "not signed in": None,
        "manager": served.token("mona", [Role.MANAGER]),
        "engineer claiming auditor": served.token("eve", [Role.AUDITOR]),
        "deactivated auditor": served.token("retired", [Role.AUDITOR]),
        "customer admin named like the auditor": served.mint(audrey, [Role.CUSTOMER_ADMIN], "contoso"),
        "auditor record, manager token": served.token("audrey", [Role.MANAGER]),
    }
    for case, token in sessions.items():
        response = await served.page("?limit=100", token)
        assert response.status_code != 200, case
        assert response.status_code < 500, (case, response.status_code)
        _no_secret(response)
    assert (await served.page("?limit=100", served.token("audrey", [Role.AUDITOR]))).status_code == 200


BAD = [  # (raw query, code)
    ("after=9223372036854775808", "invalid_input"),
    ("after=18446744073709551616", "invalid_input"),
    ("after=-1", "invalid_input"),
    ("after=0x10", "invalid_input"),
    ("after=%C2%B2", "invalid_input"),  # a superscript two: str.isdigit() says yes, int() says no
    ("before=0", "invalid_input"),
    ("before=9223372036854775808", "invalid_input"),
    ("limit=-5", "invalid_input"),
    ("limit=100000000000000000000000000000", "invalid_input"),
    ("limit=1.5", "invalid_input"),
    ("since=0001-01-01T00:00:00%2B14:00", "invalid_audit_filter"),  # no UTC time
    ("since=2030-03-04T10:00:00Z&until=2030-03-04T10:00:00Z", "invalid_audit_filter"),
    ("since=2030-03-04T10:00:00Z&until=2030-03-04T11:00:00%2B05:00", "invalid_audit_filter"),  # 06:00Z
    ("since=2030-03-04T10:00:00%2B24:00", "invalid_input"),
    ("since=2030-03-04T10:00:00Z%00", "invalid_input"),
    ("action=access.approved%00", "invalid_input"),
    ("action=access.approved'%20OR%20'1'%3D'1", "invalid_input"),
    ("actor=%E2%80%AE", "invalid_audit_filter"),  # right-to-left override: not printable
    ("actor=staff:%00", "invalid_audit_filter"),
]
EMPTY = [  # accepted, nothing matches
    "actor=staff:'%20OR%20'1'%3D'1",
    "actor=%25",
    "actor=_",
    "actor=staff:%25",
    "actor=%C3%A5lice",
    "actor=staff:%F0%9F%98%80",
    "actor=staff:",
    "after=1000000",
    "after=10&before=5",
    "before=1",
    "until=0001-01-01T00:00:00Z",
    "since=9999-12-31T00:00:00Z",
    "since=2030-03-04T10:00:00-14:00&until=2030-03-04T10:00:01-14:00",
]


async def test_odd_filters_are_a_422_with_a_code_or_an_empty_page_never_a_500(served: Served) -> None:
    auditor = bearer(served.token("audrey", [Role.AUDITOR]))
    wrong: list[str] = []
    for query, code in BAD:
        response = await served.api(f"?{query}", auditor)
        if response.status_code != 422 or response.json().get("code") != code:
            wrong.append(f"{query}: {response.status_code} {response.text[:160]}")
    for query in EMPTY:
        response = await served.api(f"?{query}", auditor)
        if response.status_code != 200 or response.json()["entries"] != []:
            wrong.append(f"{query}: {response.status_code} {response.text[:160]}")
    for query in ("actor=%ED%A0%80", "actor=%FF", "since=%FF", "limit=1&limit=5000", "action=&actor="):
        response = await served.api(f"?{query}", auditor)
        if response.status_code >= 500 or (response.status_code == 200 and len(response.json()["entries"]) > 1000):
            wrong.append(f"{query}: {response.status_code} {response.text[:160]}")
    assert not wrong, "\n".join(wrong)


async def test_a_zoned_time_is_the_same_instant_whatever_its_offset(served: Served) -> None:
    auditor = bearer(served.token("audrey", [Role.AUDITOR]))
    everything = (await served.client.get("/audit/entries", params={"limit": 1000}, headers=auditor)).json()["entries"]
    probe = [e for e in everything if e["actor"]["id"] in ("alice", "bob", "ticketing", "admin@contoso")]
    since = datetime.fromisoformat(probe[3]["recorded_at"].replace("Z", "+00:00"))
    until = datetime.fromisoformat(probe[9]["recorded_at"].replace("Z", "+00:00"))
    windows = []
    for offset in (timedelta(0), timedelta(hours=5, minutes=30), timedelta(hours=-11)):
        zone = timezone(offset)
        params: dict[str, Any] = {"since": since.astimezone(zone).isoformat(),
                                  "until": until.astimezone(zone).isoformat(), "limit": 1000}
        response = await served.client.get("/audit/entries", params=params, headers=auditor)
        assert response.status_code == 200, response.text
        windows.append([e["seq"] for e in response.json()["entries"]])
    assert windows[0] == windows[1] == windows[2]
    assert windows[0][0] == probe[3]["seq"]
    assert probe[9]["seq"] not in windows[0]


CONSOLE_ODD = [
    "after=%C2%B2",  # superscript two: str.isdigit() is True, int() raises
    "before=%C2%B3",
    "limit=%C2%B9",
    "after=99999999999999999999",
    "after=-1",
    "limit=0",
    "since=0001-01-01T00:00:00%2B14:00",
    "until=9999-12-31T23:59:59-05:00",
    "since=yesterday",
    "since=2030-03-04T10:00&until=2030-03-04T09:00",
    "actor=staff:al%00ice",
    "actor=%E2%80%AE",
    "action=access.peeked",
    "action=access.approved%00",
    "actor=%ED%A0%80",
    "actor=%3Cscript%3Ealert(1)%3C/script%3E",
]


async def test_the_console_page_explains_odd_filters_and_never_fails(served: Served) -> None:
    token = served.token("audrey", [Role.AUDITOR])
    wrong: list[str] = []
    for query in CONSOLE_ODD:
        response = await served.page(f"?{query}", token)
        if response.status_code not in (200, 422):
            wrong.append(f"{query}: {response.status_code} {response.text[:120]}")
        elif "<script>alert(1)" in response.text:
            wrong.append(f"{query}: the actor is echoed unescaped")
    assert not wrong, "\n".join(wrong)
