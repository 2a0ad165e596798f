"""The dev issuer: its key on disk, its routes, and that its tokens go through the production path."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.clock import ManualClock
from app.errors import install_error_handlers
from app.identity.dev_issuer import KEY_FILE, DevIssuer, DevIssuerKeyError, load_or_create_signing_key
from app.identity.errors import TokenExpired
from app.identity.jwks import HttpJwksSource
from app.identity.principal import Role
from app.identity.routes import include_dev_routes, load_dev_issuer
from app.identity.settings import IdentitySettings
from app.identity.tokens import OidcTokenVerifier, build_token_verifier
from tests.fixtures.identity import IDENTITY_EPOCH


def test_signing_key_is_generated_once_into_a_private_file(tmp_path: Path) -> None:
    key_dir = tmp_path / "dev-issuer"

    first = load_or_create_signing_key(key_dir)
    second = load_or_create_signing_key(key_dir)

    path = key_dir / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert first.private_numbers() == second.private_numbers()
    assert [p.name for p in key_dir.iterdir()] == [KEY_FILE]  # no temp file left behind


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_signing_key(tmp_path)
    os.chmod(tmp_path / KEY_FILE, 0o644)

    with pytest.raises(DevIssuerKeyError, match="chmod 600"):
        load_or_create_signing_key(tmp_path)


def test_a_key_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(tmp_path / KEY_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)

    with pytest.raises(DevIssuerKeyError, match="P-256"):
        load_or_create_signing_key(tmp_path)


def test_kid_is_stable_across_loads(tmp_path: Path) -> None:
    a = DevIssuer.load_or_create(tmp_path, issuer="http://127.0.0.1:8000/dev/oidc", audience="voicelog-dev")
    b = DevIssuer.load_or_create(tmp_path, issuer="http://127.0.0.1:8000/dev/oidc", audience="voicelog-dev")

    assert a.kid == b.kid
    assert a.jwks() == b.jwks()
    assert set(a.jwks()["keys"][0]) == {"kty", "crv", "x", "y", "kid", "use", "alg"}  # public members only


def test_mint_refuses_empty_subject_and_unbounded_lifetimes(dev_issuer: DevIssuer) -> None:
    with pytest.raises(ValueError, match="subject"):
        dev_issuer.mint("", [Role.ENGINEER])
    with pytest.raises(ValueError, match="ttl"):
        dev_issuer.mint("alice", [Role.ENGINEER], ttl=timedelta(days=2))
    with pytest.raises(ValueError, match="ttl"):
        dev_issuer.mint("alice", [Role.ENGINEER], ttl=timedelta(seconds=-1))


def test_dev_verifier_uses_the_production_verifier_and_jwks_path(token_verifier: object) -> None:
    assert isinstance(token_verifier, OidcTokenVerifier)
    assert isinstance(token_verifier.keys.source, HttpJwksSource)
    assert token_verifier.keys.source.discovery_url == "http://127.0.0.1:8000/dev/oidc/.well-known/openid-configuration"


async def test_dev_tokens_expire_like_any_other(tmp_path: Path) -> None:
    clock = ManualClock(IDENTITY_EPOCH)
    identity = IdentitySettings(dev_issuer_enabled=True, leeway_s=10)
    verifier = build_token_verifier(identity, load_dev_issuer(identity, tmp_path, clock=clock), clock=clock)
    assert verifier is not None
    issuer = DevIssuer.load_or_create(identity.dev_key_dir(tmp_path), issuer=identity.dev_issuer_url,
                                      audience=identity.dev_audience, clock=clock)
    token = issuer.mint("alice", [Role.ENGINEER], ttl=timedelta(minutes=5))
    assert (await verifier.verify(token)).subject == "alice"

    clock.advance(timedelta(minutes=5, seconds=11))

    with pytest.raises(TokenExpired):
        await verifier.verify(token)


def _app_with_dev_routes(identity: IdentitySettings, data_dir: Path) -> tuple[FastAPI, bool]:
    app = FastAPI()
    install_error_handlers(app)
    included = include_dev_routes(app, load_dev_issuer(identity, data_dir))
    return app, included


async def test_dev_routes_serve_discovery_and_jwks_when_enabled(
    identity_settings: IdentitySettings, dev_issuer: DevIssuer, tmp_path: Path
) -> None:
    app, included = _app_with_dev_routes(identity_settings, tmp_path)
    assert included

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000") as c:
        discovery = (await c.get("/dev/oidc/.well-known/openid-configuration")).json()
        jwks = (await c.get("/dev/oidc/jwks.json")).json()

    assert discovery["issuer"] == "http://127.0.0.1:8000/dev/oidc"
    assert discovery["jwks_uri"] == "http://127.0.0.1:8000/dev/oidc/jwks.json"
    assert discovery["id_token_signing_alg_values_supported"] == ["ES256"]
    assert jwks == dev_issuer.jwks()
    assert "d" not in jwks["keys"][0]


async def test_dev_routes_are_absent_when_disabled(tmp_path: Path) -> None:
    app, included = _app_with_dev_routes(IdentitySettings(), tmp_path)
    assert not included

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        for path in ("/dev/oidc/.well-known/openid-configuration", "/dev/oidc/jwks.json"):
            assert (await c.get(path)).status_code == 404
        assert (await c.post("/dev/oidc/token", json={"subject": "alice"})).status_code == 404
    assert not (tmp_path / "dev-issuer").exists()  # no key is made while the dev issuer is off


async def test_token_endpoint_mints_for_loopback_callers(
    identity_settings: IdentitySettings, token_verifier: object, tmp_path: Path
) -> None:
    app, _ = _app_with_dev_routes(identity_settings, tmp_path)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))

    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        response = await c.post("/dev/oidc/token", json={"subject": "erin", "roles": ["customer_admin"],
                                                          "tenant": "fabrikam", "ttl_s": 600})

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    assert isinstance(token_verifier, OidcTokenVerifier)
    principal = await token_verifier.verify(body["access_token"])
    assert principal.subject == "erin"
    assert principal.roles == frozenset({Role.CUSTOMER_ADMIN})
    assert principal.tenant == "fabrikam"


async def test_token_endpoint_refuses_remote_callers_and_bad_requests(
    identity_settings: IdentitySettings, tmp_path: Path
) -> None:
    app, _ = _app_with_dev_routes(identity_settings, tmp_path)
    remote = httpx.ASGITransport(app=app, client=("192.0.2.7", 50000))
    local = httpx.ASGITransport(app=app, client=("::1", 50000))

    async with httpx.AsyncClient(transport=remote, base_url="http://127.0.0.1") as c:
        response = await c.post("/dev/oidc/token", json={"subject": "mallory", "roles": ["admin"]})
    assert response.status_code == 403
    assert response.json()["code"] == "dev_token_loopback_only"
    assert "access_token" not in response.text

    async with httpx.AsyncClient(transport=local, base_url="http://[::1]") as c:
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):  # a local proxy relaying someone else
            proxied = await c.post("/dev/oidc/token", json={"subject": "x"}, headers={header: "192.0.2.7"})
            assert proxied.status_code == 403
        assert (await c.post("/dev/oidc/token", json={"subject": "x", "roles": ["root"]})).status_code == 422
        assert (await c.post("/dev/oidc/token", json={"subject": "x", "ttl_s": 10**6})).status_code == 422
        assert (await c.post("/dev/oidc/token", json={"subject": ""})).status_code == 422
        assert (await c.post("/dev/oidc/token", json={"subject": "x"})).status_code == 200
