"""Round-2 probe of the console's new read routes (issue 18): the playback page, the session-clock WAV and
the debug bundle under /console/recordings/{id} answer an unknown ID, a known one without a grant and a
granted one off the SAW exactly alike (C4), and each allowed bundle download is one `recording.read`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import pytest

from app.audit.service import integrate_pending
from app.console.auth import ConsoleState
from app.identity.settings import IdentitySettings
from tests.access.test_playback import Env, approve, ask, make_env
from tests.fixtures.audit import audit_rows
from tests.fixtures.identity import MintToken
from tests.fixtures.relay import StandinHandle
from tests.fixtures.saw import SawPki

ROUTES = ("", "/audio/session.wav", "/bundle")


@pytest.fixture
async def env(tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
              saw_pki: SawPki) -> AsyncIterator[Env]:
    async with make_env(tmp_path, standin, identity_settings, mint_token, saw_pki) as made:
        yield made


async def test_console_reads_refuse_alike_and_audit_each_download(env: Env) -> None:
    ctx = env.stack.relay.app.state.ctx
    state: ConsoleState = ctx.console
    token = next(v for k, v in env.people.alice.items() if k.lower() == "authorization").removeprefix("Bearer ")
    saw_headers = {k: v for k, v in env.people.alice.items() if k.lower() != "authorization"}

    async def cookie() -> dict[str, str]:
        session = await state.sessions.create(ctx.clock.now(), token=token)
        return {"cookie": f"{state.session_cookie}={session.id}"}

    async def answer(route: str, request_id: str, headers: dict[str, str]) -> tuple[int, str]:
        response = await env.stack.api("GET", f"/console/recordings/{request_id}{route}", headers)
        text = response.text.replace(request_id, "<id>")
        return response.status_code, text

    on_saw = {**await cookie(), **saw_headers}
    for route in ROUTES:
        unknown = await answer(route, uuid4().hex, on_saw)
        known = await answer(route, env.session.request_id, on_saw)
        assert known == unknown, route
        assert known[0] == 404, (route, known[0])
    assert await approve(env, await ask(env)) == 200
    off_saw = await cookie()
    for route in ROUTES:
        unknown = await answer(route, uuid4().hex, off_saw)
        known = await answer(route, env.session.request_id, off_saw)
        assert known == unknown, ("off the SAW", route)
        assert known[0] == 404, (route, known[0])

    downloaded = await env.stack.api("GET", f"/console/recordings/{env.session.request_id}/bundle", on_saw)
    assert downloaded.status_code == 200, downloaded.text[:200]
    assert downloaded.headers["content-type"] == "application/zip"
    async with ctx.session_factory() as session:
        await integrate_pending(session, wait=True)
        await session.commit()
        reads = [json.loads(r[0]) for r in await audit_rows(session, "detail", action="recording.read")]
    assert [r["part"] for r in reads] == ["bundle"]
