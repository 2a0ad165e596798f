"""The retention report (`retention_storage`) re-verifies with its figures recomputed (issue 19): an honest
report verifies ok in JSON and CSV; an edited figure fails, on its signature if not re-signed, on the
recomputation if re-signed with the audit key; blobs pending are checked against the chain and what cannot
be recomputed is named."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from app.audit.actions import parse_detail_time
from app.audit.cli import audit_cli
from app.audit.reports.entries import Period
from app.audit.reports.retention_storage import CSV_HEADER
from app.audit.reports.service import ReportFormat, SignedReportOutput
from app.audit.reports.signing import report_content, sign_report, to_csv
from app.audit.service import ChainHead
from app.retention.report import generate_retention_report
from tests.retention.test_report import purged_world
from tests.retention.world import World


async def _report(world: World, period: Period, fmt: ReportFormat) -> SignedReportOutput:
    async with world.factory() as session:
        output = await generate_retention_report(
            session=session, clock=world.clock, keyring=world.audit_runtime().keyring, period=period, fmt=fmt,
            retention_days=30,
        )
        await session.commit()
    return output


def _resigned(world: World, envelope: dict[str, Any], content: bytes) -> dict[str, Any]:
    """What someone holding the audit signing key could sign: the same envelope over other content."""
    generated_at = parse_detail_time(envelope["generated_at"])
    signed = sign_report(kind=envelope["kind"], fmt=envelope["format"], content=content, period=envelope["period"],
                         head=ChainHead(envelope["head"]["seq"], envelope["head"]["hash"]), generated_at=generated_at,
                         key=world.audit_runtime().keyring.signing_key(generated_at))
    return signed.sidecar()


async def _verify(world: World, path: Path) -> tuple[int, dict[str, Any]]:
    env = {"VOICELOG_DATABASE_URL": world.url, "VOICELOG_DATA_DIR": str(world.data_dir)}
    result = await asyncio.to_thread(CliRunner().invoke, audit_cli, ["report", "verify", str(path)], env=env)
    return result.exit_code, json.loads(result.stdout)


async def test_an_honest_json_report_verifies_and_an_edited_figure_does_not(world: World, tmp_path: Path) -> None:
    period = await purged_world(world)
    output = await _report(world, period, ReportFormat.JSON)
    saved = tmp_path / "retention.json"
    saved.write_bytes(output.body())

    code, result = await _verify(world, saved)
    assert (code, result["ok"], result["signature"], result["chain"], result["recomputed"]) == (
        0, True, "ok", "ok", "match")
    assert len(result["unverified"]) == 1
    assert result["unverified"][0].startswith("blobs_pending: whether each listed blob was still undeleted")

    document = json.loads(output.body())
    edited = json.loads(json.dumps(document))
    row = next(d for d in edited["report"]["days"] if d["recordings_purged"])
    row["recordings_purged"] += 1
    saved.write_text(json.dumps(edited))
    code, result = await _verify(world, saved)
    assert (code, result["ok"], result["signature"]) == (1, False, "content_mismatch")

    # Re-signed with the audit key: the signature holds, the recomputation does not.
    resigned = {**edited, **_resigned(world, document["envelope"], report_content(edited["report"]))}
    saved.write_text(json.dumps(resigned))
    code, result = await _verify(world, saved)
    assert (code, result["ok"], result["signature"], result["chain"], result["recomputed"]) == (
        1, False, "ok", "ok", "differs")


async def test_a_listed_pending_blob_must_be_a_purge_in_the_trail(world: World, tmp_path: Path) -> None:
    period = await purged_world(world)
    document = json.loads((await _report(world, period, ReportFormat.JSON)).body())
    report = document["report"]
    (pending,) = report["blobs_pending"]
    invented = {**pending, "request_id": "never-purged"}
    report["blobs_pending"].append(invented)
    report["totals"]["blobs_pending"] += 1
    row = next(d for d in report["days"] if d["blobs_pending"])
    row["blobs_pending"] += 1
    saved = tmp_path / "retention.json"
    saved.write_text(json.dumps({**document, **_resigned(world, document["envelope"], report_content(report))}))
    code, result = await _verify(world, saved)
    assert (code, result["signature"], result["recomputed"]) == (1, "ok", "differs")

    # A count that is not the list's.
    report["blobs_pending"].remove(invented)
    saved.write_text(json.dumps({**document, **_resigned(world, document["envelope"], report_content(report))}))
    code, result = await _verify(world, saved)
    assert (code, result["recomputed"]) == (1, "differs")


async def test_an_honest_csv_report_verifies_and_edited_figures_do_not(world: World, tmp_path: Path) -> None:
    period = await purged_world(world)
    output = await _report(world, period, ReportFormat.CSV)
    saved, sidecar = tmp_path / "retention.csv", tmp_path / "retention.csv.sig.json"
    saved.write_bytes(output.body())
    sidecar.write_text(json.dumps(output.signed.sidecar()))

    code, result = await _verify(world, saved)
    assert (code, result["ok"], result["signature"], result["chain"], result["recomputed"]) == (
        0, True, "ok", "ok", "match")
    assert [u.split(":")[0] for u in result["unverified"]] == ["blobs_pending"]

    rows = list(csv.reader(io.StringIO(output.body().decode())))
    purged, pending = CSV_HEADER.index("recordings_purged"), CSV_HEADER.index("blobs_pending")
    line = next(n for n, r in enumerate(rows[1:], 1) if r[purged] != "0")

    def edited(column: int, value: str) -> bytes:
        changed = [list(r) for r in rows[1:]]
        changed[line - 1][column] = value
        return to_csv(CSV_HEADER, changed)

    saved.write_bytes(edited(purged, str(int(rows[line][purged]) + 1)))
    code, result = await _verify(world, saved)
    assert (code, result["signature"]) == (1, "content_mismatch")

    for column, value in ((purged, str(int(rows[line][purged]) + 1)), (pending, str(int(rows[line][purged]) + 1))):
        content = edited(column, value)
        saved.write_bytes(content)
        sidecar.write_text(json.dumps(_resigned(world, output.signed.envelope, content)))
        code, result = await _verify(world, saved)
        assert (code, result["signature"], result["chain"], result["recomputed"]) == (1, "ok", "ok", "differs")


async def test_a_report_made_on_an_empty_chain_verifies(world: World, tmp_path: Path) -> None:
    """A fresh install's first report is signed at head 0, the chain's genesis: nothing to find, nothing missing."""
    day = world.clock.now().date()
    output = await _report(world, Period(day, day), ReportFormat.JSON)
    assert output.signed.envelope["head"] == {"seq": 0, "hash": "0" * 64}
    saved = tmp_path / "retention.json"
    saved.write_bytes(output.body())
    code, result = await _verify(world, saved)
    assert (code, result["ok"], result["chain"], result["recomputed"]) == (0, True, "ok", "match")
