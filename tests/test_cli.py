"""The CLI manages resources and the schema against the configured database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VOICELOG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("VOICELOG_DATABASE_URL", raising=False)
    return tmp_path / "data"


def test_db_upgrade_then_resources_add_and_list_json(env: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    added = runner.invoke(cli, ["resources", "add", "fabrikam", "--region", "westeurope",
                                "--upstream", "https://fabrikam.services.ai.azure.com", "--tenant", "t-9"])
    assert added.exit_code == 0, added.output
    listed = runner.invoke(cli, ["resources", "list", "--json"])
    assert listed.exit_code == 0
    (resource,) = json.loads(listed.output)
    assert resource["name"] == "fabrikam"
    assert resource["upstream_endpoint"] == "wss://fabrikam.services.ai.azure.com"
    assert (env / "voicelog.db").exists()


def test_resources_add_with_unknown_region_exits_2_with_the_code(env: Path) -> None:
    runner = CliRunner()
    runner.invoke(cli, ["db", "upgrade"])
    result = runner.invoke(cli, ["resources", "add", "x", "--region", "mars", "--upstream", "wss://x",
                                 "--tenant", "t"])
    assert result.exit_code == 2
    assert "unknown_region" in result.output


def test_db_downgrade_to_base(env: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(cli, ["db", "downgrade", "base"]).exit_code == 0
