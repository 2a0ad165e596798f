"""Auditor pages: access review and retention report with charts, signed downloads, chain verification, and
the audit entries browser (the same query as `GET /audit/entries`)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.grant_facts import grant_situations
from app.access.grant_status import GrantSituation
from app.access.service import access_requests_by_ids
from app.audit.actions import Actor, AuditAction
from app.audit.entries import (
    MAX_SEQ,
    ActorMatch,
    EntryFilter,
    EntryPage,
    InvalidEntryFilter,
    list_entries,
    newest_entries,
)
from app.audit.reports.access_review import AccessReviewParams
from app.audit.reports.entries import InvalidPeriod, Period
from app.audit.reports.service import ReportFormat, ReportKind, audited_report, generate_report
from app.audit.runtime import AuditRuntime
from app.audit.verifier import verify_chain
from app.clock import Clock
from app.console import charts
from app.console.auth import signed_in
from app.console.templating import page
from app.deps import ContextDep, SessionDep
from app.errors import NotFound
from app.identity.principal import Role

DEFAULT_DAYS = 14
ENTRIES_PER_PAGE, MAX_ENTRIES_PER_PAGE = 50, 500
FILTER_FIELDS = ("action", "actor", "since", "until", "limit")

router = APIRouter(prefix="/console/auditor", include_in_schema=False)


FIRST_REPORT_DAY, LAST_REPORT_DAY = date(2000, 1, 1), date(9999, 1, 1)  # the API's bounds (app/audit/routes.py)


def _period(request: Request, clock: Clock) -> Period:
    today = clock.now().date()
    try:
        first = date.fromisoformat(request.query_params.get("from", ""))
    except ValueError:
        first = today - timedelta(days=DEFAULT_DAYS - 1)
    try:
        last = date.fromisoformat(request.query_params.get("to", ""))
    except ValueError:
        last = today
    try:
        if not FIRST_REPORT_DAY <= first <= last <= LAST_REPORT_DAY:
            raise InvalidPeriod("out of the days a report can cover")
        return Period(first, last)
    except InvalidPeriod:
        return Period(today - timedelta(days=DEFAULT_DAYS - 1), today)


async def _verification(db: AsyncSession, runtime: AuditRuntime, clock: Clock) -> dict[str, Any]:
    result = await verify_chain(session=db, keys=runtime.keyring.public_keys(), exported=await runtime.sink.read_all(),
                                now=clock.now(), pending_alarm_s=runtime.settings.pending_alarm_s,
                                mac_keys=runtime.mac_keys, mac_from_seq=runtime.settings.entry_mac_from_seq)
    return result.to_json()


async def _report(db: AsyncSession, runtime: AuditRuntime, kind: ReportKind, period: Period,
                  clock: Clock, requested_by: Actor) -> dict[str, Any]:
    """The report the page shows, made and audited (`report.generated`) as the API makes it."""
    settings = runtime.settings
    computed = await audited_report(session=db, clock=clock, kind=kind, period=period,
                                    params=AccessReviewParams.from_settings(settings),
                                    retention_days=settings.retention_days, requested_by=requested_by)
    return dict(computed.report)


async def _now(db: AsyncSession, report: dict[str, Any], clock: Clock,
               retention: timedelta) -> dict[str, GrantSituation]:
    """Each reviewed grant's status now (`grant_situations`, as every page shows it), beside the report's
    decision, which the audit trail records as of its first decision (a manager's; a customer's verdict after
    it is a second entry)."""
    ids = [g["grant"] for g in report.get("grants", []) if isinstance(g.get("grant"), str)]
    rows = await access_requests_by_ids(session=db, ids=ids)
    return await grant_situations(session=db, rows=list(rows.values()), now=clock.now(), retention=retention)


@router.get("")
async def access_review(request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    session, actor = await signed_in(request, ctx, Role.AUDITOR, db=db)
    period = _period(request, ctx.clock)
    runtime = ctx.audit
    report = await _report(db, runtime, ReportKind.ACCESS_REVIEW, period, ctx.clock, Actor.staff(actor.subject))
    verification = await _verification(db, runtime, ctx.clock)
    figures = [charts.grants_per_day(report, period.days()), charts.time_to_approval(report),
               charts.grant_use(report)]
    statuses = await _now(db, report, ctx.clock, ctx.access.retention)
    return page(request, "auditor.html", session, report=report, period=period, charts=figures,
                verification=verification, kind="access-review", statuses=statuses)


@router.get("/retention")
async def retention(request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    session, actor = await signed_in(request, ctx, Role.AUDITOR, db=db)
    period = _period(request, ctx.clock)
    runtime = ctx.audit
    report = await _report(db, runtime, ReportKind.RETENTION, period, ctx.clock, Actor.staff(actor.subject))
    verification = await _verification(db, runtime, ctx.clock)
    return page(request, "retention.html", session, report=report, period=period,
                charts=charts.purge_age_per_region(report), verification=verification, kind="retention")


@router.get("/reports/{kind}.{fmt}")
async def download(kind: str, fmt: str, request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    """The signed report, exactly as `GET /audit/reports/...` makes it (and audited the same way)."""
    _session, actor = await signed_in(request, ctx, Role.AUDITOR, db=db)
    kinds = {"access-review": ReportKind.ACCESS_REVIEW, "retention": ReportKind.RETENTION}
    if kind not in kinds or fmt not in ("csv", "json"):
        raise NotFound()
    runtime = ctx.audit
    period = _period(request, ctx.clock)
    output = await generate_report(
        session=db, clock=ctx.clock, keyring=runtime.keyring, kind=kinds[kind], fmt=ReportFormat(fmt),
        period=period, params=runtime.review_params, retention_days=runtime.settings.retention_days,
        requested_by=Actor.staff(actor.subject))
    filename = f"{kinds[kind].value}_{period.first.isoformat()}_{period.last.isoformat()}.{fmt}"
    return Response(output.body(), media_type=output.media_type,
                    headers={"content-disposition": f'attachment; filename="{filename}"',
                             "x-audit-report-key-id": output.signed.key_id})


def _console_time(name: str, text: str) -> datetime | None:
    """A `datetime-local` value (or any ISO time), read as UTC when it has no zone, as the form's label says."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidEntryFilter(f"`{name}` is not a time: use YYYY-MM-DDTHH:MM (UTC).") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _number(request: Request, name: str, *, low: int, high: int) -> int | None:
    text = request.query_params.get(name, "")
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not low <= int(text) <= high:
        raise InvalidEntryFilter(f"`{name}` must be a whole number from {low} to {high}.")
    return int(text)


