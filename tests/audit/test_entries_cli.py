"""`voicelog audit list | tail` (issue 19): an operator on the host reads entries from the database, filtered,
as a table or as JSON on a clean stdout; `tail --follow` prints entries as they are chained."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

from typer.testing import CliRunner

from app.audit.actions import Actor, AuditAction, Subjects
from app.audit.cli import audit_cli
from app.audit.entry_mac import bind_entry_mac, build_entry_mac_keys
from app.audit.settings import AuditSettings
from app.clock import ManualClock
from app.db import create_engine, create_session_factory
from tests.audit.scenario import Step, append_and_chain
from tests.audit.test_cli import cli_env
from tests.audit.test_cli_stdout import voicelog
from tests.fixtures.audit import AUDIT_EPOCH

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["cli_env"]  # the fixture: 26 entries on SQLite and PostgreSQL, checkpoint 1 signs entry 26
runner = CliRunner()
REVOKED = Step(Actor.staff("alice"), AuditAction.ACCESS_REVOKED, Subjects(grant="grant-late"),
               {"reason": "ticket_closed"})


async def _append(url: str, data_dir: Path, step: Step) -> None:
    """One more entry, written and chained as the service does (with this deployment's entry MAC key)."""
    engine = create_engine(url)
    keys = build_entry_mac_keys(AuditSettings(), data_dir)
    assert keys is not None
    try:
        async with bind_entry_mac(create_session_factory(engine), keys)() as session:
            await append_and_chain(session, ManualClock(AUDIT_EPOCH), [step])
            await session.commit()
    finally:
        await engine.dispose()


def test_list_json_is_the_whole_stdout_and_filters_by_action(cli_env: Path) -> None:
    done = voicelog("audit", "list", "--json")
    assert done.returncode == 0, done.stderr
    page = json.loads(done.stdout)
    assert [e["seq"] for e in page["entries"]] == list(range(1, 27))
    assert (page["head_seq"], page["sealed_through"], page["next_after"]) == (26, 26, None)
    assert not any(e["past_last_checkpoint"] for e in page["entries"])

    approved = json.loads(runner.invoke(audit_cli, ["list", "--json", "--action", "access.approved"]).stdout)
    assert [e["actor"] for e in approved["entries"]] == [{"type": "staff", "id": "bob"}] * 3
    paged = json.loads(runner.invoke(audit_cli, ["list", "--json", "--after", "20", "--limit", "3"]).stdout)
    assert [e["seq"] for e in paged["entries"]] == [21, 22, 23]
    assert paged["next_after"] == 23


def test_list_prints_a_table_with_chain_position_and_signed_state(cli_env: Path, audit_db_url: str) -> None:
    asyncio.run(_append(audit_db_url, cli_env, REVOKED))
    result = runner.invoke(audit_cli, ["list", "--actor", "staff:alice", "--since", "2030-01-01"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "RECORDED", "(UTC)", "ACTION", "ACTOR", "SUBJECTS", "DETAIL", "SIGNED"]
    assert len(lines) == 1 + 7  # two per round (request, read) and the revocation
    last = lines[-1].split()
    assert (last[0], last[2], last[3], last[4], last[-1]) == (
        "27", "access.revoked", "staff:alice", "grant=grant-late", "no")
    assert lines[-2].split()[-1] == "yes"
    assert "7 entries; chain head 27, signed through 26" in result.stderr


def test_bad_filters_are_one_line_and_exit_two(cli_env: Path) -> None:
    result = runner.invoke(audit_cli, ["list", "--since", "yesterday"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid_audit_filter: 'yesterday' is not a time")
    later = runner.invoke(audit_cli, ["list", "--since", "2030-03-05", "--until", "2030-03-04"])
    assert later.exit_code == 2
    assert "`until` must be later than `since`" in later.stderr
    assert runner.invoke(audit_cli, ["list", "--action", "access.peeked"]).exit_code == 2
    far = runner.invoke(audit_cli, ["list", "--since", "999999d"])
    assert (far.exit_code, far.stderr) == (2, "error: invalid_audit_filter: '999999d' is out of range.\n")


def test_tail_follow_prints_each_new_entry_as_it_is_chained(cli_env: Path, audit_db_url: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli_main", "audit", "tail", "-n", "2", "--follow", "--json",
         "--interval", "0.2"], cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True).start()
    try:
        first = [json.loads(lines.get(timeout=60)) for _ in range(2)]  # a guard against a hang, not a timing
        assert [e["seq"] for e in first] == [25, 26]
        asyncio.run(_append(audit_db_url, cli_env, REVOKED))
        new = json.loads(lines.get(timeout=60))
        assert (new["seq"], new["action"], new["past_last_checkpoint"]) == (27, "access.revoked", True)
    finally:
        process.terminate()
        process.wait(timeout=30)
