"""Round-2 probes of the new recording parts (issue 18): `/audio/session.wav`, `/turns` and `/bundle`.

One recorded SDK session. Before a grant, off the SAW, after the grant expired and after it was revoked,
every part answers exactly what an unknown (or malformed) request ID gets (C4). Allowed reads, whatever
`Range` they carry (odd, multiple, huge, garbage), are a 200 or a 206 whose body matches its headers, never
a 500; each allowed read is exactly one `recording.read` entry with the bytes it served and each refusal
exactly one `recording.read_denied` (C6); the chain then verifies with the new parts in it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest

from app.access.models import AccessRequest
from app.audit.service import integrate_pending
from app.audit.verifier import verify_chain
from app.identity.settings import IdentitySettings
from tests.access.test_playback import Env, approve, ask, make_env
from tests.fixtures.audit import audit_rows
from tests.fixtures.identity import MintToken
from tests.fixtures.relay import StandinHandle
from tests.fixtures.saw import SawPki

PARTS = {"/audio/session.wav": "audio_session", "/turns": "turns", "/bundle": "bundle"}
RANGES = [
    None, "bytes=0-0", "bytes=0-", "bytes=-1", "bytes=-0", "bytes=10-5", "bytes=44-43", "bytes=0-99999999999",
    "bytes=99999999999-", "bytes=-99999999999999999999", "bytes=1-2,5-6", "bytes=0-1, 3-4", "bytes=--1",
    "bytes=-", "bytes=", "bytes=abc", "items=0-10", "bytes=0-10;x", "bytes=+1-+2", "bytes=" + "9" * 5000 + "-",
    "bytes=0-" + "9" * 5000, "bytes=-5-3", "bytes=5--3", "bytes = 0-10", "BYTES=0-10", "bytes=0-10 ,",
]
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@pytest.fixture
async def env(tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
              saw_pki: SawPki) -> AsyncIterator[Env]:
    async with make_env(tmp_path, standin, identity_settings, mint_token, saw_pki) as made:
        made.stack.relay.app.state.ctx.access.limiter.denials_per_10_minutes = 10_000  # this probe refuses a lot
        yield made


async def _get(env: Env, part: str, who: dict[str, str], request_id: str | None = None,
               headers: dict[str, str] | None = None) -> httpx.Response:
    rid = request_id or env.session.request_id
    return await env.stack.api("GET", f"/recordings/{rid}{part}", {**who, **(headers or {})})


def _answer(response: httpx.Response) -> tuple[int, dict[str, Any], list[str]]:
    body = response.json()
    body.pop("instance", None)
    return response.status_code, body, sorted(h for h in response.headers if h.startswith("x-voicelog-"))


async def test_new_parts_refuse_alike_audit_every_read_once_and_keep_the_chain_valid(env: Env) -> None:
    alice, elsewhere = env.people.alice, env.people.alice_elsewhere
    refusals = 0
    allowed: list[tuple[str, int]] = []  # (part, bytes served)

    async def refused_alike(why: str, who: dict[str, str]) -> None:
        nonlocal refusals
        for part in PARTS:
            unknown = _answer(await _get(env, part, alice, request_id=uuid4().hex))
            malformed = _answer(await _get(env, part, alice, request_id="not-a-request-id"))
            extra = {"range": "bytes=0-99"} if part.endswith(".wav") else {}
            known = _answer(await _get(env, part, who, headers=extra))
            refusals += 3
            assert known == unknown == malformed, (why, part, known, unknown, malformed)
            assert (known[0], known[1]["code"]) == (404, "recording_not_available"), (why, part)
            assert known[2] == [], (why, part)  # no recording state leaks from a refusal

    await refused_alike("no grant", alice)
    pending = await ask(env)
    await refused_alike("pending", alice)
    assert await approve(env, pending) == 200
    await refused_alike("off the SAW", elsewhere)

    wrong: list[str] = []
    total: int | None = None
    for value in RANGES:
        response = await _get(env, "/audio/session.wav", alice, headers={} if value is None else {"range": value})
        if response.status_code not in (200, 206):
            wrong.append(f"{value!r}: {response.status_code} {response.text[:120]}")
            continue
        body = response.content
        allowed.append(("audio_session", len(body)))
        if int(response.headers["content-length"]) != len(body):
            wrong.append(f"{value!r}: content-length {response.headers['content-length']} but {len(body)} bytes")
        if response.status_code == 200:
            total = total or len(body)
            if len(body) != total:
                wrong.append(f"{value!r}: a 200 of {len(body)} bytes, the whole is {total}")
        else:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
            if match is None:
                wrong.append(f"{value!r}: 206 with content-range {response.headers.get('content-range')!r}")
                continue
            first, last, whole = (int(g) for g in match.groups())
            if not (first <= last < whole and last - first + 1 == len(body)):
                wrong.append(f"{value!r}: content-range {first}-{last}/{whole} for {len(body)} bytes")
    assert not wrong, "\n".join(wrong)
    for part in ("/turns", "/bundle"):
        response = await _get(env, part, alice)
        assert response.status_code == 200, response.text
        allowed.append((PARTS[part], len(response.content)))

    factory = env.stack.relay.app.state.ctx.session_factory
    async with factory() as session:
        row = await session.get(AccessRequest, pending["id"])
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        await session.commit()
    await refused_alike("expired grant", alice)

    second = await ask(env)
    assert await approve(env, second) == 200
    assert (await _get(env, "/turns", alice)).status_code == 200
    allowed.append(("turns", -1))
    revoked = await env.stack.api("POST", f"/access/requests/{second['id']}/revoke", alice, json={"reason": "done"})
    assert revoked.status_code == 200, revoked.text
    await refused_alike("revoked grant", alice)

    ctx = env.stack.relay.app.state.ctx
    async with factory() as session:
        await integrate_pending(session, wait=True)
        await session.commit()
        reads = [json.loads(r[0]) for r in await audit_rows(session, "detail", action="recording.read")]
        denied = [json.loads(r[0]) for r in await audit_rows(session, "detail", action="recording.read_denied")]
    assert len(reads) == len(allowed)
    bundle_bytes = [r["bytes"] for r in reads if r["part"] == "bundle"]
    assert sorted((r["part"], r["bytes"]) for r in reads if r["part"] == "audio_session") == sorted(
        a for a in allowed if a[0] == "audio_session")
    assert len(bundle_bytes) == 1
    assert bundle_bytes[0] > 0  # the parts' total, not the zip's size
    assert [r["part"] for r in reads].count("turns") == 2
    assert len(denied) == refusals
    assert {d["part"] for d in denied} == set(PARTS.values())

    async with factory() as session:
        result = await verify_chain(
            session=session, keys=ctx.audit.keyring.public_keys(), exported=await ctx.audit.sink.read_all(),
            now=datetime.now(UTC), mac_keys=ctx.audit.mac_keys, mac_from_seq=ctx.audit.settings.entry_mac_from_seq)
    assert result.ok, result.to_json()
