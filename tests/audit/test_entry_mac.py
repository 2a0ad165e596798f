"""Entry MACs (C6): an entry (or a queued row) written with the service's database role alone is found as forged.

The attacker here holds the service's SQL: the append-only triggers stay on, and every insert is well-formed
(right seq, right link, right hash). What they lack is the entry MAC key, held outside the database.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import migrate
from app.audit.actions import Actor, AuditAction, Subjects
from app.audit.canonical import canonical_time, encode_entry
from app.audit.checkpoints import CheckpointPolicy, export_checkpoints, list_checkpoints, seal
from app.audit.entry_mac import (
    EntryMacKeyError,
    EntryMacKeys,
    build_entry_mac_keys,
    canonical_nonce,
    encode_content,
    entry_mac_info,
    mac_key_id,
)
from app.audit.keys import FileKeyring
from app.audit.runtime import AuditRuntime
from app.audit.service import ENTRIES, INBOX, append_entry, chain_locked, lock_chain_head, read_chain_head
from app.audit.settings import AuditSettings
from app.audit.verifier import DamageKind, VerificationResult, verify_chain
from app.clock import ManualClock
from app.db import create_engine, create_session_factory
from tests.audit.scenario import append_and_chain, append_step, example_steps
from tests.fixtures.audit import AuditDb
from tests.fixtures.database import create_pg_database, drop_pg_database, worker_id

VECTOR_KEY = bytes(range(32))


def test_mac_vectors_match_the_documented_bytes() -> None:
    """docs/AUDIT.md, "Entry MACs": key 00 01 .. 1f; entry 1 of the canonical vectors; nonce 00 01 .. 0f."""
    keys = EntryMacKeys.of(VECTOR_KEY)
    assert keys.current_id == mac_key_id(VECTOR_KEY) == "hmac:630dcd2966c43366"
    entry_hash = "19003d80921cb1740d7a59de56afc471296a2332d34b7219277f24c3b4215f55"
    assert keys.entry_mac(1, entry_hash) == (
        "hmac:630dcd2966c43366:89beb29fdfdf208578e33801219294484c6696a3475e65dcd9442de6395a7631")
    assert keys.entry_mac(1, entry_hash).split(":")[2] == hmac.new(
        VECTOR_KEY, b"voicelog/audit/entry-mac/v1\n" + (1).to_bytes(8, "big") + bytes.fromhex(entry_hash),
        hashlib.sha256).hexdigest()
    detail = '{"duration_s":3600,"justification":"caller heard silence at 00:41","request_ids":["req-1"]}'
    content = encode_content("2030-03-04T10:00:00.123456Z", "staff", "alice", "access.requested", "T-1", None,
                             "G-1", None, None, detail)
    # The entry hash's encoding without its domain, seq and prev_hash.
    assert content.hex() == (
        "0000001b" + b"2030-03-04T10:00:00.123456Z".hex() + "00000005" + b"staff".hex() + "00000005"
        + b"alice".hex() + "00000010" + b"access.requested".hex() + "00000003" + b"T-1".hex() + "ffffffff"
        + "00000003" + b"G-1".hex() + "ffffffff" + "ffffffff" + "0000005b" + detail.encode().hex()
    )
    nonce = bytes(range(16))
    assert keys.inbox_mac(content, nonce) == (
        "hmac:630dcd2966c43366:8050577614be31e6c0eb8646206bad8d1873e5b78c420cd7acf1373632e0ff79")
    assert keys.check_inbox_mac(keys.inbox_mac(content, nonce), content, nonce)
    assert not keys.check_inbox_mac(keys.inbox_mac(content, nonce), content, bytes(16))
    assert keys.check_entry_mac(keys.entry_mac(1, entry_hash), 1, entry_hash)
    assert not keys.check_entry_mac(keys.entry_mac(1, entry_hash), 2, entry_hash)  # bound to its position


def test_the_entry_key_file_is_made_once_0600_and_retired_keys_still_verify(tmp_path: Path) -> None:
    settings = AuditSettings(signing_key_dir=tmp_path / "keys")
    first = build_entry_mac_keys(settings, tmp_path)
    assert first is not None
    path = tmp_path / "keys" / "entry-mac.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert build_entry_mac_keys(settings, tmp_path) == first
    mac = first.entry_mac(7, "ab" * 32)

    new_key = os.urandom(32)
    rotated = AuditSettings(entry_mac_key=base64.b64encode(new_key).decode(),
                            retired_entry_mac_keys=[base64.b64encode(first.keys[first.current_id]).decode()])
    keys = build_entry_mac_keys(rotated, tmp_path)
    assert keys is not None
    assert keys.current_id == mac_key_id(new_key)
    assert keys.check_entry_mac(mac, 7, "ab" * 32)  # an entry MAC'd before the rotation
    path.chmod(0o644)
    with pytest.raises(EntryMacKeyError):
        build_entry_mac_keys(settings, tmp_path)


async def _sealed(db: AuditDb, clock: ManualClock, runtime: AuditRuntime, sets: int = 2) -> None:
    async with db.factory() as session:
        for n in range(sets):
            await append_and_chain(session, clock, example_steps(n, clock.now()))
        await seal(session=session, clock=clock, keyring=runtime.keyring, policy=CheckpointPolicy(), force=True,
                   wait=True, mac=runtime.mac_keys)
        await export_checkpoints(session=session, sink=runtime.sink)
        await session.commit()


def _appending_with(db: AuditDb, runtime: AuditRuntime) -> AuditDb:
    """`db` whose sessions append with `runtime`'s entry MAC keys (as that runtime's service would)."""
    return AuditDb(db.kind, db.url, db.engine, runtime.bind_sessions(create_session_factory(db.engine)))


async def _verify(db: AuditDb, clock: ManualClock, runtime: AuditRuntime, *, macs: bool = True
                  ) -> VerificationResult:
    async with db.factory() as session:
        return await verify_chain(session=session, keys=runtime.keyring.public_keys(),
                                  exported=await runtime.sink.read_all(), now=clock.now(),
                                  mac_keys=runtime.mac_keys if macs else None)


def _content(step_index: int, clock: ManualClock) -> dict[str, Any]:
    step = example_steps(99, clock.now())[step_index]
    from app.audit.service import prepare_detail

    return {
        "recorded_at": clock.now(), "actor_type": step.actor.type.value, "actor_id": "mallory",
        "action": step.action.value, "ticket_id": step.subjects.ticket, "request_id": step.subjects.request_id,
        "grant_id": step.subjects.grant, "saw_id": step.subjects.saw, "resource_id": step.subjects.resource,
        "detail": prepare_detail(step.action, step.actor, step.subjects, step.detail),
    }


async def _forge_entry(session: AsyncSession, clock: ManualClock, *, mac: str | None) -> int:
    """What the service's role can do with the triggers on: insert a well-formed entry extending the head."""
    head = await read_chain_head(session)
    values = _content(5, clock)
    seq = head.seq + 1
    digest = hashlib.sha256(encode_entry(seq, *values.values(), head.entry_hash)).hexdigest()
    await session.execute(insert(ENTRIES).values(**values, seq=seq, prev_hash=head.entry_hash, entry_hash=digest,
                                                 mac=mac))
    return seq


