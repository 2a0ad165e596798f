"""LocalKeyring: the embedded default KEK provider, one sealed file per (region, hour) bucket.

Layout under the keyring directory (0700; every file 0600):

    master.key                      32 random bytes, unless a master key is given (sealing key of KEK files)
    keks/<region>/<yyyymmddhh>.kek  "VLKK" | 0x01 | nonce (12) | AES-256-GCM(master, payload, aad)
                                    payload = KEK (32) | erased context ids (16 each); aad = "VLKK" | 0x01 | bucket
    destroyed/<region>/<yyyymmddhh>.json   destruction record (no key material)

Destroy overwrites the KEK file with random bytes, fsyncs, unlinks it and writes the record. Overwriting is
best effort on journaling or flash storage; the KEK file being sealed under the master key is what keeps a
leftover block from being useful alone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import stat
from datetime import datetime, timedelta
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.clock import Clock
from app.vault.datakey import BytesLike
from app.vault.errors import KeyDestroyed, KeyNotFound, KeyServiceError, UnwrapFailed
from app.vault.keyring import KeyBucket, KeyDestruction, erasure_id, hour_label, refuse_expired

LOCAL_SCHEME = 0x01  # first byte of the provider blob: AES-256-GCM under a local KEK
MASTER_KEY_SIZE = 32
KEK_SIZE = 32
_NONCE = 12
_FILE_MAGIC = b"VLKK\x01"
_ID_SIZE = 16
_DIR_MODE = 0o700
_FILE_MODE = 0o600

log = structlog.get_logger(__name__)


def decode_master_key(text: str) -> bytes:
    """The master key from its base64 setting; exactly 32 bytes."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise ValueError("the local master key must be base64") from None
    if len(raw) != MASTER_KEY_SIZE:
        raise ValueError("the local master key must decode to 32 bytes")
    return raw


