"""The workflow CLI (issue 19) against a running service: `voicelog tickets`, `access` and `recordings get`,
each a real `voicelog` process talking HTTP with a bearer token; `--json` is all of stdout (json.loads), a
refusal is one line with the API's code and a non-zero exit. The recording read goes through the SAW front
door (the Debian nginx with ops/nginx/saw.conf, mutual TLS with the engineer's registered SAW certificate)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from tests.console.stack import ADMIN, ConsoleStack, console_stack
from tests.console.test_console_story import record_sdk_session
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.relay import StandinHandle
from tests.fixtures.saw import NginxHandle, SawPki, run_saw_nginx

ROOT = Path(__file__).resolve().parents[1]
SILENCE = "caller says the agent went silent at 00:41"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, self.stderr
        return json.loads(self.stdout)


@dataclass
class Desk:
    """A served voicelog with a team (engineer, manager), the engineer's SAW behind nginx, and tokens."""

    stack: ConsoleStack
    nginx: NginxHandle
    pki: SawPki
    engineer: str
    manager: str
    tokens: dict[str, str]

    async def voicelog(self, who: str, *args: str, url: str | None = None) -> Run:
        """`voicelog ARGS` in its own process, as `who` (its token in VOICELOG_TOKEN), against the service."""
        env = {**os.environ, "VOICELOG_URL": url or self.stack.http, "VOICELOG_TOKEN": self.tokens[who]}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli_main", *args, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
        return Run(process.returncode or 0, out.decode(), err.decode())


@pytest.fixture
async def desk(tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
               saw_pki: SawPki) -> AsyncIterator[Desk]:
    async with console_stack(tmp_path, standin, identity_settings, mint_token) as stack:
        tag = stack.tag
        team, engineer, manager = f"voice-{tag}", f"alice-{tag}", f"mona-{tag}"
        assert (await stack.api("POST", "/admin/teams", ADMIN, json={"name": team})).status_code == 201
        for subject, role in ((engineer, "engineer"), (manager, "manager")):
            made = await stack.api("POST", "/admin/staff", ADMIN, json={
                "subject": subject, "display_name": subject, "team": team, "roles": [role]})
            assert made.status_code == 201, made.text
        assert (await stack.api("POST", f"/admin/teams/{team}/managers", ADMIN,
                                json={"subject": manager})).status_code == 200
        saw = await stack.api("POST", "/admin/saws", ADMIN, json={"owner": engineer, "label": "SAW-CLI-1",
                                                                 "cert_pem": saw_pki.valid.pem})
        assert saw.status_code == 201, saw.text
        tokens = {"ticketing": mint_token("svc-ticketing", [Role.TICKETING]),
                  "engineer": mint_token(engineer, [Role.ENGINEER]), "manager": mint_token(manager, [Role.MANAGER]),
                  "customer": mint_token(f"admin-{tag}", [Role.CUSTOMER_ADMIN], tenant=stack.tenant)}
        async with run_saw_nginx(tmp_path / "nginx", saw_pki, upstream_port=stack.port) as nginx:
            yield Desk(stack, nginx, saw_pki, engineer, manager, tokens)


