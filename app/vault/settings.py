"""VaultSettings: the vault's knobs, to be nested into the app's Settings (e.g. `VOICELOG_VAULT__...`)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

KeyVaultKeyType = Literal["RSA-HSM", "RSA", "oct-HSM"]


class VaultSettings(BaseModel):
    """Envelope keys and KEK providers. Regions with a `keyvault_url` use Key Vault, others the local keyring."""

    bucket_lifetime_hours: int = Field(
        default=720,
        ge=1,
        description="Life of an hour bucket's KEK, from the bucket's start (720 h = 30 days, C7). No KEK is "
        "made for a bucket past it, and a bucket past it is due for destruction.",
    )
    local_keyring_dir: Path | None = Field(
        default=None,
        description="Local keyring directory (mode 0700, files 0600); unset = `<data_dir>/keyring`.",
    )
    local_master_key: SecretStr | None = Field(
        default=None,
        description="Local keyring: base64 of the 32-byte master key that seals every KEK file. Unset: a "
        "master key is generated once into `local_master_key_file`.",
    )
    local_master_key_file: Path | None = Field(
        default=None,
        description="Local keyring: where the generated master key lives (0600); unset = `<keyring dir>/master.key`. "
        "Keep it off the keyring's backups where possible.",
    )
    keyvault_key_type: KeyVaultKeyType = Field(
        default="RSA-HSM",
        description="Key Vault KEK type: `RSA-HSM` (Premium vault), `RSA` (Standard vault, software key), or "
        "`oct-HSM` (Managed HSM, AES-256 key wrap).",
    )
    keyvault_rsa_key_size: Literal[2048, 3072, 4096] = Field(
        default=3072, description="Key Vault: modulus size of RSA KEKs (wrap with RSA-OAEP-256)."
    )
    keyvault_key_prefix: str = Field(
        default="kek",
        pattern=r"^[a-z][a-z0-9]{0,15}$",
        description="Key Vault: KEKs are named `<prefix>-<region>-<yyyymmddhh>`.",
    )
    keyvault_timeout_s: float = Field(
        default=10.0, gt=0, description="Key Vault: connection and read timeout of one request."
    )

    @property
    def bucket_lifetime(self) -> timedelta:
        return timedelta(hours=self.bucket_lifetime_hours)
