"""`GET /audit/entries` (issue 19): an auditor (token AND active staff record) pages through the chain in order,
filters by action, actor and time, and sees which entries no signed checkpoint covers yet."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import Actor, AuditAction, Subjects
from app.audit.checkpoints import CheckpointPolicy, seal
from app.audit.entries import MAX_PAGE, EntryFilter, list_entries
from app.audit.routes import router
from app.audit.runtime import AuditRuntime
from app.clock import ManualClock
from app.config import Settings
from app.context import attach_context
from app.errors import install_error_handlers
from app.identity.principal import Role, TokenVerifier
from app.wiring import build_context
from tests.audit.scenario import Step, append_and_chain, example_steps
from tests.fixtures.audit import AuditDb
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.staff import add_staff_record

LATE = Step(Actor.staff("alice"), AuditAction.ACCESS_REVOKED, Subjects(grant="grant-late"),
            {"reason": "ticket_closed"})


@pytest.fixture
async def entries_api(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime, token_verifier: TokenVerifier,
    tmp_path: Path,
) -> AsyncIterator[httpx.AsyncClient]:
    """Three rounds of every kind of entry, a signed checkpoint, then one entry past it."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    ctx = build_context(Settings(data_dir=tmp_path, database_url=audit_db.url), clock=audit_clock,
                        engine=audit_db.engine, audit=audit_runtime)
    attach_context(app, replace(ctx, session_factory=audit_db.factory, admin_token=None,
                                token_verifier=token_verifier))
    async with audit_db.factory() as session:
        for n in range(3):
            await append_and_chain(session, audit_clock, example_steps(n, audit_clock.now()))
        await seal(session=session, clock=audit_clock, keyring=audit_runtime.keyring, policy=CheckpointPolicy(),
                   wait=True)
        await append_and_chain(session, audit_clock, [LATE])
        await add_staff_record(session, "audrey", Role.AUDITOR, now=audit_clock.now())
        await add_staff_record(session, "retired", Role.AUDITOR, now=audit_clock.now(), active=False)
        await add_staff_record(session, "eve", Role.ENGINEER, now=audit_clock.now())
        await session.commit()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://audit.test") as client:
        yield client


