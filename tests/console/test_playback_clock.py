"""The playback page in Chromium: one player on the session clock, seeking by event, the turns with their latency.

The session is a real SDK session through voicelog to the stand-in; the consent and the grant are made through
the API (the story test covers those pages), the playback in the browser from the engineer's SAW.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from app.capture.frame_log import C2S
from app.capture.reader import read_recording
from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from tests.access.test_session_clock import paced_sdk_session
from tests.console.stack import chromium, console_stack, shot, sign_in
from tests.console.test_console_story import World, hire
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.relay import StandinHandle
from tests.fixtures.saw import SawPki

pytestmark = pytest.mark.slow
AUDIO_DELTAS = ("response.audio.delta", "response.output_audio.delta")


@pytest.fixture
async def world(tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
                saw_pki: SawPki) -> AsyncIterator[World]:
    async with console_stack(tmp_path, standin, identity_settings, mint_token) as stack, chromium() as browser:
        yield World(stack, browser, await hire(stack, saw_pki), mint_token)


async def granted_recording(world: World, standin: StandinHandle) -> str:
    """Consent, a real-time SDK session (two turns, the second over the first answer), a request approved by
    the engineer's manager: all through the API."""
    stack, cast = world.stack, world.cast
    customer = bearer(world.mint_token(cast.admin, [Role.CUSTOMER_ADMIN], tenant=stack.tenant))
    consent = await stack.api("POST", f"/customer/resources/{stack.resource}/consents", customer,
                              json={"ticket_id": stack.ticket_id})
    assert consent.status_code == 201, consent.text
    await stack.reload_consents()
    request_id = (await paced_sdk_session(stack, standin)).request_id
    asked = await stack.api("POST", "/access/requests", bearer(world.mint_token(cast.engineer, [Role.ENGINEER])),
                            json={"ticket_id": stack.ticket_id, "request_ids": [request_id], "duration_minutes": 60,
                                  "justification": f"Slow answers on {stack.ticket_ref}; need the turn timing."})
    assert asked.status_code == 201, asked.text
    approved = await stack.api("POST", f"/access/requests/{asked.json()['id']}/approve",
                               bearer(world.mint_token(cast.manager, [Role.MANAGER])), json={})
    assert approved.status_code == 200, approved.text
    return request_id


async def test_clicking_an_event_seeks_the_session_player_to_its_relay_time(world: World,
                                                                           standin: StandinHandle) -> None:
    request_id = await granted_recording(world, standin)
    ctx = world.stack.app.state.ctx
    frames = (await read_recording(await world.stack.recording(request_id), keyrings=ctx.keyrings,
                                   stores=ctx.stores)).frames
    s2c = [(f.offset_us // 1000, json.loads(f.payload)["type"]) for f in frames if f.direction != C2S]
    done_ms = [t for t, kind in s2c if kind == "response.done"]
    stopped_ms = [t for t, kind in s2c if kind == "input_audio_buffer.speech_stopped"]
    started_ms = next(t for t, kind in s2c if kind == "input_audio_buffer.speech_started")
    first_audio_ms = [next(t for t, kind in s2c if kind in AUDIO_DELTAS and t >= stop) for stop in stopped_ms]

    _context, page = await sign_in(world.browser, world.stack, world.cast.engineer, ["engineer"],
                                   headers=world.cast.on_saw)
    await page.goto(f"/console/recordings/{request_id}")
    await expect(page.locator('.track[data-track="session"]')).to_have_attribute("data-loaded", "true")
    channels = await page.locator("#audio-session").get_attribute("data-channels")
    assert channels == "2"

    # The turns and their latency, from the relay's own timestamps; the first was interrupted.
    latencies = [audio - stop for audio, stop in zip(first_audio_ms, stopped_ms, strict=True)]
    rows = page.locator("#turns tbody tr")
    await expect(rows).to_have_count(2)
    for row, latency in zip((rows.nth(0), rows.nth(1)), latencies, strict=True):
        await expect(row.locator("td.num").first).to_have_text(f"{latency} ms")
    await expect(rows.nth(0)).to_contain_text("yes, caller speech")
    await expect(page.locator("#p50-first")).to_have_text(f"{min(latencies)} ms")  # lower median of two
    await expect(page.locator("#max-first")).to_have_text(f"{max(latencies)} ms")

    # The events are in session-time order, and a click lands on exactly that instant.
    times = [int(v) for v in await page.locator("#events .seek").evaluate_all(
        "bs => bs.map(b => b.dataset.seekMs)")]
    assert times == sorted(times)
    for label, expected_ms in (("response.done", done_ms[0]), ("turn 2: first response audio", first_audio_ms[1]),
                               ("speech_started", started_ms)):
        button = page.locator("#events .seek").filter(has_text=label).first
        assert int(await button.get_attribute("data-seek-ms") or "-1") == expected_ms
        await button.click()
        position = await page.locator("#audio-session").evaluate("a => a.currentTime")
        assert abs(position - expected_ms / 1000) < 0.001
    await shot(page, "10-engineer-playback-session-clock")
