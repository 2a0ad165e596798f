"""`voicelog audit verify | list | tail | report access-review|retention|verify | checkpoint | keys` (mounted as
`audit`). They read the database directly, for an operator on the host; auditors elsewhere use the API.

Exit codes: 0 fine, 1 damage found (or a report that does not verify), 2 could not run.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import date
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.actions import Actor, AuditAction
from app.audit.checkpoints import Checkpoint, FileCheckpointSink
from app.audit.entries import (
    DEFAULT_PAGE,
    MAX_PAGE,
    MAX_SEQ,
    ActorMatch,
    EntryFilter,
    EntryPage,
    ListedEntry,
    list_entries,
    newest_entries,
    parse_moment,
)
from app.audit.jobs import ChainKeeper, run_verification
from app.audit.keys import FileKeyring, PublicKeySet
from app.audit.reports.entries import Period
from app.audit.reports.service import (
    ReportFormat,
    ReportKind,
    ReportOutput,
    SignedReportOutput,
    generate_report,
    verify_report,
)
from app.audit.reports.signing import report_content
from app.audit.runtime import AuditRuntime
from app.audit.service import read_chain_head
from app.clock import SystemClock
from app.errors import AppError
from app.workflow.table import render_table

audit_cli = typer.Typer(help="The tamper-evident audit trail: list and follow it, verify it, report from it.",
                        no_args_is_help=True)
report_cli = typer.Typer(help="Signed reports computed from the audit trail.", no_args_is_help=True)
audit_cli.add_typer(report_cli, name="report")

T = TypeVar("T")
CLI_ACTOR = Actor.system("cli")


def _run(work: Callable[[async_sessionmaker[AsyncSession], AuditRuntime], Awaitable[T]]) -> T:
    """Run `work` against the configured database and audit runtime; errors become exit code 2."""
    from app.config import Settings
    from app.wiring import opened_context

    async def main() -> T:
        async with opened_context(Settings()) as ctx:
            return await work(ctx.session_factory, ctx.audit)

    return run_or_exit(main)


def run_or_exit(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`asyncio.run(main())` for a CLI command: a refusal or an I/O error is one line and exit code 2."""
    try:
        return asyncio.run(main())
    except AppError as exc:
        typer.echo(f"error: {exc.code}: {exc.detail}", err=True)
        raise typer.Exit(2) from exc
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _exported(path: Path | None, runtime: AuditRuntime) -> Callable[[], Awaitable[list[Checkpoint]]]:
    sink = FileCheckpointSink(path) if path is not None else runtime.sink
    return sink.read_all


@audit_cli.command("verify")
def verify(
    from_seq: Annotated[int, typer.Option(
        "--from", min=1, max=MAX_SEQ, help="First entry to check; its predecessor is trusted.")] = 1,
    public_keys: Annotated[Path | None, typer.Option(
        "--public-keys", exists=True, dir_okay=False,
        help="Trusted public keys (JSON as served by GET /audit/keys). Default: this host's keyring.")] = None,
    checkpoints: Annotated[Path | None, typer.Option(
        "--checkpoints", exists=True, dir_okay=False,
        help="Exported checkpoints (JSON lines). Default: the configured export file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON.")] = False,
) -> None:
    """Recompute the chain and check every checkpoint. Exits 1 on damage, naming the first bad entry."""

    async def work(factory: async_sessionmaker[AsyncSession], runtime: AuditRuntime) -> dict[str, Any]:
        keys = PublicKeySet.load(public_keys) if public_keys is not None else None
        # An external auditor holds the public keys only: entry MACs are then reported as not checked.
        result = await run_verification(session_factory=factory, runtime=runtime, clock=SystemClock(),
                                        from_seq=from_seq, keys=keys, exported=await _exported(checkpoints, runtime)(),
                                        check_macs=public_keys is None)
        return result.to_json()

    result = _run(work)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    elif result["ok"]:
        typer.echo(f"ok: entries {result['from_seq']}..{result['head_seq']} verified "
                   f"({result['entries_checked']} checked), sealed through {result['sealed_through']}, "
                   f"{result['checkpoints_checked']} checkpoints")
    else:
        damage = result["damage"]
        typer.echo(f"DAMAGE: {damage['kind']} at seq {damage['seq']}: {damage['message']}")
    if not as_json:
        age = result["unanchored_s"]
        typer.echo(f"anchored through {result['anchored_through']}: {result['unanchored_entries']} entries "
                   f"unanchored" + ("" if age is None else f", the oldest {age:.1f} s old") +
                   f"; entry MACs {result['macs'].replace('_', ' ')}")
        for use in result["mac_keys"]:  # what to pin as a retired key's last_seq after a rotation
            role = "current" if use["current"] else (
                "retired, any seq" if use["last_seq"] is None else f"retired, last seq {use['last_seq']}")
            highest = "no entry" if use["highest_seq"] is None else f"highest seq {use['highest_seq']}"
            typer.echo(f"entry MAC key {use['key_id']} ({role}): {highest}")
    for note in result["notes"] if not as_json else []:
        typer.echo(f"note: {note}", err=True)
    if not result["ok"]:
        raise typer.Exit(1)


