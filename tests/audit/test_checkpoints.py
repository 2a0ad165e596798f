"""Signed checkpoints: cadence, keys and their windows, the external export, and forged signatures (C6)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from app.audit.actions import AuditAction
from app.audit.checkpoints import (
    CHECKPOINTS,
    CheckpointPolicy,
    FileCheckpointSink,
    export_checkpoints,
    list_checkpoints,
    seal,
)
from app.audit.keys import (
    FileKeyring,
    KeyringError,
    PublicKeyInfo,
    PublicKeySet,
    SignatureCheck,
    StaticKeyring,
    build_keyring,
)
from app.audit.service import ENTRIES
from app.audit.settings import AuditSettings, RetiredPublicKey
from app.audit.verifier import DamageKind, verify_chain
from app.clock import ManualClock
from tests.audit.scenario import append_and_chain, example_steps
from tests.fixtures.audit import AuditDb, disable_audit_triggers


async def _grow(db: AuditDb, clock: ManualClock, count: int, *, every: timedelta = timedelta(seconds=1)) -> None:
    async with db.factory() as session:
        steps = [s for n in range(count) for s in example_steps(n, clock.now())][:count]
        await append_and_chain(session, clock, steps, advance=lambda _i: every)
        await session.commit()


async def _seal(db: AuditDb, clock: ManualClock, keyring: FileKeyring | StaticKeyring, policy: CheckpointPolicy,
                **kwargs: bool) -> int | None:
    async with db.factory() as session:
        result = await seal(session=session, clock=clock, keyring=keyring, policy=policy, wait=True, **kwargs)
        await session.commit()
    return None if result.checkpoint is None else result.checkpoint.number


async def test_a_checkpoint_is_due_every_n_entries_or_m_minutes(
    audit_db: AuditDb, audit_clock: ManualClock, audit_keyring: FileKeyring
) -> None:
    policy = CheckpointPolicy(every_entries=10, every=timedelta(minutes=5))
    assert await _seal(audit_db, audit_clock, audit_keyring, policy) is None  # nothing to seal yet
    await _grow(audit_db, audit_clock, 3)
    assert await _seal(audit_db, audit_clock, audit_keyring, policy) == 1  # the first comes at once
    await _grow(audit_db, audit_clock, 8)
    assert await _seal(audit_db, audit_clock, audit_keyring, policy) is None  # 8 < 10, 8 s < 5 min
    await _grow(audit_db, audit_clock, 2)
    assert await _seal(audit_db, audit_clock, audit_keyring, policy) == 2  # 10 entries
    await _grow(audit_db, audit_clock, 1)
    audit_clock.advance(timedelta(minutes=5))
    assert await _seal(audit_db, audit_clock, audit_keyring, policy) == 3  # 5 minutes
    audit_clock.advance(timedelta(hours=1))
    assert await _seal(audit_db, audit_clock, audit_keyring, policy) is None  # no new entry: nothing to sign

    async with audit_db.factory() as session:
        checkpoints = await list_checkpoints(session)
        marks = (await session.execute(select(ENTRIES.c.seq, ENTRIES.c.action, ENTRIES.c.detail).where(
            ENTRIES.c.action.in_([AuditAction.CHECKPOINT_SIGNED.value, AuditAction.SIGNING_KEY_ROTATED.value])
        ).order_by(ENTRIES.c.seq))).all()
    # Each checkpoint signs the entry that announces it; the first key is recorded in the chain first.
    assert [c.head_seq for c in checkpoints] == [m.seq for m in marks if m.action == "checkpoint.signed"]
    assert marks[0].action == "signing_key.rotated"
    assert [json.loads(m.detail)["checkpoint"] for m in marks[1:]] == [1, 2, 3]
    assert checkpoints[1].prev_signature == checkpoints[0].signature


async def test_two_replicas_sealing_at_once_sign_each_head_once(
    audit_db: AuditDb, audit_clock: ManualClock, audit_keyring: FileKeyring
) -> None:
    await _grow(audit_db, audit_clock, 5)
    policy = CheckpointPolicy(every_entries=1)
    numbers = await asyncio.gather(*(_seal(audit_db, audit_clock, audit_keyring, policy) for _ in range(4)))
    assert sorted(n for n in numbers if n is not None) == [1]


async def test_rotated_keys_keep_old_checkpoints_verifiable(
    audit_db: AuditDb, audit_clock: ManualClock, audit_keyring: FileKeyring
) -> None:
    policy = CheckpointPolicy(every_entries=1)
    await _grow(audit_db, audit_clock, 2)
    await _seal(audit_db, audit_clock, audit_keyring, policy)
    audit_clock.advance(timedelta(days=1))
    rotated_at = audit_clock.now()
    new_key = audit_keyring.rotate(rotated_at)
    await _grow(audit_db, audit_clock, 2)
    await _seal(audit_db, audit_clock, audit_keyring, policy)

    keys = audit_keyring.public_keys()
    assert len(keys.keys) == 2
    old = next(k for k in keys.keys.values() if k.key_id != new_key.key_id)
    assert old.not_after == new_key.not_before == rotated_at
    async with audit_db.factory() as session:
        checkpoints = await list_checkpoints(session)
        result = await verify_chain(session=session, keys=keys, now=audit_clock.now())
        rotations = (await session.execute(select(ENTRIES.c.detail).where(
            ENTRIES.c.action == AuditAction.SIGNING_KEY_ROTATED.value))).scalars().all()
    assert [c.key_id for c in checkpoints] == [old.key_id, new_key.key_id]
    assert [json.loads(d)["key_id"] for d in rotations] == [old.key_id, new_key.key_id]
    assert result.ok
    assert result.sealed_through == checkpoints[-1].head_seq


async def test_the_keyring_rotates_by_age(tmp_path: Path, audit_clock: ManualClock) -> None:
    keyring = FileKeyring(tmp_path / "keys", rotate_after=timedelta(days=30))
    first = keyring.signing_key(audit_clock.now())
    audit_clock.advance(timedelta(days=29))
    assert keyring.rotate_if_due(audit_clock.now()) is None
    audit_clock.advance(timedelta(days=2))
    rotated = keyring.rotate_if_due(audit_clock.now())
    assert rotated is not None
    assert keyring.signing_key(audit_clock.now()).key_id == rotated.key_id != first.key_id


async def test_signing_keys_are_private_files(tmp_path: Path, audit_clock: ManualClock) -> None:
    directory = tmp_path / "keys"
    FileKeyring(directory).signing_key(audit_clock.now())
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = list(directory.glob("*.json"))
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    os.chmod(files[0], 0o644)
    with pytest.raises(KeyringError, match="0600"):
        FileKeyring(directory).signing_key(audit_clock.now())


def test_a_key_from_settings_signs_and_publishes_its_predecessors(tmp_path: Path, audit_clock: ManualClock) -> None:
    old = StaticKeyring(b"\x01" * 32, audit_clock.now() - timedelta(days=60)).signing_key(audit_clock.now())
    old_public = old.public_info
    settings = AuditSettings(
        signing_key=base64.b64encode(b"\x02" * 32).decode(),
        signing_key_not_before=audit_clock.now() - timedelta(days=1),
        retired_public_keys=[RetiredPublicKey(
            key_id=old.key_id, public_key=base64.b64encode(old_public.public_key).decode(),
            not_before=old.not_before, not_after=audit_clock.now() - timedelta(days=1))],
    )
    keyring = build_keyring(settings, tmp_path)
    key = keyring.signing_key(audit_clock.now())
    published = keyring.public_keys()
    assert set(published.keys) == {old.key_id, key.key_id}
    signature = old.sign(b"message")
    assert published.check(old.key_id, b"message", signature, old.not_before) is SignatureCheck.OK
    # A retired key's signature dated after its window is not trusted.
    assert published.check(old.key_id, b"message", signature, audit_clock.now()) is SignatureCheck.OUTSIDE_WINDOW
    assert not list(tmp_path.iterdir())  # no key files written


def test_published_keys_round_trip_and_ids_are_bound_to_keys(audit_keyring: FileKeyring,
                                                             audit_clock: ManualClock) -> None:
    audit_keyring.signing_key(audit_clock.now())
    served = audit_keyring.public_keys().to_json()
    assert PublicKeySet.from_json(json.loads(json.dumps(served))).to_json() == served
    forged = dict(served["keys"][0], public_key=base64.b64encode(b"\x07" * 32).decode())
    with pytest.raises(KeyringError, match="does not match"):
        PublicKeyInfo.from_json(forged)


async def test_export_is_append_only_and_idempotent(
    audit_db: AuditDb, audit_clock: ManualClock, audit_keyring: FileKeyring, audit_sink: FileCheckpointSink
) -> None:
    policy = CheckpointPolicy(every_entries=1)
    for _ in range(3):
        await _grow(audit_db, audit_clock, 2)
        await _seal(audit_db, audit_clock, audit_keyring, policy)
    async with audit_db.factory() as session:
        assert await export_checkpoints(session=session, sink=audit_sink) == 3
        assert await export_checkpoints(session=session, sink=audit_sink) == 0
        stored = await list_checkpoints(session)
    lines = audit_sink.path.read_text().splitlines()
    assert [json.loads(line)["number"] for line in lines] == [1, 2, 3]
    assert await audit_sink.read_all() == stored
    # A torn last line (a crash mid-write) is ignored, not fatal.
    with audit_sink.path.open("a") as handle:
        handle.write('{"v": 1, "numb')
    assert await audit_sink.read_all() == stored


async def _sealed_chain(db: AuditDb, clock: ManualClock, keyring: FileKeyring, sink: FileCheckpointSink) -> None:
    policy = CheckpointPolicy(every_entries=1)
    for _ in range(3):
        await _grow(db, clock, 3)
        await _seal(db, clock, keyring, policy)
    async with db.factory() as session:
        await export_checkpoints(session=session, sink=sink)


async def _verify(db: AuditDb, clock: ManualClock, keys: PublicKeySet, sink: FileCheckpointSink | None = None
                  ) -> tuple[DamageKind | None, int | None, int | None]:
    async with db.factory() as session:
        result = await verify_chain(session=session, keys=keys, now=clock.now(),
                                    exported=await sink.read_all() if sink else ())
    damage = result.damage
    return (None, None, None) if damage is None else (damage.kind, damage.seq, damage.checkpoint)


async def test_a_forged_checkpoint_signature_is_reported(
    audit_db: AuditDb, audit_clock: ManualClock, audit_keyring: FileKeyring, audit_sink: FileCheckpointSink
) -> None:
    await _sealed_chain(audit_db, audit_clock, audit_keyring, audit_sink)
    async with audit_db.factory() as session:
        second = (await list_checkpoints(session))[1]
        await disable_audit_triggers(session)
        await session.execute(update(CHECKPOINTS).where(CHECKPOINTS.c.number == 2)
                              .values(head_seq=second.head_seq - 1))
        await session.commit()
    assert await _verify(audit_db, audit_clock, audit_keyring.public_keys()) == (
        DamageKind.BAD_SIGNATURE, second.head_seq - 1, 2)


async def test_checkpoints_from_an_unknown_key_are_reported(
    audit_db: AuditDb, audit_clock: ManualClock, audit_keyring: FileKeyring, audit_sink: FileCheckpointSink,
    tmp_path: Path,
) -> None:
    await _sealed_chain(audit_db, audit_clock, audit_keyring, audit_sink)
    stranger = FileKeyring(tmp_path / "stranger")
    stranger.signing_key(audit_clock.now())
    async with audit_db.factory() as session:
        first = (await list_checkpoints(session))[0]
    kind, seq, number = await _verify(audit_db, audit_clock, stranger.public_keys())
    assert (kind, seq, number) == (DamageKind.BAD_SIGNATURE, first.head_seq, 1)


async def test_a_deleted_checkpoint_is_reported(
    audit_db: AuditDb, audit_clock: ManualClock, audit_keyring: FileKeyring, audit_sink: FileCheckpointSink
) -> None:
    await _sealed_chain(audit_db, audit_clock, audit_keyring, audit_sink)
    async with audit_db.factory() as session:
        first, second, _third = await list_checkpoints(session)
        await disable_audit_triggers(session)
        await session.execute(CHECKPOINTS.delete().where(CHECKPOINTS.c.number == 2))
        await session.commit()
    kind, seq, _ = await _verify(audit_db, audit_clock, audit_keyring.public_keys())
    assert (kind, seq) == (DamageKind.DELETED, first.head_seq + 1)
    kind, seq, number = await _verify(audit_db, audit_clock, audit_keyring.public_keys(), audit_sink)
    assert (kind, seq, number) == (DamageKind.DELETED, first.head_seq + 1, second.number)


async def test_a_truncated_tail_with_its_checkpoints_and_head_is_caught_by_the_export(
    audit_db: AuditDb, audit_clock: ManualClock, audit_keyring: FileKeyring, audit_sink: FileCheckpointSink
) -> None:
    from tests.audit import tamper

    await _sealed_chain(audit_db, audit_clock, audit_keyring, audit_sink)
    async with audit_db.factory() as session:
        first = (await list_checkpoints(session))[0]
        await disable_audit_triggers(session)
        await tamper.truncate(session, first.head_seq, rewind_head=True, drop_checkpoints=True)
        await session.commit()
    # The database alone now looks whole...
    assert await _verify(audit_db, audit_clock, audit_keyring.public_keys()) == (None, None, None)
    # ...the exported checkpoints do not.
    kind, seq, _ = await _verify(audit_db, audit_clock, audit_keyring.public_keys(), audit_sink)
    assert (kind, seq) == (DamageKind.TAIL_TRUNCATED, first.head_seq + 1)
