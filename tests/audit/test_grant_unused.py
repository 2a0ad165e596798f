"""`grant_unused` (issue 19): only a grant that has ended without a read is flagged, never a live one."""

from __future__ import annotations

import json
from datetime import date

from app.audit.actions import Actor, AuditAction, Subjects
from app.audit.keys import FileKeyring
from app.audit.reports.access_review import AccessReviewParams
from app.audit.reports.entries import Period
from app.audit.reports.service import ReportFormat, ReportKind, ReportOutput, generate_report, verify_report
from app.audit.reports.signing import report_content
from app.audit.service import integrate_pending
from app.clock import ManualClock
from tests.audit.scenario import Step
from tests.audit.test_reports import _write, approve, end, request, t
from tests.fixtures.audit import AuditDb

DAY = Period(date(2030, 3, 4), date(2030, 3, 4))
PARAMS = AccessReviewParams()
TIMELINE = [
    # LIVE: approved until 18:00, not read yet at noon.
    request("alice", "LIVE", "2030-03-04T09:00:00", ["r1"]),
    approve("bob", "alice", "LIVE", "2030-03-04T09:10:00", "2030-03-04T18:00:00"),
    # EXPIRED: its expiry time passed at 10:00 (the expiry job has not written access.expired yet).
    request("alice", "EXPIRED", "2030-03-04T08:00:00", ["r2"]),
    approve("bob", "alice", "EXPIRED", "2030-03-04T08:10:00", "2030-03-04T10:00:00"),
    # REVOKED: revoked at 11:00, though it would have run until 20:00.
    request("alice", "REVOKED", "2030-03-04T08:30:00", ["r3"]),
    approve("bob", "alice", "REVOKED", "2030-03-04T08:40:00", "2030-03-04T20:00:00"),
    end(AuditAction.ACCESS_REVOKED, "REVOKED", "2030-03-04T11:00:00"),
    # REFUSED: approved by the manager, refused by the customer at 11:30.
    request("alice", "REFUSED", "2030-03-04T08:50:00", ["r4"]),
    approve("bob", "alice", "REFUSED", "2030-03-04T09:00:00", "2030-03-04T20:00:00"),
    ("2030-03-04T11:30:00", Step(Actor.customer_admin("admin@contoso"), AuditAction.ACCESS_DENIED,
                                 Subjects(grant="REFUSED"), {"requester": "alice", "reason": "customer_refused"})),
]


def unused(report: dict[str, object]) -> list[str]:
    grants = report["grants"]
    assert isinstance(grants, list)
    return sorted(g["grant"] for g in grants if "grant_unused" in g["anomalies"])


async def test_a_live_grant_is_not_flagged_unused_and_an_ended_one_is(
    audit_db: AuditDb, audit_keyring: FileKeyring,
) -> None:
    clock = await _write(audit_db, TIMELINE)
    clock.advance(t("2030-03-04T12:00:00") - clock.now())
    noon = await _review(audit_db, clock, audit_keyring)
    assert unused(noon.report) == ["EXPIRED", "REFUSED", "REVOKED"]

    clock.advance(t("2030-03-04T18:00:00") - clock.now())  # LIVE's expiry time: it has ended, unread
    assert unused((await _review(audit_db, clock, audit_keyring)).report) == ["EXPIRED", "LIVE", "REFUSED", "REVOKED"]

    # The noon report still recomputes the same later: it is computed as of its generated_at.
    async with audit_db.factory() as session:
        await integrate_pending(session, wait=True)
        document = json.loads(noon.body())
        result = await verify_report(
            session=session, envelope=document["envelope"], signature=document["signature"],
            content=report_content(document["report"]), keys=audit_keyring.public_keys(), params=PARAMS,
            retention_days=30, now=clock.now(),
        )
    assert (result.ok, result.recomputed) == (True, "match")


async def _review(db: AuditDb, clock: ManualClock, keyring: FileKeyring) -> ReportOutput:
    async with db.factory() as session:
        output = await generate_report(session=session, clock=clock, keyring=keyring, kind=ReportKind.ACCESS_REVIEW,
                                       fmt=ReportFormat.JSON, period=DAY, params=PARAMS, retention_days=30)
        await session.commit()
    return output
