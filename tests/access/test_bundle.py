"""The debug bundle: one zip of every part, a manifest whose hashes match, one audited read, the one refusal."""

from __future__ import annotations

import hashlib
import io
import json
import wave
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import pytest

from app.identity.settings import IdentitySettings
from tests.access.test_playback import Env, approve, ask, make_env, make_stored_nothing, pcm_of, read
from tests.fixtures.audit import audit_rows
from tests.fixtures.identity import MintToken
from tests.fixtures.relay import StandinHandle
from tests.fixtures.saw import SawPki

PARTS = ["session.wav", "caller.wav", "service.wav", "events.ndjson", "turns.json", "transcript.json"]



@pytest.fixture
async def env(tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
              saw_pki: SawPki) -> AsyncIterator[Env]:
    async with make_env(tmp_path, standin, identity_settings, mint_token, saw_pki) as made:
        yield made


async def test_bundle_holds_every_part_hashed_in_its_manifest_and_is_one_audited_read(env: Env) -> None:
    unknown = await read(env, "/bundle", request_id=uuid4().hex)
    no_grant = await read(env, "/bundle")
    assert unknown.status_code == no_grant.status_code == 404
    assert unknown.json()["code"] == no_grant.json()["code"] == "recording_not_available"
    grant = await ask(env)
    assert await approve(env, grant) == 200

    response = await read(env, "/bundle")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert env.session.request_id in response.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    assert archive.namelist() == [*PARTS, "manifest.json"]
    manifest = json.loads(archive.read("manifest.json"))
    assert (manifest["request_id"], manifest["grant"]) == (env.session.request_id, grant["id"])
    assert manifest["saw"] == env.people.saw_id
    assert [p["name"] for p in manifest["parts"]] == PARTS
    for part in manifest["parts"]:
        data = archive.read(part["name"])
        assert (len(data), hashlib.sha256(data).hexdigest()) == (part["bytes"], part["sha256"])

    assert pcm_of(archive.read("caller.wav")) == (24000, env.session.sent)  # as sent, sample-exact
    assert pcm_of(archive.read("service.wav")) == (24000, env.session.received)
    with wave.open(io.BytesIO(archive.read("session.wav"))) as stereo:
        assert (stereo.getnchannels(), stereo.getframerate()) == (2, 24000)
    assert json.loads(archive.read("turns.json"))["summary"]["turns"] == 1
    assert json.loads(archive.read("transcript.json"))["request_id"] == env.session.request_id
    assert archive.read("events.ndjson").decode().splitlines()[-1].startswith('{"t_ms"')

    async with env.stack.relay.app.state.ctx.session_factory() as session:
        reads = [json.loads(r[0]) for r in await audit_rows(session, "detail", action="recording.read")]
    assert reads == [{"bytes": sum(p["bytes"] for p in manifest["parts"]), "part": "bundle",
                      "device": env.people.saw_id}]


async def test_new_parts_of_a_recording_that_stored_nothing_read_as_empty_with_its_state(env: Env) -> None:
    await make_stored_nothing(env, "missing")
    assert await approve(env, await ask(env)) == 200
    answers = {part: await read(env, part) for part in ("/audio/session.wav", "/turns", "/bundle")}
    for part, response in answers.items():
        assert response.status_code == 200, (part, response.text)
        assert response.headers["x-voicelog-recording-state"] == "incomplete"
        assert response.headers["x-voicelog-stored-bytes"] == "0"
    with wave.open(io.BytesIO(answers["/audio/session.wav"].content)) as stereo:
        assert (stereo.getnchannels(), stereo.getnframes()) == (2, 0)
    assert answers["/turns"].json()["turns"] == []
    archive = zipfile.ZipFile(io.BytesIO(answers["/bundle"].content))
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["recording"]["incomplete_reason"] == "store_unavailable"
    assert archive.read("events.ndjson") == b""
