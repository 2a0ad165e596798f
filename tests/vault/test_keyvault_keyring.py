"""KeyVaultKeyring specifics against the fake vault over HTTPS, through the real azure-keyvault-keys SDK."""

from __future__ import annotations

import pytest

from app.clock import ManualClock
from app.vault.errors import KeyDestroyed, KeyServiceError
from app.vault.factory import build_keyrings
from app.vault.keyring import KeyBucket
from app.vault.keyvault import KeyVaultKeyring
from app.vault.settings import VaultSettings
from tests.fakes.keyvault import RunningKeyVault
from tests.fixtures.keys import KEY_CLOCK_START, keyvault_keyring_for

BUCKET = KeyBucket.of("eastus", KEY_CLOCK_START)
DEK = b"D" * 32


async def test_sdk_authenticates_through_the_bearer_challenge(
    fake_keyvault: RunningKeyVault, keyvault_keyring: KeyVaultKeyring
) -> None:
    await keyvault_keyring.get_or_create(BUCKET)
    assert fake_keyvault.vault.calls["challenge"] >= 1
    assert fake_keyvault.credential.scopes == ["https://vault.azure.net/.default"]


async def test_one_named_key_per_bucket_with_wrap_only_operations(
    fake_keyvault: RunningKeyVault, keyvault_keyring: KeyVaultKeyring
) -> None:
    await keyvault_keyring.get_or_create(BUCKET)
    await keyvault_keyring.get_or_create(BUCKET)
    stored = fake_keyvault.vault.keys["kek-eastus-2025031010"]
    assert len(stored.versions) == 1
    version = stored.versions[0]
    assert version.kty == "RSA-HSM"
    assert sorted(version.key_ops) == ["unwrapKey", "wrapKey"]
    assert version.tags == {"voicelog": "kek", "region": "eastus", "hour": "2025031010"}
    assert version.exp is not None  # the key itself says when its bucket ends


async def test_destroy_deletes_then_purges(fake_keyvault: RunningKeyVault, keyvault_keyring: KeyVaultKeyring) -> None:
    await keyvault_keyring.get_or_create(BUCKET)
    await keyvault_keyring.destroy(BUCKET)
    assert "kek-eastus-2025031010" not in fake_keyvault.vault.keys  # not even soft-deleted
    assert fake_keyvault.vault.calls["delete"] == 1
    assert fake_keyvault.vault.calls["purge"] == 1


async def test_destroy_also_purges_erasure_markers(
    fake_keyvault: RunningKeyVault, keyvault_keyring: KeyVaultKeyring
) -> None:
    await keyvault_keyring.get_or_create(BUCKET)
    await keyvault_keyring.erase(BUCKET, b"ctx")
    assert any(n.startswith("kek-eastus-2025031010-x") for n in fake_keyvault.vault.keys)
    await keyvault_keyring.destroy(BUCKET)
    assert fake_keyvault.vault.keys == {}


async def test_a_soft_deleted_kek_is_never_recreated(
    fake_keyvault: RunningKeyVault, keyvault_keyring: KeyVaultKeyring
) -> None:
    await keyvault_keyring.get_or_create(BUCKET)
    fake_keyvault.vault.fail_next["purge"] = 403
    with pytest.raises(KeyServiceError, match="purge"):
        await keyvault_keyring.destroy(BUCKET)
    with pytest.raises(KeyDestroyed):
        await keyvault_keyring.get_or_create(BUCKET)
    await keyvault_keyring.destroy(BUCKET)  # a retry finishes the job
    assert fake_keyvault.vault.keys == {}


async def test_service_failures_are_typed_and_say_nothing_secret(
    fake_keyvault: RunningKeyVault, keyvault_keyring: KeyVaultKeyring
) -> None:
    await keyvault_keyring.get_or_create(BUCKET)
    wrapped = await keyvault_keyring.wrap(BUCKET, DEK, b"ctx")
    fake_keyvault.vault.fail_next["unwrapkey"] = 403
    with pytest.raises(KeyServiceError) as err:
        await keyvault_keyring.unwrap(BUCKET, wrapped, b"ctx")
    assert "403" in str(err.value)
    assert fake_keyvault.credential.token not in str(err.value)


async def test_managed_hsm_aes_key_wrap(fake_keyvault: RunningKeyVault, key_clock: ManualClock) -> None:
    keyring = keyvault_keyring_for(fake_keyvault, key_clock, key_type="oct-HSM")
    try:
        await keyring.get_or_create(BUCKET)
        wrapped = await keyring.wrap(BUCKET, DEK, b"ctx")
        assert wrapped[0] == 0x03
        assert bytes(await keyring.unwrap(BUCKET, wrapped, b"ctx")) == DEK
        assert fake_keyvault.vault.keys["kek-eastus-2025031010"].versions[0].kty == "oct-HSM"
    finally:
        await keyring.aclose()


async def test_build_keyrings_puts_vault_regions_on_key_vault(
    fake_keyvault: RunningKeyVault, key_clock: ManualClock, tmp_path: object
) -> None:
    settings = VaultSettings(keyvault_rsa_key_size=2048)
    keyrings = build_keyrings(settings, keyvault_urls={"eastus": fake_keyvault.url, "westeurope": None},
                              data_dir=tmp_path, clock=key_clock, credential=fake_keyvault.credential)  # type: ignore[arg-type]
    try:
        assert isinstance(keyrings.for_region("eastus"), KeyVaultKeyring)
    finally:
        await keyrings.aclose()
