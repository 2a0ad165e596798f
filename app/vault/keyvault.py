"""KeyVaultKeyring: the production KEK provider, one Azure Key Vault key per (region, hour) bucket.

The KEK `<prefix>-<region>-<yyyymmddhh>` never leaves the vault (RSA-HSM/RSA with RSA-OAEP-256, or
oct-HSM with A256KW on Managed HSM). Key Vault's wrap has no associated data, so each wrap seals the DEK
with AES-256-GCM under a fresh 32-byte key W bound to the context, and Key Vault wraps W. Destroy is delete
+ purge; the vault must have purge protection off (docs/FORMAT.md, OPERATIONS). Access is by managed
identity through `azure-identity`.

Provider blob (first byte is the scheme):

    scheme (1: 0x02 RSA-OAEP-256, 0x03 A256KW) | u8 n | key version (n ASCII bytes) |
    u16 BE m | Key Vault wrapped W (m) | nonce (12) | AES-256-GCM(W, nonce, DEK, context) (32 + 16)
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import structlog
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.keys import KeyOperation, KeyVaultKey
from azure.keyvault.keys.aio import KeyClient
from azure.keyvault.keys.crypto import KeyWrapAlgorithm
from azure.keyvault.keys.crypto.aio import CryptographyClient
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.clock import Clock
from app.vault.datakey import BytesLike
from app.vault.errors import KeyDestroyed, KeyNotFound, KeyServiceError, UnwrapFailed
from app.vault.keyring import KeyBucket, KeyDestruction, erasure_id, refuse_expired
from app.vault.settings import KeyVaultKeyType

SCHEME_RSA_OAEP_256 = 0x02
SCHEME_A256KW = 0x03
_NONCE = 12
_WRAP_OPS: list[str | KeyOperation] = [KeyOperation.wrap_key, KeyOperation.unwrap_key]
_U16 = struct.Struct(">H")

log = structlog.get_logger(__name__)


class KeyVaultKeyring:
    """KEKs in one region's Key Vault (or Managed HSM). Pass `credential` from azure-identity."""

    provider = "keyvault"

    def __init__(
        self,
        vault_url: str,
        credential: AsyncTokenCredential,
        *,
        clock: Clock,
        bucket_lifetime: timedelta,
        key_type: KeyVaultKeyType = "RSA-HSM",
        rsa_key_size: int = 3072,
        key_prefix: str = "kek",
        timeout_s: float = 10.0,
        close_credential: bool = False,
        **client_options: Any,
    ) -> None:
        self._clock = clock
        self._lifetime = bucket_lifetime
        self._key_type = key_type
        self._rsa_key_size = rsa_key_size
        self._prefix = key_prefix
        self._scheme = SCHEME_A256KW if key_type == "oct-HSM" else SCHEME_RSA_OAEP_256
        self._algorithm = KeyWrapAlgorithm.aes_256 if key_type == "oct-HSM" else KeyWrapAlgorithm.rsa_oaep_256
        self._credential = credential
        self._close_credential = close_credential
        self._client = KeyClient(
            vault_url, credential, connection_timeout=timeout_s, read_timeout=timeout_s, **client_options
        )
        self._name_pattern = re.compile(rf"^{re.escape(key_prefix)}-([a-z0-9]{{2,32}})-(\d{{10}})$")
        # Current KEK version per bucket; kept only for buckets still inside their lifetime.
        self._current: dict[KeyBucket, KeyVaultKey] = {}
        self._crypto: dict[tuple[str, str], CryptographyClient] = {}

    def key_name(self, bucket: KeyBucket) -> str:
        return f"{self._prefix}-{bucket.region}-{bucket.label}"

    def _erasure_name(self, bucket: KeyBucket, context: bytes) -> str:
        return f"{self.key_name(bucket)}-x{erasure_id(context).hex()}"

    # --- protocol ---------------------------------------------------------------------------------

    async def get_or_create(self, bucket: KeyBucket) -> None:
        refuse_expired(bucket, self._clock.now(), self._lifetime)
        if bucket in self._current:
            return
        name = self.key_name(bucket)
        try:
            key = await self._client.get_key(name)
        except ResourceNotFoundError:
            key = await self._create(bucket, name)
            log.info("vault.kek.created", provider=self.provider, region=bucket.region, hour=bucket.label)
        except AzureError as exc:
            raise _service_error("get key", exc) from None
        self._remember(bucket, key)

    async def wrap(self, bucket: KeyBucket, key: BytesLike, context: bytes) -> bytes:
        kek = await self._current_key(bucket)
        version = kek.properties.version or ""
        wrapping_key = AESGCM.generate_key(256)
        nonce = os.urandom(_NONCE)
        sealed = AESGCM(wrapping_key).encrypt(nonce, key, context)
        crypto = self._crypto_client(kek.name, version)
        try:
            result = await crypto.wrap_key(self._algorithm, wrapping_key)
        except ResourceNotFoundError:
            raise KeyDestroyed("the bucket's KEK is gone", region=bucket.region, hour=bucket.hour) from None
        except AzureError as exc:
            raise _service_error("wrap", exc) from None
        encoded_version = version.encode("ascii")
        return (bytes([self._scheme, len(encoded_version)]) + encoded_version + _U16.pack(len(result.encrypted_key))
                + result.encrypted_key + nonce + sealed)

    async def unwrap(self, bucket: KeyBucket, wrapped: bytes, context: bytes) -> bytearray:
        version, encrypted_key, nonce, sealed = self._parse(wrapped)
        if await self._exists(self._erasure_name(bucket, context)):
            raise KeyDestroyed("this recording's key was erased", region=bucket.region, hour=bucket.hour)
        crypto = self._crypto_client(self.key_name(bucket), version)
        try:
            result = await crypto.unwrap_key(self._algorithm, encrypted_key)
        except ResourceNotFoundError:
            if await self._exists(self.key_name(bucket)):
                raise UnwrapFailed("the wrapped key was not made by this bucket's KEK") from None
            # Key Vault cannot tell a purged key from one never made: either way nothing unwraps (C7).
            raise KeyDestroyed("the bucket's KEK does not exist", region=bucket.region, hour=bucket.hour) from None
        except HttpResponseError as exc:
            if exc.status_code == 400:
                raise UnwrapFailed("Key Vault refused the wrapped key") from None
            raise _service_error("unwrap", exc) from None
        except AzureError as exc:
            raise _service_error("unwrap", exc) from None
        wrapping_key = bytearray(result.key)
        try:
            return bytearray(AESGCM(wrapping_key).decrypt(nonce, sealed, context))
        except InvalidTag:
            raise UnwrapFailed("the wrapped key does not open for this recording") from None
        finally:
            wrapping_key[:] = bytes(len(wrapping_key))

    async def erase(self, bucket: KeyBucket, context: bytes) -> None:
        if not await self._exists(self.key_name(bucket)):
            return  # no KEK left that could unwrap it
        name = self._erasure_name(bucket, context)
        if await self._exists(name):
            return
        try:
            # A marker key: its existence is the erasure record. It is purged with the bucket.
            await self._client.create_ec_key(
                name, curve="P-256", hardware_protected=self._key_type != "RSA", key_operations=[KeyOperation.verify],
                tags={"voicelog": "erasure", "region": bucket.region, "hour": bucket.label},
            )
        except AzureError as exc:
            raise _service_error("record erasure", exc) from None
        log.info("vault.key.erased", provider=self.provider, region=bucket.region, hour=bucket.label)

    async def destroy(self, bucket: KeyBucket) -> KeyDestruction:
        name = self.key_name(bucket)
        self._forget(bucket)
        await self._delete_and_purge(name)  # the KEK first: erasure markers matter only while it exists
        markers = [n async for n in self._key_names() if n.startswith(f"{name}-x")]
        for marker in markers:
            await self._delete_and_purge(marker)
        log.info("vault.kek.destroyed", provider=self.provider, region=bucket.region, hour=bucket.label,
                 erasure_markers=len(markers))
        return KeyDestruction(bucket=bucket, destroyed_at=self._clock.now(), provider=self.provider, key_name=name)

    async def live_buckets(self, *, started_before: datetime) -> list[KeyBucket]:
        found: list[KeyBucket] = []
        async for name in self._key_names():
            match = self._name_pattern.fullmatch(name)
            if match is None:
                continue
            bucket = KeyBucket.from_label(match.group(1), match.group(2))
            if bucket.hour < started_before:
                found.append(bucket)
        return sorted(found)

    async def aclose(self) -> None:
        await self._client.close()
        if self._close_credential:
            await self._credential.close()

    # --- Key Vault --------------------------------------------------------------------------------

    async def _create(self, bucket: KeyBucket, name: str) -> KeyVaultKey:
        tags = {"voicelog": "kek", "region": bucket.region, "hour": bucket.label}
        expires = bucket.expires_at(self._lifetime)
        try:
            if self._key_type == "oct-HSM":
                return await self._client.create_oct_key(
                    name, size=256, hardware_protected=True, key_operations=_WRAP_OPS, tags=tags, expires_on=expires
                )
            return await self._client.create_rsa_key(
                name, size=self._rsa_key_size, hardware_protected=self._key_type == "RSA-HSM",
                key_operations=_WRAP_OPS, tags=tags, expires_on=expires,
            )
        except ResourceExistsError:
            # A deleted key of that name awaits purge: the bucket was destroyed.
            raise KeyDestroyed("the bucket's KEK was destroyed", region=bucket.region, hour=bucket.hour) from None
        except AzureError as exc:
            raise _service_error("create key", exc) from None

    async def _current_key(self, bucket: KeyBucket) -> KeyVaultKey:
        cached = self._current.get(bucket)
        if cached is not None:
            return cached
        try:
            key = await self._client.get_key(self.key_name(bucket))
        except ResourceNotFoundError:
            raise KeyNotFound("no KEK for this bucket", region=bucket.region, hour=bucket.hour) from None
        except AzureError as exc:
            raise _service_error("get key", exc) from None
        self._remember(bucket, key)
        return key

    def _remember(self, bucket: KeyBucket, key: KeyVaultKey) -> None:
        now = self._clock.now()
        for old in [b for b in self._current if b.expired(now, self._lifetime)]:
            self._forget(old)
        self._current[bucket] = key

    def _forget(self, bucket: KeyBucket) -> None:
        self._current.pop(bucket, None)
        name = self.key_name(bucket)
        for ident in [i for i in self._crypto if i[0] == name]:
            del self._crypto[ident]

    def _crypto_client(self, name: str, version: str) -> CryptographyClient:
        ident = (name, version)
        client = self._crypto.get(ident)
        if client is None:
            client = self._client.get_cryptography_client(name, key_version=version or None)
            self._crypto[ident] = client
        return client

    async def _exists(self, name: str) -> bool:
        try:
            await self._client.get_key(name)
        except ResourceNotFoundError:
            return False
        except AzureError as exc:
            raise _service_error("get key", exc) from None
        return True

    async def _key_names(self) -> AsyncIterator[str]:
        try:
            async for props in self._client.list_properties_of_keys():
                if props.name:
                    yield props.name
        except AzureError as exc:
            raise _service_error("list keys", exc) from None

    async def _delete_and_purge(self, name: str) -> None:
        try:
            await self._client.delete_key(name)
        except ResourceNotFoundError:
            pass  # already deleted (maybe not yet purged)
        except AzureError as exc:
            raise _service_error("delete key", exc) from None
        try:
            await self._client.purge_deleted_key(name)
        except ResourceNotFoundError:
            pass  # already purged, or the vault has no soft delete
        except AzureError as exc:
            raise _service_error("purge key", exc) from None

    def _parse(self, wrapped: bytes) -> tuple[str, bytes, bytes, bytes]:
        try:
            if wrapped[0] != self._scheme:
                raise UnwrapFailed("the wrapped key was not made by this kind of Key Vault key")
            n = wrapped[1]
            version = wrapped[2 : 2 + n].decode("ascii")
            pos = 2 + n
            (m,) = _U16.unpack_from(wrapped, pos)
            pos += _U16.size
            encrypted_key = wrapped[pos : pos + m]
            pos += m
            nonce, sealed = wrapped[pos : pos + _NONCE], wrapped[pos + _NONCE :]
        except (IndexError, struct.error, UnicodeDecodeError):
            raise UnwrapFailed("the wrapped key is malformed") from None
        if len(encrypted_key) != m or len(nonce) != _NONCE or len(sealed) < 16:
            raise UnwrapFailed("the wrapped key is malformed")
        return version, encrypted_key, nonce, sealed


def _service_error(action: str, exc: AzureError) -> KeyServiceError:
    status = getattr(exc, "status_code", None)
    return KeyServiceError(f"Key Vault {action} failed ({type(exc).__name__}, status {status})")
