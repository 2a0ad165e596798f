"""The real `voicelog` process: a command's machine-readable output is all of its stdout, logs go to stderr
(issue 19: `voicelog audit verify --json | jq` failed on a log line printed before the JSON)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from app.retention.report import CSV_HEADER
from tests.audit.test_cli import cli_env

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["cli_env"]  # the fixture: a filled, checkpointed chain on SQLite and PostgreSQL


def voicelog(*args: str) -> subprocess.CompletedProcess[str]:
    """`voicelog ARGS` in its own process, with the test's VOICELOG_* environment (set by `cli_env`)."""
    return subprocess.run([sys.executable, "-m", "app.cli_main", *args], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=120, check=False)


def test_audit_verify_json_is_the_whole_stdout_and_its_log_line_is_on_stderr(cli_env: Path) -> None:
    done = voicelog("audit", "verify", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["ok"], result["head_seq"]) == (True, 26)
    assert "audit.verified" in done.stderr


def test_a_csv_report_on_stdout_is_the_csv_alone(cli_env: Path) -> None:
    done = voicelog("retention", "report", "--from", "2030-03-04", "--to", "2030-03-05", "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert tuple(rows[0]) == CSV_HEADER
    assert rows[1:]
    assert all(len(row) == len(CSV_HEADER) for row in rows[1:])
    assert '"envelope"' in done.stderr  # the signed envelope goes beside it, never into the CSV


def test_a_json_report_on_stdout_parses_whole(cli_env: Path) -> None:
    done = voicelog("audit", "report", "access-review", "--from", "2030-03-04", "--to", "2030-03-04")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["report"]["grants"]) == 3