class LocalKeyring:
    """KEKs in a local directory, each sealed under a master key. Thread-safe within one process."""

    provider = "local"

    def __init__(
        self,
        directory: Path,
        *,
        clock: Clock,
        bucket_lifetime: timedelta,
        master_key: bytes | None = None,
        master_key_file: Path | None = None,
    ) -> None:
        self._root = directory
        self._clock = clock
        self._lifetime = bucket_lifetime
        _ensure_dir(self._root)
        if master_key is None:
            master_key = _load_or_create_master_key(master_key_file or self._root / "master.key")
        if len(master_key) != MASTER_KEY_SIZE:
            raise ValueError("the local master key must be 32 bytes")
        self._master = AESGCM(master_key)
        self._lock = asyncio.Lock()

    # --- protocol ---------------------------------------------------------------------------------

    async def get_or_create(self, bucket: KeyBucket) -> None:
        refuse_expired(bucket, self._clock.now(), self._lifetime)
        async with self._lock:
            await asyncio.to_thread(self._get_or_create, bucket)

    async def wrap(self, bucket: KeyBucket, key: BytesLike, context: bytes) -> bytes:
        async with self._lock:
            kek, _ = await asyncio.to_thread(self._read, bucket)
        nonce = os.urandom(_NONCE)
        return bytes([LOCAL_SCHEME]) + nonce + AESGCM(kek).encrypt(nonce, key, context)

    async def unwrap(self, bucket: KeyBucket, wrapped: bytes, context: bytes) -> bytearray:
        if len(wrapped) < 1 + _NONCE + 16 or wrapped[0] != LOCAL_SCHEME:
            raise UnwrapFailed("not a local-keyring wrapped key")
        async with self._lock:
            kek, erased = await asyncio.to_thread(self._read, bucket)
        if erasure_id(context) in erased:
            raise KeyDestroyed("this recording's key was erased", region=bucket.region, hour=bucket.hour)
        try:
            return bytearray(AESGCM(kek).decrypt(wrapped[1 : 1 + _NONCE], wrapped[1 + _NONCE :], context))
        except InvalidTag:
            raise UnwrapFailed("the wrapped key does not open for this recording") from None

    async def erase(self, bucket: KeyBucket, context: bytes) -> None:
        async with self._lock:
            await asyncio.to_thread(self._erase, bucket, erasure_id(context))

    async def destroy(self, bucket: KeyBucket) -> KeyDestruction:
        async with self._lock:
            return await asyncio.to_thread(self._destroy, bucket)

    async def live_buckets(self, *, started_before: datetime) -> list[KeyBucket]:
        return await asyncio.to_thread(self._live_buckets, started_before)

    async def aclose(self) -> None:
        return None

    # --- files ------------------------------------------------------------------------------------

    def _kek_path(self, bucket: KeyBucket) -> Path:
        return self._root / "keks" / bucket.region / f"{bucket.label}.kek"

    def _record_path(self, bucket: KeyBucket) -> Path:
        return self._root / "destroyed" / bucket.region / f"{bucket.label}.json"

    def _file_aad(self, bucket: KeyBucket) -> bytes:
        return _FILE_MAGIC + f"{bucket.region}/{bucket.label}".encode()

    def _seal_file(self, bucket: KeyBucket, kek: bytes, erased: list[bytes]) -> bytes:
        nonce = os.urandom(_NONCE)
        return _FILE_MAGIC + nonce + self._master.encrypt(nonce, kek + b"".join(erased), self._file_aad(bucket))

    def _get_or_create(self, bucket: KeyBucket) -> None:
        if self._record_path(bucket).exists():
            raise KeyDestroyed("the bucket's KEK was destroyed", region=bucket.region, hour=bucket.hour)
        path = self._kek_path(bucket)
        if path.exists():
            return
        _ensure_dir(path.parent)
        sealed = self._seal_file(bucket, os.urandom(KEK_SIZE), [])
        try:
            _write_new(path, sealed)
        except FileExistsError:
            return  # made concurrently by another process: keep theirs
        log.info("vault.kek.created", provider=self.provider, region=bucket.region, hour=bucket.label)

    def _read(self, bucket: KeyBucket) -> tuple[bytes, list[bytes]]:
        try:
            data = self._kek_path(bucket).read_bytes()
        except FileNotFoundError:
            if self._record_path(bucket).exists():
                raise KeyDestroyed("the bucket's KEK was destroyed", region=bucket.region, hour=bucket.hour) from None
            raise KeyNotFound("no KEK for this bucket", region=bucket.region, hour=bucket.hour) from None
        head = len(_FILE_MAGIC)
        if data[:head] != _FILE_MAGIC:
            raise KeyServiceError(f"KEK file of bucket {bucket} is not a keyring file")
        try:
            payload = self._master.decrypt(data[head : head + _NONCE], data[head + _NONCE :], self._file_aad(bucket))
        except InvalidTag:
            raise KeyServiceError(f"KEK file of bucket {bucket} does not open under the master key") from None
        ids = payload[KEK_SIZE:]
        return payload[:KEK_SIZE], [ids[i : i + _ID_SIZE] for i in range(0, len(ids), _ID_SIZE)]

    def _erase(self, bucket: KeyBucket, context_id: bytes) -> None:
        try:
            kek, erased = self._read(bucket)
        except (KeyDestroyed, KeyNotFound):
            return  # nothing left that could unwrap it
        if context_id in erased:
            return
        _replace(self._kek_path(bucket), self._seal_file(bucket, kek, [*erased, context_id]))
        log.info("vault.key.erased", provider=self.provider, region=bucket.region, hour=bucket.label)

    def _destroy(self, bucket: KeyBucket) -> KeyDestruction:
        path = self._kek_path(bucket)
        if path.exists():
            _shred_file(path)
        record_path = self._record_path(bucket)
        if record_path.exists():
            return _read_record(record_path)
        record = KeyDestruction(bucket=bucket, destroyed_at=self._clock.now(), provider=self.provider,
                                key_name=f"keks/{bucket.region}/{bucket.label}.kek")
        _ensure_dir(record_path.parent)
        body = {"region": bucket.region, "hour": bucket.hour.isoformat(), "destroyed_at":
                record.destroyed_at.isoformat(), "provider": record.provider, "key_name": record.key_name}
        _replace(record_path, json.dumps(body, sort_keys=True).encode())
        log.info("vault.kek.destroyed", provider=self.provider, region=bucket.region, hour=bucket.label)
        return record

    def _live_buckets(self, started_before: datetime) -> list[KeyBucket]:
        # Labels are fixed-width yyyymmddhh, so a string comparison with the label of `started_before`'s own
        # hour skips the (many) younger buckets unparsed; the exact comparison is made on what is left.
        newest = hour_label(started_before)
        found: list[KeyBucket] = []
        keks = self._root / "keks"
        if not keks.is_dir():
            return found
        for region in sorted(entry.name for entry in os.scandir(keks) if entry.is_dir()):
            labels = sorted(name[:-4] for name in os.listdir(keks / region) if name.endswith(".kek"))
            for label in labels:
                if label > newest:
                    break
                try:
                    bucket = KeyBucket.from_label(region, label)
                except ValueError:
                    continue
                if bucket.hour < started_before:
                    found.append(bucket)
        return found


def _ensure_dir(path: Path) -> None:
    """Create `path` and any missing parent with mode 0700 (mkdir's parents= would use the umask)."""
    if not path.parent.exists():
        _ensure_dir(path.parent)
    path.mkdir(mode=_DIR_MODE, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != _DIR_MODE:
        path.chmod(_DIR_MODE)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def _replace(path: Path, data: bytes) -> None:
    """Atomic replace: a crash leaves either the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    _write_new(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _shred_file(path: Path) -> None:
    """Overwrite in place with random bytes, fsync, unlink, fsync the directory."""
    fd = os.open(path, os.O_WRONLY)
    try:
        size = os.fstat(fd).st_size
        os.write(fd, os.urandom(size))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    _fsync_dir(path.parent)


def _load_or_create_master_key(path: Path) -> bytes:
    _ensure_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        _write_new(path, os.urandom(MASTER_KEY_SIZE))
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise KeyServiceError("the master key file must not be readable by group or others (chmod 600)")
    raw = path.read_bytes()
    if len(raw) != MASTER_KEY_SIZE:
        raise KeyServiceError("the master key file must hold exactly 32 bytes")
    return raw


def _read_record(path: Path) -> KeyDestruction:
    body = json.loads(path.read_text())
    bucket = KeyBucket(body["region"], datetime.fromisoformat(body["hour"]))
    return KeyDestruction(bucket=bucket, destroyed_at=datetime.fromisoformat(body["destroyed_at"]),
                          provider=body["provider"], key_name=body["key_name"])
