"""Build the keyrings the settings describe: Key Vault for regions that name one, the local keyring else."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from azure.core.credentials_async import AsyncTokenCredential

from app.clock import Clock
from app.vault.keyring import Keyring, RegionKeyrings
from app.vault.keyvault import KeyVaultKeyring
from app.vault.local import LocalKeyring, decode_master_key
from app.vault.settings import VaultSettings


def build_keyrings(
    settings: VaultSettings,
    *,
    keyvault_urls: Mapping[str, str | None],
    data_dir: Path,
    clock: Clock,
    credential: AsyncTokenCredential | None = None,
) -> RegionKeyrings:
    """One keyring per region. `keyvault_urls` maps every configured region to its vault URL (or None).

    Without `credential`, Key Vault regions authenticate with azure-identity's DefaultAzureCredential
    (managed identity in production), which the keyrings then own and close.
    """
    keyrings: dict[str, Keyring] = {}
    local: LocalKeyring | None = None
    for region, url in keyvault_urls.items():
        if url:
            owned = credential is None
            if credential is None:
                from azure.identity.aio import DefaultAzureCredential

                cred: AsyncTokenCredential = DefaultAzureCredential()
            else:
                cred = credential
            keyrings[region] = KeyVaultKeyring(
                url, cred, clock=clock, bucket_lifetime=settings.bucket_lifetime,
                key_type=settings.keyvault_key_type, rsa_key_size=settings.keyvault_rsa_key_size,
                key_prefix=settings.keyvault_key_prefix, timeout_s=settings.keyvault_timeout_s,
                close_credential=owned,
            )
            continue
        if local is None:
            master = settings.local_master_key
            local = LocalKeyring(
                settings.local_keyring_dir or data_dir / "keyring",
                clock=clock,
                bucket_lifetime=settings.bucket_lifetime,
                master_key=decode_master_key(master.get_secret_value()) if master else None,
                master_key_file=settings.local_master_key_file,
            )
        keyrings[region] = local
    return RegionKeyrings(keyrings)
