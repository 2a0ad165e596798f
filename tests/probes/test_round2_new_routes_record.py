"""Round-2 probe of C5 ("every role, on every route, is token AND record") over the routes added since the
last review: the audit entries (API and console page), the session-clock WAV, turns and the debug bundle
(API and console). tests/identity/test_every_route_checks_record.py discovers routes but its table does not
list these yet, so its proof skips them; this probe runs the same four cases on each of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI

from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from app.main import create_app
from app.wiring import close_context
from tests.fixtures.identity import MintToken
from tests.fixtures.saw import app_settings
from tests.identity.test_every_route_checks_record import (
    AUDITOR,
    CONSOLE_READ,
    READ,
    Probe,
    StaffRole,
    console,
    role_case_failure,
    served_routes,
)

NEW_ROUTES: dict[tuple[str, str], StaffRole] = {
    ("GET", "/audit/entries"): AUDITOR,
    ("GET", "/console/auditor/entries"): console(AUDITOR),
    ("GET", "/recordings/{request_id}/audio/session.wav"): READ,
    ("GET", "/recordings/{request_id}/turns"): READ,
    ("GET", "/recordings/{request_id}/bundle"): READ,
    ("GET", "/console/recordings/{request_id}/bundle"): CONSOLE_READ,
}


@pytest.fixture
async def probe(app_db_url: str, tmp_path: Path, identity_settings: IdentitySettings,
                mint_token: MintToken) -> AsyncIterator[Probe]:
    app: FastAPI = create_app(app_settings(tmp_path, app_db_url, identity=identity_settings))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://voicelog.test") as client:
        yield Probe(app, client, mint_token, uuid4().hex[:8])
    await close_context(app.state.ctx)


async def test_the_new_routes_check_token_and_record(probe: Probe) -> None:
    assert NEW_ROUTES.keys() <= served_routes(probe.app)
    for role in (Role.ENGINEER, Role.AUDITOR):
        others = {Role.ENGINEER, Role.MANAGER, Role.AUDITOR, Role.ADMIN} - {role}
        await probe.add_staff(f"lacks-{role}", others)
        await probe.add_staff(f"off-{role}", {role}, active=False)
        await probe.add_staff(f"ok-{role}", {role})

    wrong: list[str] = []
    for (method, path), need in NEW_ROUTES.items():
        (role,) = need.roles
        cases = {"no record": (f"none-{role}", True), "deactivated": (f"off-{role}", True),
                 "record without it": (f"lacks-{role}", True), "active record": (f"ok-{role}", False)}
        for case, (name, must_refuse) in cases.items():
            failure = await role_case_failure(probe, method, path, need, role, case, name, must_refuse)
            if failure is not None:
                wrong.append(failure)
    assert not wrong, "\n".join(wrong)