def _report(kind: ReportKind, first: date, last: date, fmt: ReportFormat, output: Path | None,
            signature: Path | None) -> None:
    async def work(factory: async_sessionmaker[AsyncSession], runtime: AuditRuntime) -> ReportOutput:
        async with factory() as session:  # committed: the report.generated entry is part of the report (C6)
            result = await generate_report(
                session=session, clock=SystemClock(), keyring=runtime.keyring, kind=kind, fmt=fmt,
                period=Period(first, last), params=runtime.review_params,
                retention_days=runtime.settings.retention_days, requested_by=CLI_ACTOR,
            )
            await session.commit()
        return result

    write_signed_report(_run(work), output, signature)


def write_signed_report(result: SignedReportOutput, output: Path | None, signature: Path | None) -> None:
    """The report to `output` (stdout if none); a CSV's signed envelope beside it as `<output>.sig.json`,
    to `signature`, or to stderr when the report went to stdout."""
    body = result.body()
    if output is None:
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
    else:
        output.write_bytes(body)
    if result.fmt is ReportFormat.CSV:
        sidecar = json.dumps(result.signed.sidecar(), indent=2, sort_keys=True) + "\n"
        target = signature or (output.with_name(output.name + ".sig.json") if output is not None else None)
        if target is None:
            typer.echo(sidecar, err=True)
        else:
            target.write_text(sidecar)


FromOption = Annotated[str, typer.Option("--from", help="First day (UTC), YYYY-MM-DD, included.")]
ToOption = Annotated[str, typer.Option("--to", help="Last day (UTC), YYYY-MM-DD, included.")]
FormatOption = Annotated[ReportFormat, typer.Option("--format", help="json (signed document) or csv.")]
OutputOption = Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")]
SignatureOption = Annotated[Path | None, typer.Option(
    "--signature", help="CSV: where the signed envelope goes (default <output>.sig.json, or stderr).")]


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not a date (YYYY-MM-DD)") from exc


@report_cli.command("access-review")
def access_review(first: FromOption, last: ToOption, fmt: FormatOption = ReportFormat.JSON,
                  output: OutputOption = None, signature: SignatureOption = None) -> None:
    """Every grant in the period with its reads and anomalies, signed."""
    _report(ReportKind.ACCESS_REVIEW, parse_day(first), parse_day(last), fmt, output, signature)


@report_cli.command("retention")
def retention(first: FromOption, last: ToOption, fmt: FormatOption = ReportFormat.JSON,
              output: OutputOption = None, signature: SignatureOption = None) -> None:
    """Per region and day: recordings started and purged, ages at purge, KEKs destroyed, overdue, signed."""
    _report(ReportKind.RETENTION, parse_day(first), parse_day(last), fmt, output, signature)


