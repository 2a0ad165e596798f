"""`voicelog saw register|list|revoke` against the configured database, audited as system:cli."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from app import migrate
from app.access.saw.cli import saw_cli
from app.config import Settings
from app.identity.staff.cli import staff_cli
from tests.fixtures.saw import Issued

cli = typer.Typer()
cli.add_typer(staff_cli, name="staff")
cli.add_typer(saw_cli, name="saw")


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


def test_register_from_a_pem_file_list_and_revoke(
    database: Path, tmp_path: Path, saw_device: Callable[[str], Issued]
) -> None:
    device = saw_device("SAW-9")
    pem = tmp_path / "saw.crt"
    pem.write_text(device.pem)
    run("staff", "add", "alice", "--name", "Alice", "--role", "engineer")

    run("saw", "register", "--owner", "alice", "--label", "SAW-9", "--cert", str(pem))
    (saw,) = json.loads(run("saw", "list", "--json"))
    run("saw", "revoke", saw["id"], "--reason", "lost")

    assert (saw["owner_subject"], saw["cert_sha256"]) == ("alice", device.sha256)
    assert json.loads(run("saw", "list", "--active-only", "--json")) == []
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT action, actor_id, saw_id FROM audit_entries WHERE saw_id IS NOT NULL ORDER BY seq")
        assert list(rows) == [("saw.registered", "cli", saw["id"]), ("saw.revoked", "cli", saw["id"])]


def test_register_errors_exit_2(database: Path) -> None:
    runner = CliRunner()
    neither = runner.invoke(cli, ["saw", "register", "--owner", "alice", "--label", "x"])
    no_owner = runner.invoke(cli, ["saw", "register", "--owner", "ghost", "--label", "x", "--sha256", "ab" * 32])
    bad_reason = runner.invoke(cli, ["saw", "revoke", "some-id", "--reason", "x" * 100])

    assert neither.exit_code == 2
    assert (no_owner.exit_code, "saw_owner_invalid" in no_owner.output) == (2, True)
    assert (bad_reason.exit_code, "invalid_input" in bad_reason.output) == (2, True)
