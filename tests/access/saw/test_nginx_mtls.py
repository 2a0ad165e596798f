"""Real nginx with ops/nginx/saw.conf in front of a real voicelog: the mutual-TLS chain end to end.

A SAW certificate from the SAW CA gets through and names its device; one on the CRL, one from another CA
and none at all are stopped by nginx; headers a client forges are overwritten by nginx, and ignored when
sent to voicelog directly from an address that is not the proxy.
"""

from __future__ import annotations

import json
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from app.access.saw.schemas import SawRegister
from app.access.saw.service import register_saw
from app.access.saw.settings import SawSettings
from app.audit.actions import Actor
from app.clock import SystemClock
from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from app.identity.staff.schemas import StaffCreate
from app.identity.staff.service import create_staff
from app.main import create_app
from app.resources.schemas import ResourceCreate
from app.resources.service import add_resource
from app.wiring import close_context
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.relay import STANDIN_API_KEY, StandinHandle
from tests.fixtures.saw import (
    Issued,
    NginxHandle,
    SawPki,
    app_settings,
    include_staff_and_saw_routes,
    run_saw_nginx,
    serve_app,
)

SETUP = Actor.system("test-setup")


@dataclass
class Gateway:
    nginx: NginxHandle
    app_port: int
    pki: SawPki
    saws: dict[str, str]  # which certificate -> its SAW id (all registered to alice)
    alice: dict[str, str]
    bob: dict[str, str]

    def client(self, cert: Issued | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.nginx.url, verify=self.pki.client_context(cert), timeout=10)

    def direct(self, source: str) -> httpx.AsyncClient:
        """Straight to voicelog's port, bypassing nginx, from a chosen loopback source address."""
        transport = httpx.AsyncHTTPTransport(local_address=source)
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.app_port}", transport=transport, timeout=10)


@pytest.fixture
async def gateway(tmp_path: Path, migrated_databases: dict[str, str], identity_settings: IdentitySettings,
                  mint_token: MintToken, saw_pki: SawPki, standin: StandinHandle) -> AsyncIterator[Gateway]:
    database = tmp_path / "app.db"
    shutil.copyfile(migrated_databases["sqlite"].removeprefix("sqlite+aiosqlite:///"), database)
    proxy = SawSettings.model_validate({"trusted_proxies": ["127.0.0.1/32"]})  # nginx connects from here
    settings = app_settings(tmp_path, f"sqlite+aiosqlite:///{database}", identity=identity_settings, saw=proxy)
    app = include_staff_and_saw_routes(create_app(settings))
    clock = SystemClock()
    saws: dict[str, str] = {}
    async with app.state.ctx.session_factory() as session:
        for person in ("alice", "bob"):
            await create_staff(session=session, clock=clock, actor=SETUP, data=StaffCreate(
                subject=person, display_name=person, roles=[Role.ENGINEER]))
        # Every certificate is registered to alice: whatever stops the revoked and foreign ones is nginx.
        for name, cert in (("valid", saw_pki.valid), ("revoked", saw_pki.revoked), ("foreign", saw_pki.foreign)):
            saw = await register_saw(session=session, clock=clock, actor=SETUP, data=SawRegister(
                owner="alice", label=f"SAW-{name}", cert_sha256=cert.sha256))
            saws[name] = saw.id
        await add_resource(session=session, clock=clock, regions=settings.region_names, data=ResourceCreate(
            name="acme", region="eastus", upstream_endpoint=standin.url, owner_tenant="t1"))
        await session.commit()
    async with (serve_app(app, settings) as port,
                run_saw_nginx(tmp_path / "nginx", saw_pki, upstream_port=port) as nginx):
        yield Gateway(nginx, port, saw_pki, saws, alice=bearer(mint_token("alice", [Role.ENGINEER])),
                      bob=bearer(mint_token("bob", [Role.ENGINEER])))
    await close_context(app.state.ctx)


async def test_a_valid_saw_certificate_reaches_voicelog_and_names_its_device(gateway: Gateway) -> None:
    async with gateway.client(gateway.pki.valid) as client:
        response = await client.get("/access/saw/me", headers=gateway.alice)

    assert response.status_code == 200, response.text
    assert response.json()["id"] == gateway.saws["valid"]
    assert response.json()["cert_sha256"] == gateway.pki.valid.sha256


