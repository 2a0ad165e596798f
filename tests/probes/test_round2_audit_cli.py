"""Round-2 probe of `voicelog audit list`: a chain position out of the database's 64-bit range is one line
and exit 2 like every other bad filter (cf7e5de did it for --since/--until), not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app import migrate
from app.cli import cli
from app.config import Settings


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("VOICELOG_DATABASE_URL", raising=False)
    monkeypatch.setenv("VOICELOG_DATA_DIR", str(tmp_path))
    migrate.upgrade(Settings().resolved_database_url)
    return tmp_path


@pytest.mark.parametrize("args", [
    ["--after", str(2**63)],
    ["--after", str(2**64)],
    ["--actor", "staff:a\x00b"],
    ["--since", "0001-01-01T00:00:00+14:00"],
    ["--since", "2030-01-02", "--until", "2030-01-01"],
])
def test_a_bad_filter_is_one_line_and_exit_2(data_dir: Path, args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["audit", "list", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
