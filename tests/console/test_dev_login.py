"""The dev authorization endpoint: PKCE is checked, codes are single-use, redirects stay in the console."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.access.saw.settings import SawSettings
from app.clock import SystemClock
from app.console.dev_login import build_dev_login_router, s256
from app.identity.routes import load_dev_issuer
from app.identity.settings import IdentitySettings

VERIFIER = "v" * 64
CALLBACK = "http://127.0.0.1/console/callback"


@pytest.fixture
def client(identity_settings: IdentitySettings, tmp_path: Path) -> httpx.AsyncClient:
    issuer = load_dev_issuer(identity_settings, tmp_path)
    assert issuer is not None
    app = FastAPI()
    app.include_router(build_dev_login_router(issuer, SystemClock(), SawSettings()))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


async def code_for(client: httpx.AsyncClient, redirect_uri: str = CALLBACK) -> httpx.Response:
    form = await client.get("/dev/oidc/authorize", params={
        "response_type": "code", "client_id": "voicelog-console", "redirect_uri": redirect_uri,
        "state": "s" * 32, "code_challenge": s256(VERIFIER), "code_challenge_method": "S256", "nonce": "n"})
    if form.status_code != 200:
        return form
    transaction = re.search(r'name="transaction" value="([^"]+)"', form.text)
    assert transaction is not None
    return await client.post("/dev/oidc/authorize", data={
        "transaction": transaction.group(1), "subject": "alice", "roles": ["engineer"]})


def token_form(code: str, verifier: str = VERIFIER) -> dict[str, str]:
    return {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
            "client_id": "voicelog-console", "code_verifier": verifier}


async def test_code_is_exchanged_once_and_only_with_the_right_verifier(client: httpx.AsyncClient) -> None:
    redirect = await code_for(client)
    assert redirect.status_code == 303
    code = httpx.URL(redirect.headers["location"]).params["code"]
    wrong = await client.post("/dev/oidc/oauth2/token", data=token_form(code, "w" * 64))
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    again = await code_for(client)
    code = httpx.URL(again.headers["location"]).params["code"]
    good = await client.post("/dev/oidc/oauth2/token", data=token_form(code))
    assert good.status_code == 200
    assert good.json()["token_type"] == "Bearer"
    replay = await client.post("/dev/oidc/oauth2/token", data=token_form(code))
    assert replay.status_code == 400


async def test_redirects_only_back_to_this_console(client: httpx.AsyncClient) -> None:
    refused = await code_for(client, "http://evil.example/console/callback")
    assert refused.status_code == 400
    assert "redirect_uri" in refused.text


async def test_sign_in_form_without_its_transaction_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/dev/oidc/authorize", data={"transaction": "forged", "subject": "mallory",
                                                              "roles": ["manager"]})
    assert response.status_code == 403
