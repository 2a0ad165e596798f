"""The console end to end in Chromium: opt-in, a recorded SDK session, request, approval, playback from a SAW,
the auditor's review; a denial; CSRF and the playback refusal outside a SAW.

Every page is screenshot under test-output/screenshots/.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.ai.voicelive.aio import connect as sdk_connect
from azure.core.credentials import AzureKeyCredential
from playwright.async_api import Browser, Page, expect
from sqlalchemy import func, select

from app.access.models import AccessRequest
from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from tests.console.stack import ADMIN, ConsoleStack, chromium, console_stack, shot, sign_in
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.relay import STANDIN_API_KEY, StandinHandle
from tests.fixtures.saw import SawPki, saw_request_headers
from tests.relay.audio import frames, speech_like

pytestmark = pytest.mark.slow
AUDIO_DURATION = ("a => new Promise(r => a.readyState >= 1 ? r(a.duration)"
                  " : a.addEventListener('loadedmetadata', () => r(a.duration)))")


@dataclass
class Cast:
    engineer: str
    manager: str
    admin: str
    auditor: str
    on_saw: dict[str, str]


@dataclass
class World:
    stack: ConsoleStack
    browser: Browser
    cast: Cast
    mint_token: MintToken


async def hire(stack: ConsoleStack, saw_pki: SawPki) -> Cast:
    tag = stack.tag
    team = f"voice-{tag}"
    assert (await stack.api("POST", "/admin/teams", ADMIN, json={"name": team})).status_code == 201
    cast = Cast(f"alice-{tag}", f"mona-{tag}", f"admin-{tag}", f"audrey-{tag}", saw_request_headers(saw_pki.valid.cert))
    for subject, roles in ((cast.engineer, ["engineer"]), (cast.manager, ["manager"]), (cast.auditor, ["auditor"])):
        response = await stack.api("POST", "/admin/staff", ADMIN, json={
            "subject": subject, "display_name": subject.split("-")[0].title(), "team": team, "roles": roles})
        assert response.status_code == 201, response.text
    assert (await stack.api("POST", f"/admin/teams/{team}/managers", ADMIN,
                            json={"subject": cast.manager})).status_code == 200
    assert (await stack.api("POST", f"/tickets/{stack.ticket_id}/engineers", stack.ticketing,
                            json={"engineer": cast.engineer})).status_code == 200
    saw = await stack.api("POST", "/admin/saws", ADMIN, json={"owner": cast.engineer, "label": "SAW-EU-0001",
                                                            "cert_pem": saw_pki.valid.pem})
    assert saw.status_code == 201, saw.text
    return cast


@pytest.fixture
async def world(tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
                saw_pki: SawPki) -> AsyncIterator[World]:
    async with console_stack(tmp_path, standin, identity_settings, mint_token) as stack, chromium() as browser:
        yield World(stack, browser, await hire(stack, saw_pki), mint_token)


async def record_sdk_session(stack: ConsoleStack, standin: StandinHandle) -> str:
    """A real azure-ai-voicelive session through voicelog: 1.5 s of speech, one echoed response."""
    async with sdk_connect(endpoint=stack.endpoint, credential=AzureKeyCredential(STANDIN_API_KEY),
                           model="gpt-4o") as conn:
        for chunk in frames(speech_like(1.5, marker_hz=180)):
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        async for event in conn:
            if event.type == "response.done":
                break
    request_id = list(standin.standin.sessions)[-1]
    await stack.recording(request_id)
    return request_id


async def opt_in(world: World) -> Page:
    """The customer's admin turns recording on for the ticket, in the browser."""
    _context, page = await sign_in(world.browser, world.stack, world.cast.admin, ["customer_admin"],
                                   tenant=world.stack.tenant)
    await shot(page, "01-customer-home")
    await page.get_by_role("link", name="My resources").first.click()
    await expect(page.get_by_role("heading", name=world.stack.resource)).to_be_visible()
    await page.get_by_label("Ticket ID").fill(world.stack.ticket_id)
    await page.get_by_role("button", name="Turn recording on").click()
    await expect(page.get_by_role("status").filter(has_text="Recording is on")).to_be_visible()
    await expect(page.locator("#consents")).to_contain_text("active")
    await shot(page, "02-customer-consent-granted")
    await world.stack.reload_consents()
    return page


async def ask_for_access(page: Page, world: World, request_id: str, minutes: str = "60") -> None:
    await page.goto("/console/engineer")
    await expect(page.locator("#ticket_id")).to_contain_text(world.stack.ticket_ref)
    await page.get_by_label("Request IDs").fill(request_id)
    await page.get_by_label("Justification").fill(
        f"Caller reports clipped audio on {world.stack.ticket_ref}; need to hear the turn.")
    await page.get_by_label("Duration").select_option(minutes)
    await page.get_by_role("button", name="Ask my manager").click()
    await expect(page.get_by_role("status").filter(has_text="sent to your team's managers")).to_be_visible()
    await expect(page.locator("table.requests")).to_contain_text("waiting for manager")


