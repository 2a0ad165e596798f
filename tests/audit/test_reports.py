"""Report figures against hand-built scenarios: known grants, reads, denials, purges and key destruction."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.audit.actions import Actor, AuditAction, Subjects, detail_time, kek_bucket
from app.audit.keys import FileKeyring
from app.audit.reports.access_review import AccessReviewParams
from app.audit.reports.entries import Period
from app.audit.reports.service import ReportFormat, ReportKind, generate_report, verify_report
from app.audit.reports.signing import report_content
from app.audit.service import ENTRIES, append_entry, integrate_pending
from app.clock import ManualClock
from tests.audit.scenario import Step
from tests.fixtures.audit import AuditDb, disable_audit_triggers


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def _write(db: AuditDb, timeline: list[tuple[str, Step]]) -> ManualClock:
    """Append the steps at their times (one transaction each), chained."""
    ordered = sorted(timeline, key=lambda item: t(item[0]))
    clock = ManualClock(t(ordered[0][0]))
    for when, step in ordered:
        clock.advance(t(when) - clock.now())
        async with db.factory() as session:
            await append_entry(session=session, clock=clock, actor=step.actor, action=step.action,
                               subjects=step.subjects, detail=step.detail)
            await session.commit()
    async with db.factory() as session:
        await integrate_pending(session, wait=True, limit=10_000)
        await session.commit()
    return clock


def request(who: str, grant: str, at: str, rids: list[str], duration_s: int = 3600) -> tuple[str, Step]:
    return at, Step(Actor.staff(who), AuditAction.ACCESS_REQUESTED, Subjects(grant=grant, ticket="T-1"),
                    {"request_ids": rids, "justification": f"{who} debugging T-1", "duration_s": duration_s})


def approve(who: str, requester: str, grant: str, at: str, expires: str) -> tuple[str, Step]:
    return at, Step(Actor.staff(who), AuditAction.ACCESS_APPROVED, Subjects(grant=grant),
                    {"requester": requester, "expires_at": detail_time(t(expires))})


def deny(who: str, requester: str, grant: str, at: str) -> tuple[str, Step]:
    return at, Step(Actor.staff(who), AuditAction.ACCESS_DENIED, Subjects(grant=grant),
                    {"requester": requester, "reason": "not_justified"})


def end(action: AuditAction, grant: str, at: str) -> tuple[str, Step]:
    return at, Step(Actor.system(), action, Subjects(grant=grant))


def read(who: str, grant: str, rid: str, at: str, size: int, saw: str, part: str = "audio_inbound"
         ) -> tuple[str, Step]:
    return at, Step(Actor.staff(who), AuditAction.RECORDING_READ, Subjects(request_id=rid, grant=grant, saw=saw),
                    {"bytes": size, "part": part})


def read_denied(who: str, rid: str, at: str, reason: str, grant: str | None = None) -> tuple[str, Step]:
    return at, Step(Actor.staff(who), AuditAction.RECORDING_READ_DENIED,
                    Subjects(request_id=rid, grant=grant, saw="saw-a"), {"reason": reason})


ACCESS_TIMELINE = [
    # G0: requested and approved before the period, read inside it.
    request("alice", "G0", "2030-03-03T20:00:00", ["r0"]),
    approve("bob", "alice", "G0", "2030-03-03T20:10:00", "2030-03-04T20:10:00"),
    read("alice", "G0", "r0", "2030-03-04T09:00:00", 400, "saw-a"),
    # G1: an ordinary grant, used for 25 minutes, then expired.
    request("alice", "G1", "2030-03-04T10:00:00", ["r1", "r2"]),
    approve("bob", "alice", "G1", "2030-03-04T10:05:00", "2030-03-04T11:05:00"),
    read("alice", "G1", "r1", "2030-03-04T10:10:00", 1000, "saw-a"),
    read("alice", "G1", "r1", "2030-03-04T10:20:00", 200, "saw-a", "timeline"),
    read("alice", "G1", "r2", "2030-03-04T10:30:00", 500, "saw-b"),
    end(AuditAction.ACCESS_EXPIRED, "G1", "2030-03-04T11:05:00"),
    # G2: approved 30 s after the request, at night, never used.
    request("dave", "G2", "2030-03-04T22:00:00", ["r6"]),
    approve("bob", "dave", "G2", "2030-03-04T22:00:30", "2030-03-04T23:00:00"),
    end(AuditAction.ACCESS_EXPIRED, "G2", "2030-03-04T23:00:00"),
    # G3: an attempt outside the grant, a read, revocation, and a read after it (a policy failure).
    request("alice", "G3", "2030-03-05T09:00:00", ["r3"]),
    approve("carol", "alice", "G3", "2030-03-05T09:10:00", "2030-03-05T10:10:00"),
    read_denied("alice", "r4", "2030-03-05T09:15:00", "request_not_in_grant", grant="G3"),
    read("alice", "G3", "r3", "2030-03-05T09:20:00", 700, "saw-a"),
    end(AuditAction.ACCESS_REVOKED, "G3", "2030-03-05T09:30:00"),
    read("alice", "G3", "r3", "2030-03-05T09:40:00", 100, "saw-a"),
    # G4: approved by its own requester.
    request("erin", "G4", "2030-03-05T11:00:00", ["r7"], duration_s=86400),
    approve("erin", "erin", "G4", "2030-03-05T11:30:00", "2030-03-06T11:30:00"),
    # G5..G7: frank denied three times.
    request("frank", "G5", "2030-03-05T12:00:00", ["r8"]),
    deny("bob", "frank", "G5", "2030-03-05T12:05:00"),
    request("frank", "G6", "2030-03-05T13:00:00", ["r8"]),
    deny("bob", "frank", "G6", "2030-03-05T13:05:00"),
    request("frank", "G7", "2030-03-05T14:00:00", ["r8"]),
    deny("bob", "frank", "G7", "2030-03-05T14:05:00"),
    # G8: alice and bob again.
    request("alice", "G8", "2030-03-05T15:00:00", ["r5"]),
    approve("bob", "alice", "G8", "2030-03-05T15:02:00", "2030-03-05T16:02:00"),
    read("alice", "G8", "r5", "2030-03-05T15:10:00", 300, "saw-a"),
    # Outside any grant, and after the period (not in the review).
    read_denied("gina", "r9", "2030-03-05T16:00:00", "no_grant"),
    read("alice", "G8", "r5", "2030-03-06T09:00:00", 999, "saw-a"),
]
REVIEW_PARAMS = AccessReviewParams(dominant_pair_percent=40, dominant_pair_min_approvals=2)


@pytest.fixture
async def access_scenario(audit_db: AuditDb) -> ManualClock:
    return await _write(audit_db, ACCESS_TIMELINE)


async def _review(db: AuditDb, clock: ManualClock, keyring: FileKeyring, fmt: ReportFormat = ReportFormat.JSON,
                  kind: ReportKind = ReportKind.ACCESS_REVIEW, period: Period | None = None) -> Any:
    async with db.factory() as session:
        output = await generate_report(
            session=session, clock=clock, keyring=keyring, kind=kind, fmt=fmt,
            period=period or Period(date(2030, 3, 4), date(2030, 3, 5)), params=REVIEW_PARAMS, retention_days=30,
            requested_by=Actor.staff("audrey"),
        )
        await session.commit()
    return output


async def test_access_review_lists_every_grant_with_its_figures(
    audit_db: AuditDb, access_scenario: ManualClock, audit_keyring: FileKeyring
) -> None:
    output = await _review(audit_db, access_scenario, audit_keyring)
    report = output.report
    grants = {g["grant"]: g for g in report["grants"]}
    assert list(grants) == ["G0", "G1", "G2", "G3", "G4", "G5", "G6", "G7", "G8"]
    g1 = grants["G1"]
    assert (g1["requester"], g1["approver"], g1["ticket"], g1["decision"]) == ("alice", "bob", "T-1", "approved")
    assert g1["request_ids"] == ["r1", "r2"]
    assert g1["justification"] == "alice debugging T-1"
    assert (g1["requested_duration_s"], g1["granted_duration_s"], g1["used_duration_s"]) == (3600, 3600, 1500)
    assert (g1["read_count"], g1["bytes_read"], g1["devices"]) == (3, 1700, ["saw-a", "saw-b"])
    assert (g1["ended"], g1["ended_at"]) == ("expired", "2030-03-04T11:05:00.000000Z")
    assert [r["bytes"] for r in g1["reads"]] == [1000, 200, 500]
    assert g1["anomalies"] == ["dominant_pair"]
    assert grants["G0"]["read_count"] == 1  # requested before the period, used in it
    assert grants["G8"]["read_count"] == 1  # the read after the period is not counted
    assert grants["G5"]["decision"] == "denied"
    assert grants["G5"]["approver"] is None
    assert report["totals"] == {"grants": 9, "approved": 6, "denied": 3, "pending": 0, "reads": 7,
                                "bytes_read": 3200, "denied_reads": 2, "anomalies": 9}


async def test_access_review_flags_the_anomalies(
    audit_db: AuditDb, access_scenario: ManualClock, audit_keyring: FileKeyring
) -> None:
    report = (await _review(audit_db, access_scenario, audit_keyring)).report
    flags = {g["grant"]: g["anomalies"] for g in report["grants"]}
    assert flags == {
        "G0": ["off_hours_approval"],
        "G1": ["dominant_pair"],
        "G2": ["fast_approval", "grant_unused", "off_hours_approval"],
        "G3": ["read_outside_grant", "read_outside_window"],
        "G4": ["self_approval"],
        "G5": ["repeated_denials"], "G6": ["repeated_denials"], "G7": ["repeated_denials"],
        "G8": ["dominant_pair"],
    }
    anomalies = sorted((a["code"], a["grant"] or a["requester"]) for a in report["anomalies"])
    assert anomalies == [
        ("dominant_pair", "alice"), ("fast_approval", "G2"), ("grant_unused", "G2"), ("off_hours_approval", "G0"),
        ("off_hours_approval", "G2"), ("read_outside_grant", "G3"), ("read_outside_window", "G3"),
        ("repeated_denials", "frank"), ("self_approval", "G4"),
    ]
    pair = next(a for a in report["anomalies"] if a["code"] == "dominant_pair")
    assert (pair["requester"], pair["approver"], pair["detail"]) == ("alice", "bob", "2 of 5 approvals in the period")
    assert [d["by"] for d in report["denied_reads_without_grant"]] == ["gina"]


async def test_access_review_as_csv_is_one_row_per_grant(
    audit_db: AuditDb, access_scenario: ManualClock, audit_keyring: FileKeyring
) -> None:
    output = await _review(audit_db, access_scenario, audit_keyring, ReportFormat.CSV)
    rows = list(csv.DictReader(io.StringIO(output.body().decode())))
    assert [r["grant"] for r in rows] == ["G0", "G1", "G2", "G3", "G4", "G5", "G6", "G7", "G8"]
    g2 = rows[2]
    assert (g2["requester"], g2["approver"], g2["read_count"], g2["anomalies"]) == (
        "dave", "bob", "0", "fast_approval grant_unused off_hours_approval")
    assert rows[1]["request_ids"] == "r1 r2"
    assert output.signed.envelope["content_sha256"]


async def test_a_report_is_signed_at_its_chain_head_and_re_verifies(
    audit_db: AuditDb, access_scenario: ManualClock, audit_keyring: FileKeyring
) -> None:
    output = await _review(audit_db, access_scenario, audit_keyring)
    document = json.loads(output.body())
    assert document["envelope"]["head"] == document["report"]["head"]
    assert document["envelope"]["head"]["seq"] == len(ACCESS_TIMELINE)
    async with audit_db.factory() as session:
        await integrate_pending(session, wait=True)  # PostgreSQL queued the report.generated entry
        audited = (await session.execute(select(ENTRIES.c.actor_id, ENTRIES.c.detail).where(
            ENTRIES.c.action == AuditAction.REPORT_GENERATED.value))).one()
        assert audited.actor_id == "audrey"
        assert json.loads(audited.detail)["head_seq"] == len(ACCESS_TIMELINE)

        async def check(envelope: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
            result = await verify_report(
                session=session, envelope=envelope, signature=document["signature"], content=report_content(report),
                keys=audit_keyring.public_keys(), params=AccessReviewParams(), retention_days=30,
                now=access_scenario.now(),
            )
            return result.to_json()

        # Later entries do not change a report computed at its head: it recomputes the same.
        assert await check(document["envelope"], document["report"]) == {
            "ok": True, "signature": "ok", "chain": "ok", "recomputed": "match", "head_seq": len(ACCESS_TIMELINE),
            "unverified": []}
        doctored = json.loads(json.dumps(document["report"]))
        doctored["grants"][2]["anomalies"] = []
        assert (await check(document["envelope"], doctored))["signature"] == "content_mismatch"
        await disable_audit_triggers(session)
        await session.execute(ENTRIES.update().where(ENTRIES.c.seq == 5).values(actor_id="mallory"))
        assert (await check(document["envelope"], document["report"]))["chain"] == "edited"


def started(rid: str, region: str, at: str) -> tuple[str, Step]:
    return at, Step(Actor.system(), AuditAction.RECORDING_STARTED,
                    Subjects(request_id=rid, resource="res-1", ticket="T-1"),
                    {"region": region, "started_at": detail_time(t(at)), "kek_bucket": kek_bucket(t(at))})


def purged(rid: str, region: str, start: str, at: str, reason: str = "retention") -> tuple[str, Step]:
    age = int((t(at) - t(start)).total_seconds())
    return at, Step(Actor.system(), AuditAction.RECORDING_PURGED, Subjects(request_id=rid),
                    {"region": region, "started_at": detail_time(t(start)), "age_s": age, "reason": reason})


def kek_destroyed(region: str, bucket: str, at: str) -> tuple[str, Step]:
    return at, Step(Actor.system(), AuditAction.KEY_DESTROYED, Subjects(),
                    {"key_kind": "kek", "region": region, "bucket": bucket})


def dek_destroyed(rid: str, region: str, at: str) -> tuple[str, Step]:
    return at, Step(Actor.system(), AuditAction.KEY_DESTROYED, Subjects(request_id=rid),
                    {"key_kind": "dek", "region": region})


RETENTION_TIMELINE = [
    started("rA", "eastus", "2030-03-04T10:15:00"),
    started("rB", "eastus", "2030-03-04T10:45:00"),
    started("rC", "westeurope", "2030-03-05T08:30:00"),
    started("rD", "eastus", "2030-03-05T12:00:00"),
    # On time: the eastus 10:00 bucket is thirty days old at 10:00; it is purged and its KEK destroyed.
    purged("rA", "eastus", "2030-03-04T10:15:00", "2030-04-03T10:00:00"),
    purged("rB", "eastus", "2030-03-04T10:45:00", "2030-04-03T10:00:00"),
    kek_destroyed("eastus", "2030-03-04T10", "2030-04-03T10:00:00"),
    # An erasure on request: purged at once, its DEK destroyed.
    started("rE", "eastus", "2030-04-03T09:00:00"),
    purged("rE", "eastus", "2030-04-03T09:00:00", "2030-04-03T09:30:00", reason="erasure"),
    dek_destroyed("rE", "eastus", "2030-04-03T09:30:00"),
    # Late: rC and its bucket an hour after their deadlines; rD and its bucket never.
    purged("rC", "westeurope", "2030-03-05T08:30:00", "2030-04-04T10:00:00"),
    kek_destroyed("westeurope", "2030-03-05T08", "2030-04-04T10:00:00"),
    started("rF", "westeurope", "2030-04-05T07:00:00"),
]


async def test_retention_audit_per_region_and_day(audit_db: AuditDb, audit_keyring: FileKeyring) -> None:
    clock = await _write(audit_db, RETENTION_TIMELINE)
    clock.advance(t("2030-04-05T12:00:00") - clock.now())
    output = await _review(audit_db, clock, audit_keyring, kind=ReportKind.RETENTION,
                           period=Period(date(2030, 4, 3), date(2030, 4, 5)))
    report = output.report
    days = {(d["region"], d["day"]): d for d in report["days"]}
    assert sorted(days) == [(r, f"2030-04-0{n}") for r in ("eastus", "westeurope") for n in (3, 4, 5)]
    thirty_days = 30 * 86400
    assert days[("eastus", "2030-04-03")] == {
        "region": "eastus", "day": "2030-04-03", "recordings_started": 1, "recordings_purged": 3,
        "purged_for_retention": 2, "purged_for_erasure": 1, "max_age_at_purge_s": thirty_days - 15 * 60,
        "min_age_at_purge_s": 1800, "purged_over_age": 0, "kek_buckets_destroyed": 1, "deks_destroyed": 1,
        "overdue_recordings": 0, "overdue_kek_buckets": 0, "within_limit": True,
    }
    eastus_4 = days[("eastus", "2030-04-04")]
    assert (eastus_4["overdue_recordings"], eastus_4["overdue_kek_buckets"], eastus_4["within_limit"]) == (1, 1, False)
    west_4 = days[("westeurope", "2030-04-04")]
    assert (west_4["recordings_purged"], west_4["max_age_at_purge_s"], west_4["purged_over_age"]) == (
        1, thirty_days + 90 * 60, 1)
    assert (west_4["kek_buckets_destroyed"], west_4["overdue_recordings"], west_4["overdue_kek_buckets"]) == (1, 1, 1)
    assert days[("westeurope", "2030-04-05")]["recordings_started"] == 1
    assert report["totals"] == {
        "recordings_started": 2, "recordings_purged": 4, "kek_buckets_destroyed": 2, "deks_destroyed": 1,
        "max_age_at_purge_s": thirty_days + 90 * 60, "overdue_recordings": 2, "overdue_kek_buckets": 2,
        "purged_over_age": 1, "within_limit": False,
    }
    assert sorted((o["request_id"], o["purged_at"]) for o in report["overdue_recordings"]) == [
        ("rC", "2030-04-04T10:00:00.000000Z"), ("rD", None)]
    assert sorted((o["region"], o["bucket"]) for o in report["overdue_kek_buckets"]) == [
        ("eastus", "2030-03-05T12"), ("westeurope", "2030-03-05T08")]

    csv_output = await _review(audit_db, clock, audit_keyring, ReportFormat.CSV, kind=ReportKind.RETENTION,
                               period=Period(date(2030, 4, 3), date(2030, 4, 5)))
    rows = list(csv.DictReader(io.StringIO(csv_output.body().decode())))
    assert len(rows) == 6
    assert rows[0]["max_age_at_purge_s"] == str(thirty_days - 15 * 60)


async def test_a_recording_on_time_is_not_overdue_before_its_deadline(
    audit_db: AuditDb, audit_keyring: FileKeyring
) -> None:
    clock = await _write(audit_db, [started("rX", "eastus", "2030-03-05T12:00:00")])
    clock.advance(t("2030-04-04T12:00:00") - clock.now())  # exactly at the deadline: not late yet
    output = await _review(audit_db, clock, audit_keyring, kind=ReportKind.RETENTION,
                           period=Period(date(2030, 4, 4), date(2030, 4, 4)))
    assert output.report["totals"]["overdue_recordings"] == 0


def test_a_period_is_whole_utc_days() -> None:
    period = Period(date(2030, 3, 4), date(2030, 3, 5))
    assert (period.start, period.end) == (t("2030-03-04T00:00:00"), t("2030-03-06T00:00:00"))
    with pytest.raises(Exception, match="before"):
        Period(date(2030, 3, 5), date(2030, 3, 4))
    assert timedelta(days=2) == period.end - period.start
