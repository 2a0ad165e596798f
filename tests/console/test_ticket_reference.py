"""Tickets by the reference everyone knows (issue 19): the customer opts in in the console by `CS-...`, and
every page that shows a ticket shows its reference and its ID."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

from playwright.async_api import expect

from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from tests.console.stack import chromium, console_stack, sign_in
from tests.fixtures.identity import MintToken
from tests.fixtures.relay import TEST_ADMIN_TOKEN, StandinHandle

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


async def test_customer_opts_in_by_reference_and_pages_show_reference_and_id(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
) -> None:
    async with console_stack(tmp_path, standin, identity_settings, mint_token) as stack, chromium() as browser:
        engineer = f"erin-{uuid4().hex[:6]}"
        assert (await stack.api("POST", "/admin/staff", ADMIN, json={
            "subject": engineer, "display_name": "Erin", "roles": [Role.ENGINEER.value]})).status_code == 201
        assert (await stack.api("POST", f"/tickets/{stack.ticket_id}/engineers", stack.ticketing,
                                json={"engineer": engineer})).status_code == 200

        _c, customer = await sign_in(browser, stack, f"admin-{stack.tag}", ["customer_admin"], tenant=stack.tenant)
        await customer.goto(f"/console/customer/resources/{stack.resource}")
        await customer.get_by_label("Ticket ID or reference").fill(stack.ticket_ref)
        await customer.get_by_role("button", name="Turn recording on").click()
        await expect(customer.get_by_role("status").filter(has_text="Recording is on")).to_be_visible()
        consent_row = customer.locator("#consents tbody tr")
        await expect(consent_row).to_have_count(1)
        await expect(consent_row).to_contain_text(stack.ticket_ref)
        await expect(consent_row).to_contain_text(stack.ticket_id)
        await expect(consent_row).to_contain_text("active")

        # A reference that is no ticket of this resource is refused in words, nothing granted.
        await customer.get_by_label("Ticket ID or reference").fill("CS-NOPE-1")
        await customer.get_by_role("button", name="Turn recording on").click()
        await expect(customer.get_by_role("alert").filter(has_text="No such ticket")).to_be_visible()
        await expect(consent_row).to_have_count(1)

        _e, page = await sign_in(browser, stack, engineer, ["engineer"])
        await page.goto("/console/engineer")
        mine = page.get_by_role("region", name="My open tickets").locator("tbody tr")
        await expect(mine).to_contain_text(stack.ticket_ref)
        await expect(mine).to_contain_text(stack.ticket_id)