async def test_the_whole_story_in_the_browser(world: World, standin: StandinHandle) -> None:
    stack, cast, browser = world.stack, world.cast, world.browser
    customer = await opt_in(world)
    request_id = await record_sdk_session(stack, standin)
    await customer.reload()
    await expect(customer.locator("#recordings")).to_contain_text(request_id)
    await shot(customer, "03-customer-recordings")

    # The engineer, on her SAW, asks for the request ID the customer gave her.
    _e, engineer = await sign_in(browser, stack, cast.engineer, ["engineer"], headers=cast.on_saw)
    await ask_for_access(engineer, world, request_id)
    await shot(engineer, "04-engineer-requested")

    # Her manager sees it with her history and approves it, for less time than asked.
    _m, manager = await sign_in(browser, stack, cast.manager, ["manager"])
    await manager.get_by_role("link", name="Approvals", exact=True).click()
    card = manager.locator("article.request")
    await expect(card).to_contain_text(cast.engineer)
    await expect(card).to_contain_text("need to hear the turn")
    await expect(card).to_contain_text("First request from this engineer")
    await shot(manager, "05-manager-queue")
    await card.get_by_label("Grant for").select_option("30")
    await card.get_by_role("button", name="Approve").click()
    await expect(manager.get_by_role("status").filter(has_text="Approved")).to_be_visible()
    await expect(manager.get_by_text("Nothing waits for your decision.")).to_be_visible()

    # The engineer's grant counts down; she opens the recording.
    await engineer.reload()
    countdown = engineer.locator("time[data-countdown]")
    await expect(countdown).to_have_text(re.compile(r"^(29 min \d+ s|30 min 0 s) left$"))
    first_text = await countdown.text_content()
    assert first_text is not None
    await expect(countdown).not_to_have_text(first_text, timeout=15_000)  # live, ticking in the page
    await shot(engineer, "06-engineer-granted")
    await engineer.get_by_role("link", name=request_id).click()
    await engineer.wait_for_url(f"**/console/recordings/{request_id}")
    for track in ("caller", "service"):
        await expect(engineer.locator(f'.track[data-track="{track}"]')).to_have_attribute("data-loaded", "true")
        duration = await engineer.locator(f"#audio-{track}").evaluate(AUDIO_DURATION)
        assert 1.0 < duration < 3.0
    await expect(engineer.locator('.track[data-track="session"]')).to_have_attribute("data-loaded", "true")
    events = engineer.locator("#events")
    await expect(events).to_contain_text("input_audio_buffer.speech_started")
    await expect(events).to_contain_text("input_audio_buffer.speech_stopped")
    await expect(events).to_contain_text("response.done")
    transcripts = engineer.locator("#transcripts")
    await expect(transcripts).to_contain_text(re.compile(r"speech of \d+\.\d+ s"))
    await expect(transcripts).to_contain_text(re.compile(r"echo of \d+\.\d+ s"))
    stopped = events.get_by_role("button").filter(has_text="speech_stopped")
    await stopped.click()
    seek_ms = int(await stopped.get_attribute("data-seek-ms") or "0")
    position = await engineer.locator("#audio-session").evaluate("a => a.currentTime")
    assert abs(position - seek_ms / 1000) < 0.001
    await shot(engineer, "07-engineer-playback")
    narrow = await browser.new_context(base_url=stack.http, viewport={"width": 420, "height": 900},
                                       extra_http_headers=cast.on_saw, storage_state=await _e.storage_state())
    small = await narrow.new_page()
    await small.goto(f"/console/recordings/{request_id}")
    await expect(small.locator('.track[data-track="caller"]')).to_have_attribute("data-loaded", "true")
    await shot(small, "08-engineer-playback-narrow")

    # The same engineer, not on her SAW, gets the API's one answer, page and WAV alike.
    _o, outside = await sign_in(browser, stack, cast.engineer, ["engineer"])
    response = await outside.goto(f"/console/recordings/{request_id}")
    assert response is not None
    assert response.status == 404
    await expect(outside.locator("[data-problem]")).to_have_attribute("data-problem", "recording_not_available")
    await shot(outside, "09-playback-refused-outside-saw")
    console_wav = await _o.request.get(f"/console/recordings/{request_id}/audio/caller.wav")
    api_wav = await stack.api("GET", f"/recordings/{request_id}/audio/caller.wav",
                              bearer(world.mint_token(cast.engineer, [Role.ENGINEER])))
    console_body, api_body = await console_wav.json(), api_wav.json()
    console_body.pop("instance"), api_body.pop("instance")
    assert (console_wav.status, console_body) == (api_wav.status_code, api_body)

    # The auditor sees the reads in the access review, and the chain is intact.
    await stack.chain_audit()
    _a, auditor = await sign_in(browser, stack, cast.auditor, ["auditor"])
    await auditor.get_by_role("link", name="Access review", exact=True).click()
    grants = auditor.locator("#grants")
    await expect(grants).to_contain_text(cast.engineer)
    await expect(grants).to_contain_text(cast.manager)
    await expect(grants).to_contain_text("audio_inbound")
    await expect(grants).to_contain_text("transcripts")
    await expect(auditor.locator("#chain-status")).to_have_text("Intact")
    await expect(auditor.locator("svg.chart-svg").first).to_be_visible()
    await shot(auditor, "10-auditor-access-review")
    await expect(auditor.get_by_role("link", name="CSV")).to_be_visible()
    csv = await _a.request.get(await auditor.get_by_role("link", name="CSV").get_attribute("href") or "")
    assert csv.status == 200
    assert cast.engineer in await csv.text()
    await auditor.get_by_role("link", name="Retention", exact=True).click()
    await expect(auditor.get_by_role("heading", name="Retention audit")).to_be_visible()
    await shot(auditor, "11-auditor-retention")

    # And the customer sees who read what, by role and team.
    await customer.reload()
    await expect(customer.locator("#access-requests")).to_contain_text("approved")
    await expect(customer.locator("#reads")).to_contain_text("audio_inbound")
    await shot(customer, "12-customer-access-log")


