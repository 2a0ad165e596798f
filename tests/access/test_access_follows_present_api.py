"""The issue's probes over HTTP (issue 15, findings 1 and 2): a real SDK session is recorded, alice asks from
her SAW, and then the ticketing system or an admin changes the facts her grant rests on."""

from __future__ import annotations

import asyncio
import json
from uuid import uuid4

from tests.access.test_playback import ADMIN, Env, approve, ask, env, read, refusal

__all__ = ["env"]  # the fixture, reused


async def refused_like_unknown(env: Env) -> bool:
    return await refusal(env) == await refusal(env, request_id=uuid4().hex)


async def heard(env: Env, event: str, timeout: float = 30) -> dict[str, object]:
    """The first webhook delivery of `event` (delivery is in the background, with retries)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for _, body in env.webhooks:
            payload: dict[str, object] = json.loads(body)
            if payload["event"] == event:
                return payload
        if loop.time() > deadline:
            raise AssertionError(f"no {event} webhook within {timeout} s")
        await asyncio.sleep(0.05)


async def test_engineer_unassigned_from_the_ticket_gets_the_uniform_404(env: Env) -> None:
    grant = await ask(env)
    assert await approve(env, grant) == 200
    assert (await read(env, "/transcript")).status_code == 200

    stack = env.stack
    response = await stack.api("DELETE", f"/tickets/{stack.ticket_id}/engineers/{grant['requester']}",
                               stack.ticketing)
    assert response.status_code == 200, response.text

    for part in ("/audio/caller.wav", "/audio/service.wav", "/events", "/transcript"):
        assert (await read(env, part)).status_code == 404
    assert await refused_like_unknown(env)
    mine = (await stack.api("GET", "/access/requests", env.people.alice)).json()
    assert [(r["id"], r["state"]) for r in mine] == [(grant["id"], "revoked")]
    told = await heard(env, "access.revoked")  # the team hears of it as of a revocation
    assert (told["access_request"], told["state"]) == (grant["id"], "revoked")


async def test_old_teams_manager_cannot_approve_after_the_requester_moves(env: Env) -> None:
    pending = await ask(env)
    alice = str(pending["requester"])
    new_team = "voice-b-" + alice.removeprefix("alice-")
    moved = await env.stack.api("PATCH", f"/admin/staff/{alice}", ADMIN, json={"team": new_team})
    assert moved.status_code == 200, moved.text

    old = await env.stack.api("POST", f"/access/requests/{pending['id']}/approve", env.people.mona, json={})
    assert (old.status_code, old.json()["code"]) == (403, "not_requesters_manager")
    new = await env.stack.api("POST", f"/access/requests/{pending['id']}/approve", env.people.max, json={})
    assert (new.status_code, new.json()["code"]) == (409, "not_pending")  # the move ended the request
    assert await refused_like_unknown(env)


async def test_grant_approved_before_a_team_move_stops_reading(env: Env) -> None:
    grant = await ask(env)
    assert await approve(env, grant) == 200
    assert (await read(env, "/transcript")).status_code == 200
    alice = str(grant["requester"])

    moved = await env.stack.api("PATCH", f"/admin/staff/{alice}", ADMIN,
                                json={"team": "voice-b-" + alice.removeprefix("alice-")})
    assert moved.status_code == 200, moved.text

    assert await refused_like_unknown(env)
    assert (await read(env, "/transcript")).status_code == 404