@pytest.mark.parametrize("which", ["revoked", "foreign"])
async def test_a_revoked_or_foreign_certificate_is_stopped_by_nginx(gateway: Gateway, which: str) -> None:
    cert = gateway.pki.revoked if which == "revoked" else gateway.pki.foreign
    async with gateway.client(cert) as client:
        response = await client.get("/access/saw/me", headers=gateway.alice)

    assert response.status_code == 400
    assert "The SSL certificate error" in response.text
    assert "problem+json" not in response.headers.get("content-type", "")  # nginx answered, not voicelog
    assert "client SSL certificate verify error" in gateway.nginx.error_log()
    if which == "revoked":
        assert "certificate revoked" in gateway.nginx.error_log()


async def test_no_client_certificate_is_stopped_by_nginx(gateway: Gateway) -> None:
    async with gateway.client(None) as client:
        response = await client.get("/access/saw/me", headers=gateway.alice)

    assert response.status_code == 400
    assert "No required SSL certificate was sent" in response.text


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_1_2_works_and_older_versions_are_refused_by_the_server(gateway: Gateway) -> None:
    tls12 = gateway.pki.client_context(gateway.pki.valid)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    async with httpx.AsyncClient(base_url=gateway.nginx.url, verify=tls12) as client:
        assert (await client.get("/access/saw/me", headers=gateway.alice)).status_code == 200

    tls11 = gateway.pki.client_context(gateway.pki.valid)
    tls11.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that this client really offers TLS 1.1
    tls11.minimum_version = tls11.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(httpx.ConnectError, match="TLSV1_ALERT_PROTOCOL_VERSION"):  # the server's alert
        async with httpx.AsyncClient(base_url=gateway.nginx.url, verify=tls11) as client:
            await client.get("/access/saw/me", headers=gateway.alice)


async def test_headers_a_client_sends_through_nginx_are_overwritten(gateway: Gateway) -> None:
    """Bob, on alice's SAW, claims in forged headers to be on alice's device too: nginx replaces them with
    the certificate he actually presented, so voicelog sees alice's device and refuses bob."""
    forged = {**gateway.pki.valid.headers, "x-ssl-client-fingerprint": gateway.pki.valid.sha256,
              "x-forwarded-for": "127.0.0.1"}
    async with gateway.client(gateway.pki.valid) as client:
        bobs = await client.get("/access/saw/me", headers={**gateway.bob, **forged})
        # A forged claim to a revoked device is replaced by the certificate really presented.
        alices = await client.get("/access/saw/me", headers={**gateway.alice, **gateway.pki.revoked.headers})

    assert (bobs.status_code, bobs.json()["code"]) == (403, "saw_required")
    assert alices.json()["id"] == gateway.saws["valid"]


async def test_forged_headers_sent_directly_from_a_non_proxy_address_are_ignored(gateway: Gateway) -> None:
    async with gateway.direct("127.0.0.2") as client:
        response = await client.get("/access/saw/me", headers={**gateway.alice, **gateway.pki.valid.headers})
        spoofed = await client.get("/access/saw/me", headers={**gateway.alice, **gateway.pki.valid.headers,
                                                              "x-forwarded-for": "127.0.0.1"})

    assert (response.status_code, response.json()["code"]) == (403, "saw_required")
    assert (spoofed.status_code, spoofed.json()["code"]) == (403, "saw_required")


async def test_relay_websocket_sessions_pass_through_nginx(gateway: Gateway) -> None:
    url = f"wss://127.0.0.1:{gateway.nginx.port}/resources/acme/voice-live/realtime?x-standin-mode=echo"
    context = gateway.pki.client_context(gateway.pki.valid)
    async with connect(url, ssl=context, additional_headers={"api-key": STANDIN_API_KEY}) as ws:
        assert ws.response is not None
        assert ws.response.headers["x-ms-request-id"]
        await ws.send(json.dumps({"type": "x.test", "seq": 1}))
        echoed = await ws.recv()

    assert json.loads(echoed) == {"type": "x.test", "seq": 1}
