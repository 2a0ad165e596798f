"""The auditor's audit entries page (issue 19) in Chromium: reached from the access review, it lists the
chain's entries with their position and whether a signed checkpoint covers them, filters by action and actor,
pages back and forth, explains a bad filter, and refuses anyone who is not an active auditor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from app.audit.checkpoints import CheckpointPolicy, last_checkpoint, seal
from app.clock import SystemClock
from app.identity.settings import IdentitySettings
from tests.console.stack import ADMIN, ConsoleStack, chromium, console_stack, shot, sign_in
from tests.fixtures.identity import MintToken
from tests.fixtures.relay import StandinHandle

pytestmark = pytest.mark.slow


@pytest.fixture
async def stack(tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings,
                mint_token: MintToken) -> AsyncIterator[tuple[ConsoleStack, Browser]]:
    """A served console whose chain holds the stack's set-up, a signed checkpoint, then a second ticket."""
    async with console_stack(tmp_path, standin, identity_settings, mint_token) as served, chromium() as browser:
        team = f"audit-{served.tag}"
        assert (await served.api("POST", "/admin/teams", ADMIN, json={"name": team})).status_code == 201
        for subject, roles in (("audrey", ["auditor"]), ("eve", ["engineer"]), ("retired", ["auditor"])):
            created = await served.api("POST", "/admin/staff", ADMIN, json={
                "subject": subject, "display_name": subject.title(), "team": team, "roles": roles})
            assert created.status_code == 201, created.text
        assert (await served.api("POST", "/admin/staff/retired/deactivate", ADMIN)).status_code == 200
        await served.chain_audit()
        ctx = served.app.state.ctx
        async with ctx.session_factory() as session:
            await seal(session=session, clock=SystemClock(), keyring=ctx.audit.keyring, policy=CheckpointPolicy(),
                       wait=True, force=True)  # unless the app's own keeper already signed the head
            await session.commit()
            checkpoint = await last_checkpoint(session)
        assert checkpoint is not None
        later = await served.api("POST", "/tickets", served.ticketing,
                                 json={"resource": served.resource, "external_ref": f"LATE-{served.tag}"})
        assert later.status_code == 201, later.text
        await served.chain_audit()
        yield served, browser


async def test_auditor_browses_filters_and_pages_entries_with_their_chain_position(
    stack: tuple[ConsoleStack, Browser],
) -> None:
    served, browser = stack
    _context, page = await sign_in(browser, served, "audrey", ["auditor"])
    await page.get_by_role("link", name="Access review", exact=True).click()
    await page.get_by_role("navigation", name="Console sections").get_by_role("link", name="Audit entries").click()
    await expect(page.get_by_role("heading", name="Audit entries", exact=True)).to_be_visible()
    rows = page.locator("#entries tbody tr")
    await expect(rows.first).to_be_visible()
    seqs = [int(s) for s in await rows.evaluate_all("rs => rs.map(r => r.dataset.seq)")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # chain order, no gap
    position = page.locator("#chain-position")
    head = int(await position.get_attribute("data-head") or "0")
    assert head >= seqs[-1]  # the head is read last: the keeper may have chained a checkpoint entry since
    assert f"Chain head #{head};" in await position.inner_text()
    await shot(page, "20-auditor-audit-entries")

    await page.get_by_label("Action").select_option("ticket.created")
    await page.get_by_role("button", name="Show").click()
    await expect(rows).to_have_count(2)
    assert set(await rows.evaluate_all("rs => rs.map(r => r.dataset.action)")) == {"ticket.created"}
    await expect(rows.nth(0)).to_contain_text(served.ticket_ref)
    await expect(rows.nth(1)).to_contain_text(f"LATE-{served.tag}")
    await expect(rows.nth(0).locator("td").last).to_have_text("signed")  # before the checkpoint we signed
    # The app's own keeper signs checkpoints every few seconds: the later ticket is "not yet" exactly while its
    # seq is past the last checkpoint the page names.
    sealed = int(await page.locator("#chain-position").get_attribute("data-sealed-through") or "0")
    late = int(await rows.nth(1).get_attribute("data-seq") or "0")
    await expect(rows.nth(1).locator("td").last).to_have_text("not yet" if late > sealed else "signed")
    await expect(page.get_by_label("Action")).to_have_value("ticket.created")

    await page.get_by_label("Action").select_option("")
    await page.get_by_label("Actor").fill("service:admin-token")
    await page.get_by_role("button", name="Show").click()
    actors = await page.locator("#entries tbody tr td:nth-child(4)").all_inner_texts()
    assert actors
    assert set(actors) == {"service:admin-token"}

    # The keeper may have chained a checkpoint entry since the first page: the newest page is two consecutive
    # entries at or past the head seen then, and the older page is the two entries just below it.
    await page.goto("/console/auditor/entries?limit=2")
    newest = [int(s) for s in await rows.evaluate_all("rs => rs.map(r => r.dataset.seq)")]
    assert newest == [newest[1] - 1, newest[1]]
    assert newest[1] >= seqs[-1]
    assert int(await page.locator("#chain-position").get_attribute("data-head") or "0") >= newest[1]
    await page.get_by_role("link", name="Older entries").click()
    assert [int(s) for s in await rows.evaluate_all("rs => rs.map(r => r.dataset.seq)")] == [newest[0] - 2,
                                                                                              newest[0] - 1]
    await page.get_by_role("link", name="Newer entries").click()
    assert [int(s) for s in await rows.evaluate_all("rs => rs.map(r => r.dataset.seq)")] == newest

    response = await page.goto("/console/auditor/entries?since=yesterday")
    assert response is not None
    assert response.status == 422
    await expect(page.locator("#filter-error")).to_have_text("`since` is not a time: use YYYY-MM-DDTHH:MM (UTC).")


async def test_only_an_active_auditor_sees_the_entries(stack: tuple[ConsoleStack, Browser]) -> None:
    """One served console for the three refusals (an engineer; auditor in the token but not in the record; a
    deactivated auditor): each gets the refused page, no entry."""
    served, browser = stack
    for subject, roles in (("eve", ["engineer"]), ("eve", ["auditor"]), ("retired", ["auditor"])):
        context, page = await sign_in(browser, served, subject, roles)
        response = await page.goto("/console/auditor/entries")
        assert response is not None
        assert response.status == 403, (subject, roles)
        await expect(page.locator("#entries")).to_have_count(0)
        await context.close()