async def test_the_keepers_and_writers_entries_all_verify_with_their_macs(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    await _sealed(audit_db, audit_clock, audit_runtime)
    result = await _verify(audit_db, audit_clock, audit_runtime)
    assert result.ok, result.damage
    assert (result.macs, result.forged_entries) == ("checked", 0)
    async with audit_db.factory() as session:
        macs = (await session.execute(select(ENTRIES.c.mac))).scalars().all()
    assert audit_runtime.mac_keys is not None
    assert macs
    assert all(m is not None and m.startswith(audit_runtime.mac_keys.current_id) for m in macs)


@pytest.mark.parametrize("mac", [None, "copied"])
async def test_a_well_formed_entry_inserted_with_the_service_role_is_found_as_forged(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime, mac: str | None
) -> None:
    await _sealed(audit_db, audit_clock, audit_runtime)
    async with audit_db.factory() as session:  # triggers on: the insert extends the head, as they allow
        if mac == "copied":  # a genuine MAC from another entry does not fit this position and hash
            mac = (await session.execute(select(ENTRIES.c.mac).where(ENTRIES.c.seq == 3))).scalar_one()
        forged = await _forge_entry(session, audit_clock, mac=mac)
        await session.commit()
    # More genuine entries and a checkpoint after it: being sealed does not make it authentic.
    audit_clock.advance(timedelta(seconds=10))
    await _sealed(audit_db, audit_clock, audit_runtime, sets=1)

    result = await _verify(audit_db, audit_clock, audit_runtime)
    assert result.damage is not None
    assert (result.damage.kind, result.damage.seq) == (DamageKind.FORGED, forged)
    assert result.forged_entries == 1
    # An external auditor with the public keys only cannot tell, and the result says MACs were not checked.
    blind = await _verify(audit_db, audit_clock, audit_runtime, macs=False)
    assert blind.ok
    assert blind.macs == "not_checked"


async def _queue_raw(session: AsyncSession, values: dict[str, Any]) -> None:
    await session.execute(insert(INBOX).values(**values))


@pytest.mark.parametrize("db_kind", ["postgresql"])  # SQLite chains at once: it has no inbox
@pytest.mark.parametrize("writer_mac", ["missing", "wrong_key"])
async def test_a_forged_inbox_row_is_found_after_it_is_chained_and_sealed(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime, writer_mac: str
) -> None:
    await _sealed(audit_db, audit_clock, audit_runtime)
    values = _content(3, audit_clock)
    nonce = os.urandom(16)
    mac = None
    if writer_mac == "wrong_key":
        mac = EntryMacKeys.of(os.urandom(32)).inbox_mac(
            encode_content(canonical_time(values["recorded_at"]), *list(values.values())[1:]), nonce)
    async with audit_db.factory() as session:
        await _queue_raw(session, {**values, "nonce": nonce.hex(), "writer_mac": mac})
        await session.commit()
    audit_clock.advance(timedelta(seconds=10))
    async with audit_db.factory() as session:  # the sequencer chains it (the inbox is append-only) and seals
        sealed = await seal(session=session, clock=audit_clock, keyring=audit_runtime.keyring,
                            policy=CheckpointPolicy(), force=True, wait=True, mac=audit_runtime.mac_keys)
        await export_checkpoints(session=session, sink=audit_runtime.sink)
        await session.commit()
        forged = (await session.execute(select(ENTRIES.c.seq).where(ENTRIES.c.actor_id == "mallory"))).scalar_one()
    assert sealed.checkpoint is not None
    assert sealed.checkpoint.head_seq > forged
    assert dict(sealed.rejected) == {"missing_mac" if writer_mac == "missing" else "bad_mac": 1}

    result = await _verify(audit_db, audit_clock, audit_runtime)
    assert result.damage is not None
    assert (result.damage.kind, result.damage.seq) == (DamageKind.FORGED, forged)


@pytest.mark.parametrize("db_kind", ["postgresql"])  # SQLite chains at once: it has no inbox
async def test_a_replayed_copy_of_a_genuine_inbox_row_is_found(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    await _sealed(audit_db, audit_clock, audit_runtime)
    async with audit_db.factory() as session:
        genuine = await append_step(session, audit_clock, example_steps(7, audit_clock.now())[5])
        await session.commit()
        columns = [c for c in INBOX.c if c.name != "id"]
        row = (await session.execute(select(*columns).where(INBOX.c.id == genuine.inbox_id))).mappings().one()
        copy = dict(row)
    for round_ in range(2):  # a copy queued beside the original, and one queued after it was chained
        async with audit_db.factory() as session:
            await _queue_raw(session, copy)
            await session.commit()
        async with audit_db.factory() as session:
            sealed = await seal(session=session, clock=audit_clock, keyring=audit_runtime.keyring,
                                policy=CheckpointPolicy(), force=True, wait=True, mac=audit_runtime.mac_keys)
            await session.commit()
        assert dict(sealed.rejected) == {"replayed": 1}, round_
    async with audit_db.factory() as session:
        copies = (await session.execute(select(ENTRIES.c.seq, ENTRIES.c.mac).where(
            ENTRIES.c.nonce == copy["nonce"]).order_by(ENTRIES.c.seq))).all()
    assert len(copies) == 3
    assert copies[0].mac is not None
    assert copies[1].mac is None
    assert copies[2].mac is None

    result = await _verify(audit_db, audit_clock, audit_runtime)
    assert result.damage is not None
    assert (result.damage.kind, result.damage.seq) == (DamageKind.FORGED, copies[1].seq)
    assert result.forged_entries == 2


async def test_entries_before_entry_mac_from_seq_are_not_checked(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime, audit_keyring: FileKeyring
) -> None:
    """An upgraded chain: entries chained before migration 0010 have no MAC; the setting says where MACs begin."""
    async with audit_db.factory() as session:
        legacy = await _forge_entry(session, audit_clock, mac=None)
        await session.commit()
    await _sealed(audit_db, audit_clock, audit_runtime, sets=1)
    async with audit_db.factory() as session:
        exported = await list_checkpoints(session)
        result = await verify_chain(session=session, keys=audit_keyring.public_keys(), exported=exported,
                                    now=audit_clock.now(), mac_keys=audit_runtime.mac_keys, mac_from_seq=legacy + 1)
    assert result.ok, result.damage


# --- nonces have one spelling (review of issue 15) --------------------------------------------------


def test_a_nonce_has_one_spelling() -> None:
    assert canonical_nonce("00" * 16) == bytes(16)
    for odd in ["AB" * 16, "Ab" * 16, "ab" * 15, "ab" * 17, "ab" * 16 + "\n", " " + "ab" * 16, "zz" * 16, None, 7]:
        assert canonical_nonce(odd) is None, odd


@pytest.mark.parametrize("db_kind", ["postgresql"])  # SQLite chains at once: it has no inbox
async def test_a_replayed_inbox_row_with_an_uppercase_nonce_is_refused_by_the_database(
    audit_db: AuditDb, audit_clock: ManualClock, audit_runtime: AuditRuntime
) -> None:
    """Review of issue 15: the replay check compared nonce text, the MAC check `bytes.fromhex(nonce)`, so a copy
    of a genuine queued row (the service role may read it while queued) with its nonce upper-cased passed both
    and was chained as authentic. Now the CHECK of migration 0011 refuses the copy, in the inbox and in the
    chain; the genuine entry is chained once and the trail verifies."""
    await _sealed(audit_db, audit_clock, audit_runtime)
    async with audit_db.factory() as session:
        genuine = await append_step(session, audit_clock, example_steps(8, audit_clock.now())[4])
        await session.commit()
        columns = [c for c in INBOX.c if c.name != "id"]
        captured = dict((await session.execute(select(*columns).where(INBOX.c.id == genuine.inbox_id)))
                        .mappings().one())
    replay = {**captured, "nonce": captured["nonce"].upper()}
    assert replay["nonce"] != captured["nonce"]
    async with audit_db.factory() as session:
        with pytest.raises(IntegrityError, match="nonce"):
            await _queue_raw(session, replay)
    await _sealed(audit_db, audit_clock, audit_runtime, sets=0)  # the genuine row is chained
    async with audit_db.factory() as session:
        with pytest.raises(IntegrityError, match="nonce"):
            await _queue_raw(session, replay)  # after it was chained
    async with audit_db.factory() as session:  # nor straight into the chain
        head = await read_chain_head(session)
        linked = [({k: v for k, v in replay.items() if k != "writer_mac"}, None)]
        with pytest.raises(IntegrityError, match="nonce"):
            await chain_locked(session, head, linked, mac=None)
    async with audit_db.factory() as session:
        copies = (await session.execute(select(func.count()).select_from(ENTRIES).where(
            ENTRIES.c.actor_id == captured["actor_id"], ENTRIES.c.detail == captured["detail"],
            ENTRIES.c.action == captured["action"], ENTRIES.c.recorded_at == captured["recorded_at"]))).scalar_one()
    assert copies == 1
    result = await _verify(audit_db, audit_clock, audit_runtime)
    assert result.ok, result.damage


@pytest.mark.parametrize("db_kind", ["sqlite"])
async def test_sqlite_refuses_a_nonce_in_any_other_spelling_too(audit_db: AuditDb, audit_clock: ManualClock) -> None:
    values = _content(3, audit_clock)
    async with audit_db.factory() as session:
        for odd in ["AB" * 16, "ab" * 15, "ab" * 16 + "\n", "zz" * 16]:
            with pytest.raises(IntegrityError, match="32 lower-case hex digits"):
                await _queue_raw(session, {**values, "nonce": odd, "writer_mac": None})
        await _queue_raw(session, {**values, "nonce": "ab" * 16, "writer_mac": None})  # the one spelling
        await session.rollback()


async def test_rows_queued_or_chained_with_an_odd_nonce_before_0011_are_found_and_never_stall_the_sequencer(
    audit_clock: ManualClock, audit_runtime: AuditRuntime, request: pytest.FixtureRequest,
) -> None:
    """A chain attacked before migration 0011: an upper-cased replay chained as authentic by the old sequencer,
    and another still queued. The migration adds the CHECKs NOT VALID (the trail cannot be rewritten); the
    queued copy is chained without a MAC and without its nonce (the CHECK would refuse the whole batch), and the
    verifier reports both as forged."""
    name = f"voicelog_audit_odd_nonce_{worker_id(request.config)}_{uuid4().hex[:8]}"
    url = create_pg_database(name)
    engine = create_engine(url)
    try:
        await asyncio.to_thread(migrate.upgrade, url, "0010_audit_entry_mac")
        keys = audit_runtime.mac_keys
        assert keys is not None
        factory = audit_runtime.bind_sessions(create_session_factory(engine))
        async with factory() as session:
            await append_and_chain(session, audit_clock, example_steps(1, audit_clock.now()))
            await session.commit()
        async with factory() as session:  # what the sequencer before 0011 did with an upper-cased copy
            nonce = os.urandom(16).hex()
            head = await lock_chain_head(session)
            assert head is not None
            old_replay = await chain_locked(session, head, [({**_content(2, audit_clock), "nonce": nonce.upper()},
                                                             None)], mac=keys)
            await session.commit()
        async with factory() as session:  # a genuine queued row and its upper-cased copy, still queued
            genuine = await append_step(session, audit_clock, example_steps(2, audit_clock.now())[5])
            await session.commit()
            captured = dict((await session.execute(select(*[c for c in INBOX.c if c.name != "id"]).where(
                INBOX.c.id == genuine.inbox_id))).mappings().one())
            await _queue_raw(session, {**captured, "nonce": captured["nonce"].upper()})
            await session.commit()
        await asyncio.to_thread(migrate.upgrade, url, "0011_audit_fixed_search_path")
        async with factory() as session:
            checks = dict((await session.execute(text(
                "SELECT conname, convalidated FROM pg_constraint WHERE conname LIKE '%nonce_canonical'"))).all())
            assert checks == {"ck_audit_inbox_nonce_canonical": False, "ck_audit_entries_nonce_canonical": False}
            sealed = await seal(session=session, clock=audit_clock, keyring=audit_runtime.keyring,
                                policy=CheckpointPolicy(), force=True, wait=True, mac=keys)
            await session.commit()
        assert dict(sealed.rejected) == {"bad_mac": 1}
        async with factory() as session:
            assert (await session.execute(select(func.count()).select_from(INBOX))).scalar_one() == 0
            copy = (await session.execute(select(ENTRIES.c.seq, ENTRIES.c.nonce, ENTRIES.c.mac).where(
                ENTRIES.c.actor_id == captured["actor_id"], ENTRIES.c.detail == captured["detail"]
            ).order_by(ENTRIES.c.seq))).all()
            assert [(row.nonce, row.mac is None) for row in copy] == [(captured["nonce"], False), (None, True)]
            result = await verify_chain(session=session, keys=audit_runtime.keyring.public_keys(), exported=(),
                                        now=audit_clock.now(), mac_keys=keys)
        assert result.damage is not None
        assert (result.damage.kind, result.damage.seq) == (DamageKind.FORGED, old_replay.seq)
        assert result.forged_entries == 2
    finally:
        await engine.dispose()
        drop_pg_database(name)


# --- retired MAC keys end at a pinned seq (review of issue 15) ----------------------------------------


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


async def test_an_entry_macd_with_a_retired_key_after_its_last_seq_is_forged(
    audit_db: AuditDb, audit_clock: ManualClock, tmp_path: Path,
) -> None:
    """Rotation after a leak: K1 leaked, K2 becomes current, K1 stays retired so the past verifies. Before, a
    retired key verified at any seq, so whoever held K1 kept appending entries that verify. Pinned to the last
    seq it MAC'd (as `voicelog audit verify` reports it), K1 verifies up to there and is forged after it,
    whether the holder chains inline or queues a row the sequencer chains."""
    k1, k2 = bytes(range(32)), bytes(range(1, 33))
    before_rotation = AuditRuntime.from_settings(
        AuditSettings(signing_key_dir=tmp_path / "keys", checkpoint_export_path=tmp_path / "cp.jsonl",
                      entry_mac_key=_b64(k1)), tmp_path)
    await _sealed(_appending_with(audit_db, before_rotation), audit_clock, before_rotation, sets=1)
    found = await _verify(audit_db, audit_clock, before_rotation)
    assert found.ok, found.damage
    assert [(u.key_id, u.current, u.highest_seq) for u in found.mac_keys] == [(mac_key_id(k1), True, found.head_seq)]
    last_k1 = found.head_seq

    def rotated(last_seq: int | None) -> AuditRuntime:
        retired: dict[str, Any] = {"key": _b64(k1)} if last_seq is None else {"key": _b64(k1), "last_seq": last_seq}
        return AuditRuntime.from_settings(
            AuditSettings(signing_key_dir=tmp_path / "keys", checkpoint_export_path=tmp_path / "cp.jsonl",
                          entry_mac_key=_b64(k2), retired_entry_mac_keys=[retired]), tmp_path)

    runtime = rotated(last_k1)
    await _sealed(_appending_with(audit_db, runtime), audit_clock, runtime, sets=1)  # the service goes on with K2
    assert (await _verify(audit_db, audit_clock, runtime)).ok

    attacker = create_engine(audit_db.url)  # the service role's SQL plus the leaked K1
    leaked = entry_mac_info(EntryMacKeys.of(k1))
    try:
        async with create_session_factory(attacker)(info=leaked) as session:
            forged = await append_entry(session=session, clock=audit_clock, actor=Actor.staff("mallory"),
                                        action=AuditAction.ACCESS_APPROVED, subjects=Subjects(grant="G-forged"),
                                        detail={"requester": "mallory", "expires_at": "2030-03-04T11:00:00.000000Z"},
                                        chain_now=True)
            await session.commit()
        if audit_db.kind == "postgresql":  # a queued row MAC'd with K1: the sequencer refuses it past K1's seq
            async with create_session_factory(attacker)(info=leaked) as session:
                await append_entry(session=session, clock=audit_clock, actor=Actor.staff("mallory"),
                                   action=AuditAction.TICKET_CREATED, subjects=Subjects(ticket="T-forged"))
                await session.commit()
            async with audit_db.factory() as session:
                sealed = await seal(session=session, clock=audit_clock, keyring=runtime.keyring,
                                    policy=CheckpointPolicy(), force=True, wait=True, mac=runtime.mac_keys)
                await session.commit()
            assert dict(sealed.rejected) == {"bad_mac": 1}
    finally:
        await attacker.dispose()
    after = await _verify(audit_db, audit_clock, runtime)
    assert after.damage is not None
    assert (after.damage.kind, after.damage.seq) == (DamageKind.FORGED, forged.seq)
    assert after.forged_entries == (2 if audit_db.kind == "postgresql" else 1)
    uses = {u.key_id: u for u in after.mac_keys}
    assert (uses[mac_key_id(k1)].last_seq, uses[mac_key_id(k1)].highest_seq) == (last_k1, last_k1)
    assert uses[mac_key_id(k2)].current
    # Without a pinned seq a retired key still verifies anywhere (docs/AUDIT.md says so): pin it.
    assert (await _verify(audit_db, audit_clock, rotated(None))).forged_entries == after.forged_entries - 1


def test_retired_mac_keys_are_configured_bare_or_with_a_last_seq() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    settings = AuditSettings(entry_mac_key=_b64(os.urandom(32)),
                             retired_entry_mac_keys=[_b64(k1), {"key": _b64(k2), "last_seq": 41}])
    keys = build_entry_mac_keys(settings, Path("/nonexistent"))
    assert keys is not None
    assert dict(keys.last_seq) == {mac_key_id(k2): 41}
    retired = EntryMacKeys.of(k2)
    assert keys.check_entry_mac(retired.entry_mac(41, "ab" * 32), 41, "ab" * 32)
    assert not keys.check_entry_mac(retired.entry_mac(42, "ab" * 32), 42, "ab" * 32)
    content, nonce = b"content", bytes(16)
    assert keys.check_inbox_mac(retired.inbox_mac(content, nonce), content, nonce, 41)
    assert not keys.check_inbox_mac(retired.inbox_mac(content, nonce), content, nonce, 42)
    assert not keys.check_inbox_mac(retired.inbox_mac(content, nonce), content, nonce)  # no position: refused
    with pytest.raises(ValueError, match="last_seq"):
        AuditSettings(retired_entry_mac_keys=[{"key": _b64(k1), "last_seq": -1}])
