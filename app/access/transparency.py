"""Access transparency for the customer: every access request and read on their resource's recordings.

Like Google's Access Transparency: the customer's admin sees who (by role and team, never by name), when,
under which ticket, with which justification, and each read (part, bytes). Reads come from the audit
trail's chained entries, so they show what an auditor would see.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.grant_facts import grant_situations
from app.access.models import AccessRequest, AccessRequestItem
from app.audit.actions import AuditAction
from app.audit.reports.entries import load_entries
from app.audit.service import read_chain_head
from app.capture.service import among_recordings_of_resource, recordings_of_resource
from app.identity.staff.service import get_team
from app.tickets.service import with_ticket_ref_of_resource

if TYPE_CHECKING:
    from app.resources.models import Resource


async def access_log(*, session: AsyncSession, resource: Resource, now: datetime, retention: timedelta,
                     limit: int = 500) -> dict[str, Any]:
    """Each request with its one derived `status` (`grant_situations`): what the customer's console lists and
    asks them to decide (`waiting_for_customer`)."""
    requests = (await session.execute(
        with_ticket_ref_of_resource(select(AccessRequest), ticket_id=AccessRequest.ticket_id, resource_id=resource.id)
        .order_by(AccessRequest.created_at.desc()).limit(limit)
    )).all()
    situations = await grant_situations(session=session, rows=[row for row, _ref in requests], now=now,
                                        retention=retention)
    team_names: dict[str, str] = {}
    out_requests = []
    for row, ticket_ref in requests:
        team = row.requester_team_id
        if team and team not in team_names:
            found = await get_team(session=session, team_id=team)
            team_names[team] = found.name if found else "unknown"
        # Only this resource's own recordings: an ID an engineer named from another tenant never shows here.
        ids = (await session.execute(
            among_recordings_of_resource(
                select(AccessRequestItem.request_id).where(AccessRequestItem.access_request_id == row.id),
                request_id=AccessRequestItem.request_id, resource_id=resource.id,
            )
        )).scalars().all()
        out_requests.append({
            "access_request": row.id, "requested_at": _iso(row.created_at), "requester_role": "engineer",
            "requester_team": team_names.get(team or ""), "ticket": ticket_ref,
            "justification": row.justification, "request_ids": sorted(ids), "state": row.state,
            "status": situations[row.id].status.value, "requested_minutes": row.requested_duration_s // 60,
            "granted_minutes": row.granted_duration_s // 60 if row.granted_duration_s is not None else None,
            "decided_at": _iso(row.decided_at), "decided_by_role": "manager" if row.decided_by else None,
            "expires_at": _iso(row.expires_at), "needs_customer_approval": row.needs_customer_approval,
            "customer_approved": row.customer_approved, "customer_decided_at": _iso(row.customer_decided_at),
        })
    recordings = await recordings_of_resource(session=session, resource=resource, limit=5000)
    head = await read_chain_head(session)
    reads = await load_entries(session, actions=[AuditAction.RECORDING_READ], upto_seq=head.seq,
                               request_ids=[r.request_id for r in recordings]) if recordings else []
    return {
        "resource": resource.name,
        "access_requests": out_requests,
        "reads": [{"at": _iso(e.at), "request_id": e.request_id, "access_request": e.grant,
                   "part": e.detail.get("part"), "bytes": e.detail.get("bytes")} for e in reads[-limit:]],
        "as_of_audit_seq": head.seq,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
