"""A voicelog app with the console mounted, served on a loopback port, and a Chromium to drive it.

The app's context carries its audit runtime (`ctx.audit`), so the auditor pages can verify and sign.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from app import migrate
from app.access.saw.settings import SawSettings
from app.audit.service import integrate_pending
from app.capture.models import Recording
from app.clock import SystemClock
from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from app.main import create_app
from app.resources.schemas import ResourceCreate
from app.resources.service import add_resource
from app.storage.settings import StorageSettings
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.recording import FAST_CAPTURE
from tests.fixtures.relay import TEST_ADMIN_TOKEN, RelayHandle, StandinHandle, relay_settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


@dataclass
class ConsoleStack:
    app: Any
    port: int
    resource: str
    tenant: str
    ticket_id: str
    ticket_ref: str
    tag: str
    ticketing: dict[str, str]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{self.http}/resources/{self.resource}"

    async def api(self, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.http) as client:
            return await client.request(method, path, headers=headers, **kwargs)

    async def recording(self, request_id: str, timeout: float = 15) -> Recording:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            async with self.app.state.ctx.session_factory() as session:
                row = await session.get(Recording, request_id)
            if row is not None and row.state != "recording":
                return row
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"recording {request_id} not settled")
            await asyncio.sleep(0.05)

    async def reload_consents(self) -> None:
        await self.app.state.ctx.consents.reload(self.app.state.ctx.session_factory)

    async def chain_audit(self) -> None:
        """What the audit ChainKeeper does every 0.2 s once wired: chain the queued entries."""
        async with self.app.state.ctx.session_factory() as session:
            await integrate_pending(session, wait=True)
            await session.commit()


@contextlib.asynccontextmanager
async def console_stack(tmp_path: Path, standin: StandinHandle, identity: IdentitySettings,
                        mint_token: MintToken, database_url: str | None = None) -> AsyncIterator[ConsoleStack]:
    """The app on `database_url` (a fresh SQLite file when None; names are unique per stack, so a shared
    PostgreSQL database serves too)."""
    from app.cli import build_server

    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'console.db'}"
    settings = relay_settings(tmp_path, url, identity=identity,
                              consent_refresh_s=0.2, capture=FAST_CAPTURE,
                              storage=StorageSettings(create_containers=True, timeout_s=2.0),
                              saw=SawSettings.model_validate({"trusted_proxies": ["127.0.0.1/32"]}))
    await asyncio.to_thread(migrate.upgrade, settings.resolved_database_url)
    app = create_app(settings)
    server = build_server(settings, "127.0.0.1", 0, app=app)
    server.config.loop = "asyncio"
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    tag = uuid4().hex[:8]
    resource, tenant, ref = f"acme-{tag}", f"tenant-{tag}", f"INC-{tag}"
    try:
        async with app.state.ctx.session_factory() as session:
            await add_resource(session=session, clock=SystemClock(), regions=settings.region_names,
                               data=ResourceCreate(name=resource, region="westeurope", upstream_endpoint=standin.url,
                                                   owner_tenant=tenant))
            await session.commit()
        ticketing = bearer(mint_token("svc-ticketing", [Role.TICKETING]))
        stack = ConsoleStack(app, port, resource, tenant, "", ref, tag, ticketing)
        ticket = await stack.api("POST", "/tickets", ticketing, json={"resource": resource, "external_ref": ref})
        assert ticket.status_code == 201, ticket.text
        stack.ticket_id = ticket.json()["id"]
        yield stack
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless. Missing Chromium fails the test: the console is tested in a browser or not
    at all."""
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        pytest.fail(f"{CHROMIUM} is missing: run ops/dev/install-test-deps.sh (Debian package `chromium`)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def sign_in(browser: Browser, stack: ConsoleStack | RelayHandle, subject: str, roles: list[str], *,
                  tenant: str | None = None, headers: dict[str, str] | None = None,
                  width: int = 1280) -> tuple[BrowserContext, Page]:
    """A fresh browser profile signed in through the console's OIDC flow and the dev issuer's form."""
    context = await browser.new_context(base_url=stack.http, viewport={"width": width, "height": 900},
                                        extra_http_headers=headers or {})
    page = await context.new_page()
    await page.goto("/console")
    await page.get_by_role("link", name="Sign in").click()
    await page.wait_for_url("**/dev/oidc/authorize?**")
    await page.get_by_label("Subject").fill(subject)
    for role in roles:
        await page.locator(f"#role-{role}").check()
    if tenant:
        await page.get_by_label("Tenant").fill(tenant)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{stack.http}/console")
    await page.get_by_role("heading", name=f"Welcome, {subject}").wait_for()
    return context, page


async def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