async def test_denied_request_cannot_play_and_forms_without_the_csrf_token_are_refused(
    world: World, standin: StandinHandle,
) -> None:
    stack, cast, browser = world.stack, world.cast, world.browser
    await opt_in(world)
    request_id = await record_sdk_session(stack, standin)
    engineer_context, engineer = await sign_in(browser, stack, cast.engineer, ["engineer"], headers=cast.on_saw)

    # CSRF: a form whose token was tampered with changes nothing.
    await engineer.goto("/console/engineer")
    await engineer.get_by_label("Request IDs").fill(request_id)
    await engineer.get_by_label("Justification").fill(f"Need this recording for {stack.ticket_ref} please.")
    await engineer.locator("#ask-form input[name=csrf]").evaluate("el => el.value = 'forged-token'")
    await engineer.get_by_role("button", name="Ask my manager").click()
    await expect(engineer.get_by_text("csrf_rejected")).to_be_visible()
    await shot(engineer, "13-csrf-rejected")
    forged = await engineer_context.request.post("/console/engineer/requests", form={
        "ticket_id": stack.ticket_id, "request_ids": request_id, "justification": f"Need it for {stack.ticket_ref}!!",
        "duration_minutes": "60"})
    assert forged.status == 403
    async with stack.app.state.ctx.session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(AccessRequest)) == 0

    # A real request, denied with a reason.
    await ask_for_access(engineer, world, request_id)
    _m, manager = await sign_in(browser, stack, cast.manager, ["manager"])
    await manager.goto("/console/manager")
    card = manager.locator("article.request")
    await card.get_by_label("Reason").fill("Ask the customer for a shorter window first")
    await card.get_by_role("button", name="Deny").click()
    await expect(manager.get_by_role("status").filter(has_text="Denied")).to_be_visible()
    await engineer.reload()
    row = engineer.locator("table.requests tbody tr").first
    await expect(row).to_contain_text("denied")
    await expect(row).to_contain_text("Ask the customer for a shorter window first")
    await expect(row.get_by_role("link", name=request_id)).to_have_count(0)
    await shot(engineer, "14-engineer-denied")
    response = await engineer.goto(f"/console/recordings/{request_id}")
    assert response is not None
    assert response.status == 404
    await expect(engineer.locator("[data-problem]")).to_have_attribute("data-problem", "recording_not_available")


async def test_console_pages_carry_security_headers_and_a_strict_session_cookie(world: World) -> None:
    context, page = await sign_in(world.browser, world.stack, world.cast.engineer, ["engineer"])
    response = await page.goto("/console/engineer")
    assert response is not None
    headers = await response.all_headers()
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "script-src 'self';" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    cookies = {c["name"]: c for c in await context.cookies()}
    session = cookies["__Host-voicelog-console"]
    assert (session["httpOnly"], session["secure"], session["sameSite"]) == (True, True, "Strict")
    assert len(session["value"]) >= 40
    assert "__Host-voicelog-login" not in cookies  # the sign-in cookie is gone once used
    logout = page.get_by_role("button", name="Sign out")
    await logout.click()
    await expect(page.get_by_text("You are signed out.")).to_be_visible()
    await page.goto("/console/engineer")
    await page.wait_for_url("**/dev/oidc/authorize?**")  # a signed-out session no longer works