@report_cli.command("verify")
def report_verify(
    report: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A JSON report, or a CSV report.")],
    signature: Annotated[Path | None, typer.Option(
        "--signature", exists=True, dir_okay=False, help="CSV: its .sig.json (default <report>.sig.json).")] = None,
    public_keys: Annotated[Path | None, typer.Option("--public-keys", exists=True, dir_okay=False)] = None,
) -> None:
    """Re-verify a report: signature, chain head in an intact chain, and the same figures recomputed."""
    raw = report.read_bytes()
    if signature is None and not raw.lstrip().startswith(b"{"):
        signature = report.with_name(report.name + ".sig.json")
    if signature is None:
        document = json.loads(raw)
        envelope, sig, content = document["envelope"], document["signature"], report_content(document["report"])
    else:
        sidecar = json.loads(signature.read_bytes())
        envelope, sig, content = sidecar["envelope"], sidecar["signature"], raw

    async def work(factory: async_sessionmaker[AsyncSession], runtime: AuditRuntime) -> dict[str, Any]:
        keys = PublicKeySet.load(public_keys) if public_keys is not None else runtime.keyring.public_keys()
        async with factory() as session:
            result = await verify_report(
                session=session, envelope=envelope, signature=sig, content=content, keys=keys,
                exported=await runtime.sink.read_all(), params=runtime.review_params,
                retention_days=runtime.settings.retention_days, now=SystemClock().now(),
            )
            await session.rollback()
        return result.to_json()

    result = _run(work)
    typer.echo(json.dumps(result, indent=2))
    if not result["ok"]:
        raise typer.Exit(1)


@audit_cli.command("checkpoint")
def checkpoint(force: Annotated[bool, typer.Option(help="Sign even if not due (when new entries exist).")] = True
               ) -> None:
    """Chain queued entries, sign a checkpoint and export it now."""

    async def work(factory: async_sessionmaker[AsyncSession], runtime: AuditRuntime) -> str:
        result = await ChainKeeper(runtime, factory, SystemClock()).tick(force=force)
        if result.checkpoint is None:
            return f"chained {result.chained}; no new entries to sign"
        return (f"chained {result.chained}; checkpoint {result.checkpoint.number} signs entry "
                f"{result.checkpoint.head_seq} with {result.checkpoint.key_id}")

    typer.echo(_run(work))


@audit_cli.command("keys")
def keys(rotate: Annotated[bool, typer.Option(help="Start a new signing key now (file keyring).")] = False) -> None:
    """Print the public keys (the file `verify --public-keys` takes); optionally rotate first."""

    async def work(_factory: async_sessionmaker[AsyncSession], runtime: AuditRuntime) -> dict[str, Any]:
        if rotate:
            if not isinstance(runtime.keyring, FileKeyring):
                raise typer.BadParameter("the configured key is rotated by configuration, not here")
            runtime.keyring.rotate(SystemClock().now())
        return runtime.keyring.public_keys().to_json()

    typer.echo(json.dumps(_run(work), indent=2))


ActionOption = Annotated[list[AuditAction] | None, typer.Option(
    "--action", help="Only this action (repeat for several), e.g. access.approved.")]
ActorOption = Annotated[str | None, typer.Option(
    "--actor", help="Only this actor: TYPE:ID (staff:alice) or a bare id of any type.")]
SinceOption = Annotated[str | None, typer.Option(
    "--since", help="Recorded at or after: 30m, 2h, 7d ago, a day (YYYY-MM-DD) or an ISO 8601 time (UTC).")]
