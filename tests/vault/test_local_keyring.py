"""LocalKeyring specifics: file modes, KEK files sealed under the master key, destruction on disk."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from app.clock import ManualClock
from app.vault.errors import KeyDestroyed, KeyServiceError
from app.vault.factory import build_keyrings
from app.vault.keyring import KeyBucket
from app.vault.local import LocalKeyring, decode_master_key
from app.vault.settings import VaultSettings
from tests.fixtures.keys import KEY_CLOCK_START, KEY_LIFETIME

BUCKET = KeyBucket.of("eastus", KEY_CLOCK_START)
DEK = b"D" * 32


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_directories_are_0700_and_files_0600(tmp_path: Path, key_clock: ManualClock) -> None:
    keyring = LocalKeyring(tmp_path / "kr", clock=key_clock, bucket_lifetime=KEY_LIFETIME)
    await keyring.get_or_create(BUCKET)
    await keyring.destroy(KeyBucket.of("eastus", KEY_CLOCK_START.replace(hour=1)))
    root = tmp_path / "kr"
    for path in [root, *root.rglob("*")]:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path


async def test_kek_file_is_sealed_and_useless_without_the_master_key(tmp_path: Path, key_clock: ManualClock) -> None:
    keyring = LocalKeyring(tmp_path / "kr", clock=key_clock, bucket_lifetime=KEY_LIFETIME, master_key=b"M" * 32)
    await keyring.get_or_create(BUCKET)
    wrapped = await keyring.wrap(BUCKET, DEK, b"ctx")

    other = LocalKeyring(tmp_path / "kr", clock=key_clock, bucket_lifetime=KEY_LIFETIME, master_key=b"N" * 32)
    with pytest.raises(KeyServiceError, match="master key"):
        await other.unwrap(BUCKET, wrapped, b"ctx")
    assert not (tmp_path / "kr" / "master.key").exists()  # a given master key is never written down


async def test_kek_files_cannot_be_swapped_between_buckets(tmp_path: Path, key_clock: ManualClock) -> None:
    keyring = LocalKeyring(tmp_path / "kr", clock=key_clock, bucket_lifetime=KEY_LIFETIME)
    other = KeyBucket.of("eastus", KEY_CLOCK_START.replace(hour=9))
    await keyring.get_or_create(BUCKET)
    await keyring.get_or_create(other)
    keks = tmp_path / "kr" / "keks" / "eastus"
    (keks / f"{other.label}.kek").write_bytes((keks / f"{BUCKET.label}.kek").read_bytes())
    with pytest.raises(KeyServiceError):
        await keyring.wrap(other, DEK, b"ctx")


async def test_generated_master_key_survives_a_restart(tmp_path: Path, key_clock: ManualClock) -> None:
    first = LocalKeyring(tmp_path / "kr", clock=key_clock, bucket_lifetime=KEY_LIFETIME)
    await first.get_or_create(BUCKET)
    wrapped = await first.wrap(BUCKET, DEK, b"ctx")
    assert _mode(tmp_path / "kr" / "master.key") == 0o600

    second = LocalKeyring(tmp_path / "kr", clock=key_clock, bucket_lifetime=KEY_LIFETIME)
    assert bytes(await second.unwrap(BUCKET, wrapped, b"ctx")) == DEK


def test_master_key_file_readable_by_others_is_refused(tmp_path: Path, key_clock: ManualClock) -> None:
    LocalKeyring(tmp_path / "kr", clock=key_clock, bucket_lifetime=KEY_LIFETIME)
    (tmp_path / "kr" / "master.key").chmod(0o644)
    with pytest.raises(KeyServiceError, match="chmod 600"):
        LocalKeyring(tmp_path / "kr", clock=key_clock, bucket_lifetime=KEY_LIFETIME)


async def test_destroy_overwrites_unlinks_and_records(tmp_path: Path, key_clock: ManualClock) -> None:
    keyring = LocalKeyring(tmp_path / "kr", clock=key_clock, bucket_lifetime=KEY_LIFETIME)
    await keyring.get_or_create(BUCKET)
    kek_path = tmp_path / "kr" / "keks" / "eastus" / f"{BUCKET.label}.kek"
    before = kek_path.read_bytes()
    fd = os.open(kek_path, os.O_RDONLY)  # a reader holding the file open sees the overwrite
    try:
        record = await keyring.destroy(BUCKET)
        overwritten = os.pread(fd, len(before), 0)
    finally:
        os.close(fd)

    assert overwritten != before
    assert not kek_path.exists()
    stored = json.loads((tmp_path / "kr" / "destroyed" / "eastus" / f"{BUCKET.label}.json").read_text())
    assert stored["destroyed_at"] == record.destroyed_at.isoformat() == KEY_CLOCK_START.isoformat()
    assert set(stored) == {"region", "hour", "destroyed_at", "provider", "key_name"}
    with pytest.raises(KeyDestroyed):
        await keyring.get_or_create(BUCKET)


def test_master_key_setting_is_base64_of_32_bytes() -> None:
    assert decode_master_key(base64.b64encode(b"k" * 32).decode()) == b"k" * 32
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError, match="master key"):
            decode_master_key(bad)


async def test_build_keyrings_uses_the_local_keyring_for_regions_without_a_vault(
    tmp_path: Path, key_clock: ManualClock
) -> None:
    settings = VaultSettings(local_master_key=base64.b64encode(b"m" * 32).decode())
    keyrings = build_keyrings(settings, keyvault_urls={"eastus": None, "westeurope": None},
                              data_dir=tmp_path, clock=key_clock)
    assert keyrings.regions == ["eastus", "westeurope"]
    assert isinstance(keyrings.for_region("eastus"), LocalKeyring)
    await keyrings.get_or_create(BUCKET)
    assert (tmp_path / "keyring" / "keks" / "eastus" / f"{BUCKET.label}.kek").exists()
    await keyrings.aclose()


async def test_live_buckets_skips_files_that_are_not_buckets(tmp_path: Path, key_clock: ManualClock) -> None:
    """Stray files beside the KEKs (an editor's backup, a bad region, a label out of range) are not buckets,
    and do not hide the real ones listed after them."""
    keyring = LocalKeyring(tmp_path / "kr", clock=key_clock, bucket_lifetime=KEY_LIFETIME)
    older = KeyBucket.of("eastus", KEY_CLOCK_START.replace(hour=1))
    await keyring.get_or_create(BUCKET)
    await keyring.get_or_create(older)
    keks = tmp_path / "kr" / "keks"
    for stray in ("eastus/2020.kek", "eastus/2020011399.kek", "eastus/20200101000.kek", "eastus/notes.txt",
                  "eastus/zzzz.kek", "East-US/2020010100.kek"):
        (keks / stray).parent.mkdir(exist_ok=True)
        (keks / stray).write_bytes(b"x")
    (keks / "loose.kek").write_bytes(b"x")
    assert await keyring.live_buckets(started_before=KEY_CLOCK_START.replace(hour=23)) == sorted([BUCKET, older])