async def _get(api: httpx.AsyncClient, token: str, **params: Any) -> dict[str, Any]:
    response = await api.get("/audit/entries", params=params, headers=bearer(token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_auditor_pages_through_the_whole_chain_in_order(
    entries_api: httpx.AsyncClient, mint_token: MintToken
) -> None:
    token = mint_token("audrey", [Role.AUDITOR])
    seen: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        page = await _get(entries_api, token, after=after, limit=10)
        assert len(page["entries"]) <= 10
        seen += page["entries"]
        after = page["next_after"]
    head, sealed = page["head_seq"], page["sealed_through"]
    assert [e["seq"] for e in seen] == list(range(1, head + 1))
    assert 0 < sealed < head
    assert all(e["past_last_checkpoint"] is (e["seq"] > sealed) for e in seen)
    last = seen[-1]
    assert last["action"] == "access.revoked"
    assert last["actor"] == {"type": "staff", "id": "alice"}
    assert last["subjects"]["grant"] == "grant-late"
    assert last["detail"] == {"reason": "ticket_closed"}
    assert last["past_last_checkpoint"] is True
    assert seen[0]["recorded_at"].endswith("Z")

    newest = await _get(entries_api, token, before=head + 1, limit=3)
    assert [e["seq"] for e in newest["entries"]] == [head - 2, head - 1, head]
    assert newest["prev_before"] == head - 2
    older = await _get(entries_api, token, before=newest["prev_before"], limit=3)
    assert [e["seq"] for e in older["entries"]] == [head - 5, head - 4, head - 3]


class GrowingBetweenReads:
    """A session whose every statement is followed by another writer's: one more entry, chained and covered by a
    newly signed checkpoint. Whatever order a reader reads the checkpoint, the entries and the head in, the chain
    has grown between any two of those reads."""

    def __init__(self, session: AsyncSession, grow: Callable[[], Awaitable[None]]) -> None:
        self._session, self._grow = session, grow

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        result = await self._session.execute(*args, **kwargs)
        await self._grow()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@pytest.mark.parametrize("db_kind", ["postgresql"])  # SQLite reads a transaction from one snapshot: nothing comes in
async def test_a_page_read_while_the_chain_grows_and_is_signed_is_coherent(  # between its reads to test against
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime,
) -> None:
    """A page reads the last checkpoint, then the entries, then the head, each in its own snapshot: so what it
    says is signed never reaches past what it lists, and what it lists never past the head it reports, however
    the chain grows and is signed meanwhile. Read in another order, a page would call an entry it does not list
    signed, or list an entry beyond its own head."""
    async def grow() -> None:
        async with audit_db.factory() as other:
            await append_and_chain(other, audit_clock, [LATE])
            await seal(session=other, clock=audit_clock, keyring=audit_runtime.keyring, policy=CheckpointPolicy(),
                       force=True, wait=True)
            await other.commit()

    async with audit_db.factory() as session:
        await append_and_chain(session, audit_clock, example_steps(0, audit_clock.now()))
        await session.commit()
    await grow()
    async with audit_db.factory() as session:
        page = await list_entries(cast(AsyncSession, GrowingBetweenReads(session, grow)), where=EntryFilter(),
                                  limit=MAX_PAGE)
    listed = [entry.seq for entry in page.entries]
    assert listed == list(range(1, listed[-1] + 1))
    # Strictly: the chain did grow (and was signed) between the page's reads, so the test saw a race to lose.
    assert 0 < page.sealed_through < listed[-1] < page.head_seq
    assert [entry.past_last_checkpoint for entry in page.entries] == [seq > page.sealed_through for seq in listed]


async def test_filters_by_action_actor_and_time(entries_api: httpx.AsyncClient, mint_token: MintToken) -> None:
    token = mint_token("audrey", [Role.AUDITOR])
    approved = (await _get(entries_api, token, action="access.approved"))["entries"]
    assert [e["actor"]["id"] for e in approved] == ["bob", "bob", "bob"]
    both = (await _get(entries_api, token, action=["access.approved", "access.revoked"]))["entries"]
    assert sorted({e["action"] for e in both}) == ["access.approved", "access.revoked"]
    assert len(both) == 4

    alice = (await _get(entries_api, token, actor="staff:alice"))["entries"]
    assert len(alice) == 7  # per round: access.requested, recording.read; and the revocation
    assert {(e["actor"]["type"], e["actor"]["id"]) for e in alice} == {("staff", "alice")}
    assert (await _get(entries_api, token, actor="alice"))["entries"] == alice
    assert (await _get(entries_api, token, actor="system:alice"))["entries"] == []
    admins = (await _get(entries_api, token, actor="customer_admin:admin@contoso"))["entries"]
    assert len(admins) == 3

    everything = (await _get(entries_api, token, limit=1000))["entries"]
    since, until = everything[5]["recorded_at"], everything[9]["recorded_at"]
    window = (await _get(entries_api, token, since=since, until=until, limit=1000))["entries"]
    assert [e["seq"] for e in window] == [e["seq"] for e in everything[5:9]]


@pytest.mark.parametrize(("who", "roles", "status", "code"), [
    (None, [], 401, "unauthorized"),
    ("eve", [Role.ENGINEER], 403, "missing_role"),
    ("eve", [Role.AUDITOR], 403, "missing_role"),  # auditor in the token, not in eve's record
    ("mallory", [Role.AUDITOR], 403, "unknown_staff"),  # auditor in the token, no staff record at all
    ("retired", [Role.AUDITOR], 403, "staff_inactive"),  # a deactivated auditor
])
async def test_only_an_active_auditor_reads_entries(
    entries_api: httpx.AsyncClient, mint_token: MintToken, who: str | None, roles: list[Role], status: int,
    code: str,
) -> None:
    headers = {} if who is None else bearer(mint_token(who, roles))
    response = await entries_api.get("/audit/entries", headers=headers)
    assert response.status_code == status
    body = response.json()
    assert "entries" not in body
    assert body["code"] == code
    assert (await entries_api.get("/audit/entries", headers=bearer(mint_token("audrey", [Role.AUDITOR])))
            ).status_code == 200


@pytest.mark.parametrize(("params", "code"), [
    ({"action": "access.peeked"}, "invalid_input"),
    ({"since": "2030-03-04T10:00:00"}, "invalid_input"),  # no zone: refused, never guessed
    ({"since": "yesterday"}, "invalid_input"),
    ({"since": "2030-03-04T10:00:00Z", "until": "2030-03-04T09:00:00Z"}, "invalid_audit_filter"),
    ({"limit": "0"}, "invalid_input"),
    ({"limit": "1001"}, "invalid_input"),
    ({"after": "-1"}, "invalid_input"),
    ({"actor": "x" * 161}, "invalid_input"),
    ({"actor": " "}, "invalid_audit_filter"),
    ({"actor": "staff:al\x00ice"}, "invalid_audit_filter"),  # PostgreSQL cannot even compare a NUL
    ({"until": "9999-12-31T23:59:59-05:00"}, "invalid_audit_filter"),  # no UTC time to compare
])
async def test_bad_filters_are_422_with_a_code(
    entries_api: httpx.AsyncClient, mint_token: MintToken, params: dict[str, str], code: str
) -> None:
    response = await entries_api.get("/audit/entries", params=params,
                                     headers=bearer(mint_token("audrey", [Role.AUDITOR])))
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == code
    assert body["detail"]
