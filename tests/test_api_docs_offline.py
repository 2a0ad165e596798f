"""`/docs` and `/redoc` render in Chromium with every request to anything but voicelog refused (issue 19): the
machine may have no internet, and opening the API's description must not tell a CDN that someone did."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Route

from tests.console.stack import chromium
from tests.fixtures.relay import relay_settings, run_relay


async def test_swagger_ui_and_redoc_render_with_only_the_service_reachable(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'docs.db'}")
    async with run_relay(settings) as relay, chromium() as browser:
        elsewhere: list[str] = []

        async def only_the_service(route: Route) -> None:
            if route.request.url.startswith(f"{relay.http}/"):
                await route.continue_()
            else:
                elsewhere.append(route.request.url)
                await route.abort()

        context = await browser.new_context(base_url=relay.http)
        await context.route("**/*", only_the_service)
        page = await context.new_page()

        await page.goto("/docs")
        # Swagger UI lists each operation with its method and path once it has loaded and parsed the schema.
        operation = page.locator(".opblock-summary-path", has_text="/customer/resources/{resource}/consents")
        await operation.first.wait_for()
        assert await page.locator(".opblock").count() > 20

        await page.goto("/redoc")
        await page.get_by_text("/customer/resources/{resource}/consents").first.wait_for(state="attached")
        assert await page.locator("h2").count() > 5  # one heading per operation in ReDoc's middle panel

        assert elsewhere == []
        await context.close()
