"""`voicelog staff ...` and `voicelog teams ...` against the configured database, audited as system:cli."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from app import migrate
from app.config import Settings
from app.identity.staff.cli import staff_cli, teams_cli

cli = typer.Typer()
cli.add_typer(staff_cli, name="staff")
cli.add_typer(teams_cli, name="teams")


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VOICELOG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("VOICELOG_DATABASE_URL", raising=False)
    (tmp_path / "data").mkdir()
    migrate.upgrade(Settings().resolved_database_url)
    return tmp_path / "data" / "voicelog.db"


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def audit(database: Path) -> list[tuple[str, str, dict[str, str]]]:
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT action, actor_type || ':' || actor_id, detail FROM audit_entries ORDER BY seq")
        return [(action, actor, json.loads(detail)) for action, actor, detail in rows]


def test_add_teams_and_staff_then_list_them(database: Path) -> None:
    run("teams", "add", "voice-emea")
    run("staff", "add", "mona", "--name", "Mona", "--team", "voice-emea", "--role", "manager")
    run("staff", "add", "alice", "--name", "Alice", "--team", "voice-emea", "--role", "engineer")
    run("teams", "add-manager", "voice-emea", "mona")

    teams = json.loads(run("teams", "list", "--json"))
    staff = json.loads(run("staff", "list", "--team", "voice-emea", "--json"))

    assert [(t["name"], t["managers"]) for t in teams] == [("voice-emea", ["mona"])]
    assert {s["subject"]: s["roles"] for s in staff} == {"alice": ["engineer"], "mona": ["manager"]}
    assert {s["team_id"] for s in staff} == {teams[0]["id"]}
    assert "alice\tAlice" in run("staff", "list")


def test_set_roles_set_team_and_deactivate_are_audited_as_the_cli(database: Path) -> None:
    run("teams", "add", "voice-apac")
    run("staff", "add", "bob", "--name", "Bob", "--role", "engineer")
    run("staff", "set-roles", "bob", "--role", "engineer", "--role", "auditor")
    run("staff", "set-team", "bob", "voice-apac")
    run("staff", "deactivate", "bob")

    listed = json.loads(run("staff", "list", "--json"))
    assert listed[0]["roles"] == ["auditor", "engineer"]
    assert listed[0]["active"] is False
    assert json.loads(run("staff", "list", "--active-only", "--json")) == []
    entries = audit(database)
    assert {actor for _, actor, _ in entries} == {"system:cli"}
    assert [d.get("change") for _, _, d in entries] == [
        "team_created", "created", "role_added", "role_added", "team_changed", "deactivated"]


def test_errors_exit_2_with_their_code(database: Path) -> None:
    runner = CliRunner()
    unknown_team = runner.invoke(cli, ["staff", "add", "carl", "--name", "C", "--team", "nope"])
    not_manager = runner.invoke(cli, ["teams", "add", "t1", "--manager", "ghost"])
    no_roles = runner.invoke(cli, ["staff", "set-roles", "carl"])
    bad_subject = runner.invoke(cli, ["staff", "add", "carl/evil", "--name", "C"])

    assert (unknown_team.exit_code, "team_not_found" in unknown_team.output) == (2, True)
    assert (not_manager.exit_code, "not_a_manager" in not_manager.output) == (2, True)
    assert no_roles.exit_code == 2
    assert (bad_subject.exit_code, "invalid_input" in bad_subject.output) == (2, True)
    assert json.loads(CliRunner().invoke(cli, ["teams", "list", "--json"]).output) == []  # rolled back
