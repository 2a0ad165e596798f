"""Round-2 probe of the dev issuer's loopback gate against DNS rebinding (issue 19's local SAW work).

The dev issuer mints any token for "loopback callers only": a loopback peer with no proxy headers. A web page
the developer visits can be such a caller: its name (evil.example) re-resolves to 127.0.0.1 and the browser
then talks to voicelog as a same-origin page, from the loopback address, with `Host: evil.example:8000`. Only
the Host tells it apart, so a mint or a sign-in for a Host that is not this machine's must be refused; this
machine's own names still work (the probe shows the gate is otherwise open).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.identity.settings import IdentitySettings
from app.main import create_app
from app.wiring import close_context
from tests.fixtures.saw import app_settings

MINT = {"subject": "mallory", "roles": ["customer_admin"], "tenant": "demo-tenant"}


@pytest.fixture
async def app(tmp_path: Path, identity_settings: IdentitySettings) -> AsyncIterator[FastAPI]:
    made: FastAPI = create_app(app_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'app.db'}",
                                            identity=identity_settings))
    yield made
    await close_context(made.state.ctx)


async def _post_token(app: FastAPI, host: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50123))  # the browser on this machine
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
        return await client.post("/dev/oidc/token", json=MINT)


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000"])
async def test_the_dev_issuer_mints_for_this_machine(app: FastAPI, host: str) -> None:
    response = await _post_token(app, host)
    assert response.status_code == 200, response.text
    assert response.json()["access_token"]


@pytest.mark.parametrize("host", ["evil.example:8000", "evil.example", "127.0.0.1.nip.io:8000"])
async def test_a_rebound_name_on_the_loopback_address_gets_no_token(app: FastAPI, host: str) -> None:
    response = await _post_token(app, host)
    assert response.status_code in (400, 403, 421), (response.status_code, response.text[:200])
    assert "access_token" not in response.text
