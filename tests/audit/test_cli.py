"""`voicelog audit ...`: verify (non-zero exit on damage), signed reports in JSON and CSV, checkpoint, keys."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.audit.cli import audit_cli
from app.audit.entry_mac import bind_entry_mac, build_entry_mac_keys
from app.audit.keys import FileKeyring
from app.audit.settings import AuditSettings
from app.clock import ManualClock
from app.db import create_engine, create_session_factory
from tests.audit import tamper
from tests.audit.scenario import append_and_chain, example_steps
from tests.fixtures.audit import AUDIT_EPOCH, disable_audit_triggers

runner = CliRunner()


async def _fill(url: str, data_dir: Path, entries_sets: int = 3) -> None:
    """Entries written as a service of this deployment writes them: with the data directory's entry key."""
    engine = create_engine(url)
    keys = build_entry_mac_keys(AuditSettings(), data_dir)
    assert keys is not None
    clock = ManualClock(AUDIT_EPOCH)
    try:
        async with bind_entry_mac(create_session_factory(engine), keys)() as session:
            for n in range(entries_sets):
                await append_and_chain(session, clock, example_steps(n, clock.now()))
            await session.commit()
    finally:
        await engine.dispose()


async def _delete(url: str, seq: int) -> None:
    engine = create_engine(url)
    try:
        async with create_session_factory(engine)() as session:
            await disable_audit_triggers(session)
            await tamper.delete(session, seq)
            await session.commit()
    finally:
        await engine.dispose()


@pytest.fixture
def cli_env(audit_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VOICELOG_DATABASE_URL", audit_db_url)
    monkeypatch.setenv("VOICELOG_DATA_DIR", str(tmp_path))
    asyncio.run(_fill(audit_db_url, tmp_path))
    result = runner.invoke(audit_cli, ["checkpoint"])
    assert result.exit_code == 0, result.output
    assert "checkpoint 1 signs entry 26" in result.output
    return tmp_path


def test_verify_exits_zero_on_an_intact_chain(cli_env: Path) -> None:
    result = runner.invoke(audit_cli, ["verify"])
    assert result.exit_code == 0, result.output
    assert "ok: entries 1..26 verified" in result.output
    assert "sealed through 26" in result.output
    assert (cli_env / "audit-checkpoints.jsonl").read_text().count("\n") == 1


def test_verify_reports_the_highest_seq_of_each_mac_key_to_pin_after_a_rotation(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/AUDIT.md, "Entry MACs": rotate, wait for every process to run the new key, pin the old key's last seq
    at the highest seq verify reports for it."""
    old = build_entry_mac_keys(AuditSettings(), cli_env)
    assert old is not None
    before = json.loads(runner.invoke(audit_cli, ["verify", "--json"]).output)
    assert before["mac_keys"] == [{"key_id": old.current_id, "current": True, "last_seq": None, "highest_seq": 26}]
    monkeypatch.setenv("VOICELOG_AUDIT__ENTRY_MAC_KEY", base64.b64encode(bytes(range(32))).decode())
    retired = base64.b64encode(old.keys[old.current_id]).decode()
    monkeypatch.setenv("VOICELOG_AUDIT__RETIRED_ENTRY_MAC_KEYS", json.dumps([{"key": retired, "last_seq": 26}]))
    result = runner.invoke(audit_cli, ["verify"])
    assert result.exit_code == 0, result.output
    assert "entry MAC key hmac:630dcd2966c43366 (current): no entry" in result.output
    assert f"entry MAC key {old.current_id} (retired, last seq 26): highest seq 26" in result.output


def test_verify_names_the_damage_and_exits_one(cli_env: Path, audit_db_url: str) -> None:
    asyncio.run(_delete(audit_db_url, 7))
    result = runner.invoke(audit_cli, ["verify"])
    assert result.exit_code == 1
    assert "DAMAGE: deleted at seq 7" in result.output
    as_json = runner.invoke(audit_cli, ["verify", "--json", "--from", "3"])
    assert as_json.exit_code == 1
    assert json.loads(as_json.output)["damage"] == {
        "kind": "deleted", "seq": 7, "checkpoint": None, "message": "entries 7 are missing"}


def test_verify_trusts_only_the_public_keys_it_is_given(cli_env: Path, tmp_path: Path) -> None:
    keys = runner.invoke(audit_cli, ["keys"])
    assert keys.exit_code == 0
    trusted = tmp_path / "trusted.json"
    trusted.write_text(keys.output)
    assert runner.invoke(audit_cli, ["verify", "--public-keys", str(trusted)]).exit_code == 0
    stranger = FileKeyring(tmp_path / "stranger")
    stranger.signing_key(AUDIT_EPOCH)
    other = tmp_path / "other.json"
    other.write_text(json.dumps(stranger.public_keys().to_json()))
    result = runner.invoke(audit_cli, ["verify", "--public-keys", str(other)])
    assert result.exit_code == 1
    assert "bad_signature" in result.output


def test_reports_in_json_and_csv_and_their_re_verification(cli_env: Path, tmp_path: Path) -> None:
    as_json = runner.invoke(audit_cli, ["report", "access-review", "--from", "2030-03-04", "--to", "2030-03-04"])
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.output)
    assert len(document["report"]["grants"]) == 3
    saved = tmp_path / "review.json"
    saved.write_text(as_json.output)
    checked = runner.invoke(audit_cli, ["report", "verify", str(saved)])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output)["recomputed"] == "match"

    document["report"]["grants"][0]["read_count"] = 0
    saved.write_text(json.dumps(document))
    assert runner.invoke(audit_cli, ["report", "verify", str(saved)]).exit_code == 1

    out = tmp_path / "retention.csv"
    as_csv = runner.invoke(audit_cli, ["report", "retention", "--from", "2030-03-04", "--to", "2030-03-05",
                                       "--format", "csv", "--output", str(out)])
    assert as_csv.exit_code == 0, as_csv.output
    assert out.read_text().startswith("region,day,recordings_started")
    assert (tmp_path / "retention.csv.sig.json").exists()
    checked = runner.invoke(audit_cli, ["report", "verify", str(out)])
    assert checked.exit_code == 0, checked.output
    out.write_text(out.read_text().replace("eastus", "westus"))
    assert runner.invoke(audit_cli, ["report", "verify", str(out)]).exit_code == 1


def test_keys_can_be_rotated_and_old_checkpoints_still_verify(cli_env: Path) -> None:
    rotated = runner.invoke(audit_cli, ["keys", "--rotate"])
    assert rotated.exit_code == 0
    assert len(json.loads(rotated.output)["keys"]) == 2
    assert runner.invoke(audit_cli, ["checkpoint"]).exit_code == 0
    assert runner.invoke(audit_cli, ["verify"]).exit_code == 0


def test_an_unreachable_database_is_exit_code_two(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICELOG_DATABASE_URL", "postgresql+asyncpg://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("VOICELOG_DATA_DIR", str(tmp_path))
    result = runner.invoke(audit_cli, ["verify"])
    assert result.exit_code == 2
