"""Region settings: where a region's recordings live and which key service wraps their keys (C3).

Its own module so that storage and vault can read it without importing the whole Settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class RegionSettings(BaseModel):
    """One region: where its recordings are stored and which key service wraps their keys (C3)."""

    name: str = Field(description="Region name as resources name it, e.g. `eastus`.", pattern=r"^[a-z0-9]{2,32}$")
    blob_backend: Literal["local", "azure"] = Field(
        default="local", description="`local`: a directory under the data dir; `azure`: Azure Blob Storage."
    )
    blob_path: Path | None = Field(
        default=None, description="Local backend: directory for this region (default `<data_dir>/blobs/<name>`)."
    )
    blob_account_url: str | None = Field(
        default=None, description="Azure backend: the region's storage account URL (DefaultAzureCredential)."
    )
    blob_connection_string: SecretStr | None = Field(
        default=None, description="Azure backend: a connection string instead of the account URL (Azurite)."
    )
    blob_container: str = Field(default="recordings", description="Azure backend: the region's container.")
    keyvault_url: str | None = Field(
        default=None, description="Key Vault holding this region's KEKs; unset uses the local keyring."
    )