async def test_ticket_access_and_recording_from_the_terminal(desk: Desk, standin: StandinHandle,
                                                             tmp_path: Path) -> None:
    """One served voicelog for every verb (each CLI process costs seconds of start-up)."""
    stack = desk.stack
    ref = f"CLI-{stack.tag}"
    ticket = (await desk.voicelog("ticketing", "tickets", "create", stack.resource, ref, "--json")).json()
    assert (ticket["external_ref"], ticket["state"], ticket["engineers"]) == (ref, "open", [])
    assigned = await desk.voicelog("ticketing", "tickets", "assign", ticket["id"], desk.engineer)
    assert assigned.code == 0, assigned.stderr
    header, row = assigned.stdout.splitlines()
    assert header.split() == ["ID", "REF", "RESOURCE", "STATE", "ENGINEERS", "CREATED"]
    assert row.split()[:5] == [ticket["id"], ref, stack.resource, "open", desk.engineer]

    opted = await stack.api("POST", f"/customer/resources/{stack.resource}/consents",
                            bearer(desk.tokens["customer"]), json={"ticket_id": ticket["id"]})
    assert opted.status_code == 201, opted.text
    await stack.reload_consents()
    request_id = await record_sdk_session(stack, standin)

    justification = f"{ref}: {SILENCE}"  # a justification names the ticket
    asked = (await desk.voicelog("engineer", "access", "request", "--ticket", ticket["id"], "-r", request_id,
                                 "-j", justification, "--minutes", "60", "--json")).json()
    assert (asked["status"], asked["request_ids"], asked["requester"]) == (
        "waiting_for_manager", [request_id], desk.engineer)
    queue = await desk.voicelog("manager", "access", "list", "--queue")
    assert queue.code == 0, queue.stderr
    assert [line.split()[:3] for line in queue.stdout.splitlines()[1:]] == [
        [asked["id"], "waiting_for_manager", desk.engineer]]

    approved = (await desk.voicelog("manager", "access", "approve", asked["id"], "--minutes", "30", "--json")).json()
    assert (approved["status"], approved["granted_minutes"], approved["decided_by"]) == ("approved", 30, desk.manager)

    # The reads from the SAW, through nginx with the engineer's registered certificate, and one off the SAW.
    saw = ["--url", desk.nginx.url, "--cert", str(desk.pki.valid.cert_path), "--key", str(desk.pki.valid.key_path),
           "--cacert", str(desk.pki.server_ca.cert_path)]
    events_file, wav, elsewhere = tmp_path / "events.ndjson", tmp_path / "session.wav", tmp_path / "service.wav"
    events_run, stereo, refused, transcript = await asyncio.gather(
        desk.voicelog("engineer", "recordings", "get", request_id, "--part", "events", "-o", str(events_file),
                      *saw, "--json"),
        desk.voicelog("engineer", "recordings", "get", request_id, "-p", "stereo", "-o", str(wav), *saw),
        desk.voicelog("engineer", "recordings", "get", request_id, "-p", "service", "-o", str(elsewhere)),
        desk.voicelog("engineer", "recordings", "get", request_id, "-p", "transcript", "-o", "-", *saw))
    got = events_run.json()
    lines = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert got["bytes"] == events_file.stat().st_size > 0
    assert (got["part"], got["state"], got["file"]) == ("events", "complete", str(events_file))
    assert any(e.get("type") == "response.done" for e in lines)
    assert stereo.code == 0, stereo.stderr
    assert wav.read_bytes()[:4] == b"RIFF"
    assert int.from_bytes(wav.read_bytes()[22:24], "little") == 2  # both directions on the session clock
    assert stereo.stdout.split("\n")[1].split()[:3] == [request_id, "stereo", str(wav.stat().st_size)]
    assert transcript.code == 0, transcript.stderr
    assert isinstance(json.loads(transcript.stdout), dict | list)  # `-o -`: the part alone on stdout
    assert f"request_id={request_id} part=transcript bytes={len(transcript.stdout.encode())}" in transcript.stderr
    # Not from the SAW: the API's one answer, one line, nothing written.
    assert refused.code == 1
    assert refused.stdout == ""
    assert refused.stderr.strip().splitlines()[-1].startswith("error: recording_not_available (404): ")
    assert not elsewhere.exists()
    assert not elsewhere.with_name("service.wav.part").exists()

    extension = (await desk.voicelog("engineer", "access", "extend", asked["id"], "-j", justification, "-m", "15",
                                     "--json")).json()
    assert (extension["status"], extension["extends_id"], extension["requested_minutes"]) == (
        "waiting_for_manager", asked["id"], 15)
    revoked = (await desk.voicelog("engineer", "access", "revoke", asked["id"], "--reason", "done", "--json")).json()
    assert revoked["status"] == "revoked"
    again = (await desk.voicelog("engineer", "access", "request", "-t", ticket["id"], "-r", request_id,
                                 "-j", justification, "--json")).json()
    denied = (await desk.voicelog("manager", "access", "deny", again["id"], "--reason", "already answered",
                                  "--json")).json()
    assert denied["status"] == "denied"
    mine = (await desk.voicelog("engineer", "access", "list", "--json")).json()
    statuses = {r["id"]: r["status"] for r in mine}
    assert mine[0]["id"] == again["id"]  # newest first
    assert set(statuses) == {asked["id"], extension["id"], again["id"]}
    assert (statuses[asked["id"]], statuses[again["id"]]) == ("revoked", "denied")

    unassigned = (await desk.voicelog("ticketing", "tickets", "unassign", ticket["id"], desk.engineer,
                                      "--json")).json()
    assert unassigned["engineers"] == []
    closed = (await desk.voicelog("ticketing", "tickets", "close", ticket["id"], "--json")).json()
    assert closed["state"] == "closed"
    assert (await desk.voicelog("ticketing", "tickets", "show", ticket["id"], "--json")).json() == closed

    # Refusals and bad input: one line with the API's code and status, nothing on stdout, exit 1 (2: unreachable).
    engineer_approves, short, unknown, nobody = await asyncio.gather(
        desk.voicelog("engineer", "access", "approve", again["id"], "--json"),
        desk.voicelog("engineer", "access", "request", "-t", ticket["id"], "-r", request_id, "-j", "too short"),
        desk.voicelog("ticketing", "tickets", "close", "no-such-ticket"),
        desk.voicelog("engineer", "access", "list", url="http://127.0.0.1:9"))
    for refused_run, code in ((engineer_approves, 1), (short, 1), (unknown, 1), (nobody, 2)):
        assert refused_run.code == code, refused_run.stderr
        assert refused_run.stdout == ""
    assert engineer_approves.stderr.strip().splitlines()[-1].startswith("error: missing_role (403): ")
    assert short.stderr.strip().splitlines()[-1].startswith("error: invalid_input (422): ")
    assert "justification" in short.stderr
    assert unknown.stderr.strip().splitlines()[-1].startswith("error: ticket_not_found (404): ")
    assert "error: unreachable: Cannot reach http://127.0.0.1:9" in nobody.stderr