def _entry_filter(request: Request) -> EntryFilter:
    query = request.query_params
    action = query.get("action", "")
    if action and action not in {a.value for a in AuditAction}:
        raise InvalidEntryFilter("Choose an action from the list.")
    actor = query.get("actor", "").strip()
    return EntryFilter(actions=frozenset({AuditAction(action)} if action else ()),
                       actor=ActorMatch.parse(actor) if actor else None,
                       since=_console_time("since", query.get("since", "")),
                       until=_console_time("until", query.get("until", "")))


@router.get("/entries")
async def audit_entries(request: Request, ctx: ContextDep, db: SessionDep) -> Response:
    """Browse the chain: the newest matching entries first, older and newer pages by chain position."""
    session, _actor = await signed_in(request, ctx, Role.AUDITOR, db=db)
    filters = {name: request.query_params.get(name, "") for name in FILTER_FIELDS}
    entries: EntryPage | None = None
    error: str | None = None
    try:
        where = _entry_filter(request)
        after = _number(request, "after", low=0, high=MAX_SEQ)
        before = _number(request, "before", low=1, high=MAX_SEQ)
        limit = _number(request, "limit", low=1, high=MAX_ENTRIES_PER_PAGE) or ENTRIES_PER_PAGE
        if after is not None:
            entries = await list_entries(db, where=where, after=after, limit=limit)
        elif before is not None:
            entries = await list_entries(db, where=where, before=before, limit=limit)
        else:
            entries = await newest_entries(db, where=where, limit=limit)
    except InvalidEntryFilter as exc:
        error = exc.detail
    kept = {k: v for k, v in filters.items() if v}
    links = {} if entries is None else {
        "older": None if entries.prev_before is None else "?" + urlencode({**kept, "before": entries.prev_before}),
        "newer": None if entries.next_after is None else "?" + urlencode({**kept, "after": entries.next_after}),
    }
    return page(request, "audit_entries.html", session, status_code=200 if error is None else 422,
                entries=entries, error=error, filters=filters, links=links,
                actions=[a.value for a in AuditAction])