UntilOption = Annotated[str | None, typer.Option("--until", help="Recorded before (same forms as --since).")]
LimitOption = Annotated[int, typer.Option("--limit", min=1, max=MAX_PAGE, help="At most this many entries.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


def _entry_filter(actions: list[AuditAction] | None, actor: str | None, since: str | None,
                  until: str | None) -> EntryFilter:
    """The filter, or the refusal in one line and exit code 2, as `run_or_exit` reports errors."""
    now = SystemClock().now()
    try:
        return EntryFilter(actions=frozenset(actions or ()),
                           actor=None if actor is None else ActorMatch.parse(actor),
                           since=None if since is None else parse_moment(since, now=now),
                           until=None if until is None else parse_moment(until, now=now))
    except AppError as exc:
        typer.echo(f"error: {exc.code}: {exc.detail}", err=True)
        raise typer.Exit(2) from exc


def _subjects_text(entry: ListedEntry) -> str:
    return " ".join(f"{name}={value}" for name, value in entry.subjects.items() if value is not None)


def _entry_cells(entry: ListedEntry) -> list[object]:
    return [entry.seq, entry.to_json()["recorded_at"], entry.action, f"{entry.actor_type}:{entry.actor_id}",
            _subjects_text(entry) or None, json.dumps(entry.detail, sort_keys=True, separators=(",", ":")),
            "no" if entry.past_last_checkpoint else "yes"]


ENTRY_HEADERS = ("SEQ", "RECORDED (UTC)", "ACTION", "ACTOR", "SUBJECTS", "DETAIL", "SIGNED")


def _page_summary(page: EntryPage) -> str:
    return (f"{len(page.entries)} entries; chain head {page.head_seq}, signed through {page.sealed_through}"
            + (f", {page.pending} waiting to be chained" if page.pending else "")
            + (f"; next page: --after {page.next_after}" if page.next_after is not None else ""))


@audit_cli.command("list")
def list_command(
    action: ActionOption = None, actor: ActorOption = None, since: SinceOption = None, until: UntilOption = None,
    after: Annotated[int, typer.Option("--after", min=0, max=MAX_SEQ,
                                       help="Only entries with a seq above this.")] = 0,
    limit: LimitOption = DEFAULT_PAGE, as_json: JsonOption = False,
) -> None:
    """Audit entries in chain order from --after, filtered; SIGNED says whether a checkpoint covers each yet."""
    where = _entry_filter(action, actor, since, until)

    async def work(factory: async_sessionmaker[AsyncSession], _runtime: AuditRuntime) -> EntryPage:
        async with factory() as session:
            return await list_entries(session, where=where, after=after, limit=limit)

    page = _run(work)
    if as_json:
        typer.echo(json.dumps(page.to_json(), indent=2))
        return
    if page.entries:
        typer.echo(render_table(ENTRY_HEADERS, [_entry_cells(e) for e in page.entries]))
    typer.echo(_page_summary(page), err=True)  # stdout stays the table alone, fit for grep


def _entry_line(entry: ListedEntry, as_json: bool) -> str:
    if as_json:
        return json.dumps(entry.to_json(), separators=(",", ":"))
    return "  ".join(str(c) for c in _entry_cells(entry) if c is not None)


@audit_cli.command("tail")
def tail(
    action: ActionOption = None, actor: ActorOption = None, since: SinceOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, max=MAX_PAGE,
                                       help="How many of the newest entries to show first.")] = 20,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing entries as they are chained.")
                      ] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.2, max=60.0,
                                            help="Seconds between polls with --follow.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per entry and line (JSON lines).")
                       ] = False,
) -> None:
    """The newest entries, oldest first, one per line; with --follow, then each new one as it is chained
    (Ctrl-C stops). SIGNED yes/no says whether a checkpoint covers the entry yet."""
    where = _entry_filter(action, actor, since, None)

    def emit(page: EntryPage) -> None:
        for entry in page.entries:
            typer.echo(_entry_line(entry, as_json))

    async def follow_entries(factory: async_sessionmaker[AsyncSession], _runtime: AuditRuntime) -> None:
        async with factory() as session:
            if limit:
                page = await newest_entries(session, where=where, limit=limit)
                emit(page)
                cursor = max([page.head_seq, *(e.seq for e in page.entries)])
            else:
                cursor = (await read_chain_head(session)).seq
            await session.rollback()
        if not as_json:
            typer.echo(f"# {'following' if follow else 'shown'} up to entry {cursor}; SIGNED: covered by a "
                       "signed checkpoint", err=True)
        while follow:
            await asyncio.sleep(interval)
            async with factory() as session:
                page = await list_entries(session, where=where, after=cursor, limit=MAX_PAGE)
                await session.rollback()
            emit(page)
            # Every seq up to the head is chained (the chain is dense): nothing can appear below it later. The
            # query may also see entries chained after the head was read: never print those twice.
            last = page.entries[-1].seq if page.entries else cursor
            cursor = last if page.next_after is not None else max(cursor, page.head_seq, last)
            sys.stdout.flush()

    try:
        _run(follow_entries)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
