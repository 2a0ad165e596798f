"""Staff changes made with the CLI tell the team as the admin API does (issue 15, "a grant ends ... and the
requester and customer told as for a revocation"): `voicelog staff deactivate`, `set-roles` without engineer
and `set-team` end the person's grants, and the team's webhook hears `access.revoked` for each.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from uuid import uuid4

import pytest
import typer
from typer.testing import CliRunner

from app import migrate
from app.access import service as access
from app.clock import ManualClock
from app.config import Settings
from app.db import create_engine, create_session_factory
from app.identity.principal import Role
from app.identity.staff import service as staff
from app.identity.staff.cli import staff_cli
from app.identity.staff.schemas import StaffCreate, TeamCreate
from tests.access.test_access_follows_present import ADMIN, DIRECTORY, add_resource, add_ticket_with_recording

cli = typer.Typer()
cli.add_typer(staff_cli, name="staff")
TEAMS = ("voice-a", "voice-b")


@dataclass
class Hooks:
    url: str
    bodies: list[dict[str, object]]


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    """A real HTTP endpoint on loopback that keeps every JSON body posted to it."""
    bodies: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            bodies.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Hooks(f"http://127.0.0.1:{server.server_address[1]}/hook", bodies)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hooks: Hooks) -> Settings:
    """The embedded SQLite database the CLI uses, migrated, with a webhook for each team."""
    monkeypatch.setenv("VOICELOG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("VOICELOG_DATABASE_URL", raising=False)
    monkeypatch.setenv("VOICELOG_ACCESS_WEBHOOKS", json.dumps(
        [{"team": team, "url": f"{hooks.url}/{team}", "secret": f"{team}-secret"} for team in TEAMS]))
    (tmp_path / "data").mkdir()
    made = Settings()
    migrate.upgrade(made.resolved_database_url)
    return made


async def _grants(settings: Settings) -> dict[str, str]:
    """voice-a: alice (engineer), mona (manager); voice-b: gina (engineer), max (manager). Each engineer holds
    an approved grant on a ticket about acme's recording. Returns engineer -> grant id."""
    clock = ManualClock(datetime.now(UTC))
    engine = create_engine(settings.resolved_database_url)
    try:
        async with create_session_factory(engine)() as session:
            for team in TEAMS:
                await staff.create_team(session=session, clock=clock, actor=ADMIN, data=TeamCreate(name=team))
            for name, team, roles in (("alice", "voice-a", [Role.ENGINEER]), ("mona", "voice-a", [Role.MANAGER]),
                                      ("gina", "voice-b", [Role.ENGINEER]), ("max", "voice-b", [Role.MANAGER])):
                await staff.create_staff(session=session, clock=clock, actor=ADMIN, data=StaffCreate(
                    subject=name, display_name=name, team=team, roles=roles))
            for manager, team in (("mona", "voice-a"), ("max", "voice-b")):
                team_id = (await staff.resolve_team(session=session, ref=team)).id
                await staff.add_manager(session=session, clock=clock, actor=ADMIN, team_id=team_id, subject=manager)
            acme = await add_resource(session, clock, f"acme-{uuid4().hex[:8]}")
            ticket_id, ref, request_id = await add_ticket_with_recording(session, clock, acme, ["alice", "gina"])
            grants = {}
            for engineer, manager in (("alice", "mona"), ("gina", "max")):
                requester = await DIRECTORY.person(session, engineer)
                approver = await DIRECTORY.person(session, manager)
                assert requester is not None
                assert approver is not None
                row = await access.create_access_request(
                    session=session, clock=clock, actor=requester,
                    data=access.NewAccessRequest(ticket_id, [request_id], f"Clipped audio, see {ref}",
                                                 timedelta(hours=1)))
                await access.approve(session=session, clock=clock, directory=DIRECTORY, access_request_id=row.id,
                                     actor=approver)
                grants[engineer] = row.id
            await session.commit()
    finally:
        await engine.dispose()
    return grants


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(("command", "engineer", "team"), [
    (("staff", "deactivate", "alice"), "alice", "voice-a"),
    (("staff", "set-roles", "alice", "--role", "auditor"), "alice", "voice-a"),
    (("staff", "set-team", "gina", "voice-a"), "gina", "voice-b"),
])
def test_a_cli_staff_change_that_ends_a_grant_tells_the_team(
    settings: Settings, hooks: Hooks, command: tuple[str, ...], engineer: str, team: str,
) -> None:
    grants = asyncio.run(_grants(settings))
    assert hooks.bodies == []  # the services alone told nobody (no notifier there)

    run(*command)  # the CLI delivers what its commit queued before it exits

    revoked = [b for b in hooks.bodies if b["event"] == "access.revoked"]
    assert [(b["access_request"], b["requester"], b["team"]) for b in revoked] == [
        (grants[engineer], engineer, team)]
    assert revoked[0]["state"] == "revoked"


def test_a_cli_staff_change_that_ends_nothing_tells_nobody(settings: Settings, hooks: Hooks) -> None:
    asyncio.run(_grants(settings))
    run("staff", "set-roles", "alice", "--role", "engineer", "--role", "auditor")
    assert hooks.bodies == []
