"""Ed25519 keys that sign checkpoints and reports: keyrings, rotation, and the published public keys.

Two keyrings: files under a directory (one 0600 JSON file per key, rotated by age) or one key from
configuration with its retired predecessors. Either publishes every public key with its validity window;
a verifier trusts a signature only from a key valid at the signed time.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from app.audit.actions import parse_detail_time
from app.audit.canonical import canonical_time
from app.audit.settings import AuditSettings
from app.errors import AppError

ALGORITHM: Final = "Ed25519"


class KeyringError(AppError):
    code = "audit_keyring_error"
    title = "The audit signing keyring is not usable"


def key_id_for(public_raw: bytes) -> str:
    """A key's id is derived from its public half: `ed25519:` + 16 hex digits of its SHA-256."""
    return "ed25519:" + hashlib.sha256(public_raw).hexdigest()[:16]


def _public_raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str, what: str, length: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyringError(f"{what} is not base64") from exc
    if length is not None and len(raw) != length:
        raise KeyringError(f"{what} must be {length} bytes")
    return raw


@dataclass(frozen=True)
class PublicKeyInfo:
    """A published key: its id, raw public key and the window [not_before, not_after) it may sign in."""

    key_id: str
    public_key: bytes
    not_before: datetime
    not_after: datetime | None = None

    def valid_at(self, moment: datetime) -> bool:
        return self.not_before <= moment and (self.not_after is None or moment < self.not_after)

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "algorithm": ALGORITHM,
            "public_key": _b64(self.public_key),
            "not_before": canonical_time(self.not_before),
            "not_after": None if self.not_after is None else canonical_time(self.not_after),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PublicKeyInfo:
        try:
            raw = _unb64(str(data["public_key"]), "public_key", 32)
            key_id = str(data["key_id"])
            not_before = _parse_time(data["not_before"])
            not_after = None if data.get("not_after") is None else _parse_time(data["not_after"])
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyringError(f"malformed public key entry: {exc}") from exc
        if key_id != key_id_for(raw):
            raise KeyringError(f"key id {key_id} does not match its public key")
        return cls(key_id, raw, not_before, not_after)


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    text = str(value)
    try:
        return parse_detail_time(text)
    except ValueError:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError("key window times need a time zone") from None
        return moment.astimezone(UTC)


class SignatureCheck(StrEnum):
    OK = "ok"
    UNKNOWN_KEY = "unknown_key"
    OUTSIDE_WINDOW = "outside_window"
    BAD_SIGNATURE = "bad_signature"


@dataclass(frozen=True)
class PublicKeySet:
    """The keys a verifier trusts."""

    keys: Mapping[str, PublicKeyInfo]

    @classmethod
    def of(cls, infos: Iterable[PublicKeyInfo]) -> PublicKeySet:
        return cls({info.key_id: info for info in infos})

    @classmethod
    def from_json(cls, data: Any) -> PublicKeySet:
        """Accepts what GET /audit/keys returns (`{"keys": [...]}`) or a bare list."""
        items = data.get("keys") if isinstance(data, Mapping) else data
        if not isinstance(items, list):
            raise KeyringError("a public key file holds {\"keys\": [...]} as served by /audit/keys")
        return cls.of(PublicKeyInfo.from_json(item) for item in items)

    @classmethod
    def load(cls, path: Path) -> PublicKeySet:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise KeyringError(f"cannot read public keys from {path}: {exc}") from exc

    def check(self, key_id: str, message: bytes, signature: bytes, signed_at: datetime) -> SignatureCheck:
        info = self.keys.get(key_id)
        if info is None:
            return SignatureCheck.UNKNOWN_KEY
        if not info.valid_at(signed_at):
            return SignatureCheck.OUTSIDE_WINDOW
        try:
            Ed25519PublicKey.from_public_bytes(info.public_key).verify(signature, message)
        except InvalidSignature:
            return SignatureCheck.BAD_SIGNATURE
        return SignatureCheck.OK

    def to_json(self) -> dict[str, Any]:
        infos = sorted(self.keys.values(), key=lambda i: (i.not_before, i.key_id))
        return {"algorithm": ALGORITHM, "keys": [i.to_json() for i in infos]}


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private_key: Ed25519PrivateKey
    not_before: datetime

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    @property
    def public_info(self) -> PublicKeyInfo:
        return PublicKeyInfo(self.key_id, _public_raw(self.private_key), self.not_before)


class Keyring(Protocol):
    def signing_key(self, now: datetime) -> SigningKey:
        """The key to sign with at `now` (created on first use by keyrings that can)."""
        ...

    def rotate_if_due(self, now: datetime) -> PublicKeyInfo | None:
        """Replace the signing key when it is too old; returns the new key's public info if it did."""
        ...

    def public_keys(self) -> PublicKeySet:
        ...


class StaticKeyring:
    """One key from configuration (shared by every replica); operators rotate it by configuration."""

    def __init__(self, private_raw: bytes, not_before: datetime, retired: Iterable[PublicKeyInfo] = ()) -> None:
        if len(private_raw) != 32:
            raise KeyringError("an Ed25519 private key is 32 bytes")
        private = Ed25519PrivateKey.from_private_bytes(private_raw)
        self._key = SigningKey(key_id_for(_public_raw(private)), private, not_before.astimezone(UTC))
        self._retired = list(retired)

    def signing_key(self, now: datetime) -> SigningKey:
        if now < self._key.not_before:
            raise KeyringError("the configured signing key is not valid yet")
        return self._key

    def rotate_if_due(self, now: datetime) -> PublicKeyInfo | None:  # noqa: ARG002 - rotated by configuration
        return None

    def public_keys(self) -> PublicKeySet:
        return PublicKeySet.of([*self._retired, self._key.public_info])


class FileKeyring:
    """Keys as files under `directory` (0700), one `<hex>.json` (0600) each; the newest open key signs."""

    def __init__(self, directory: Path, *, rotate_after: timedelta = timedelta(days=90)) -> None:
        self.directory = directory
        self.rotate_after = rotate_after

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _files(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return sorted(p for p in self.directory.glob("*.json") if not p.name.startswith("."))

    def _read(self, path: Path) -> tuple[SigningKey, datetime | None]:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyringError(f"{path.name} is readable by others; it must be mode 0600")
        try:
            data = json.loads(path.read_text())
            private = Ed25519PrivateKey.from_private_bytes(_unb64(data["private_key"], "private_key", 32))
            not_before = _parse_time(data["not_before"])
            not_after = None if data.get("not_after") is None else _parse_time(data["not_after"])
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise KeyringError(f"{path.name} is not a keyring file: {exc}") from exc
        key_id = key_id_for(_public_raw(private))
        if data.get("key_id") != key_id:
            raise KeyringError(f"{path.name}: key id does not match the key")
        return SigningKey(key_id, private, not_before), not_after

    def _write(self, key: SigningKey, not_after: datetime | None) -> None:
        raw = key.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        body = json.dumps({
            "key_id": key.key_id,
            "algorithm": ALGORITHM,
            "private_key": _b64(raw),
            "public_key": _b64(_public_raw(key.private_key)),
            "not_before": canonical_time(key.not_before),
            "not_after": None if not_after is None else canonical_time(not_after),
        }, indent=2)
        name = key.key_id.removeprefix("ed25519:") + ".json"
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(body + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.directory / name)

    def _all(self) -> list[tuple[SigningKey, datetime | None]]:
        return [self._read(p) for p in self._files()]

    @staticmethod
    def _open_key(keys: list[tuple[SigningKey, datetime | None]], now: datetime) -> SigningKey | None:
        usable = [k for k, not_after in keys if k.not_before <= now and (not_after is None or now < not_after)]
        return max(usable, key=lambda k: k.not_before) if usable else None

    def _create(self, now: datetime) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        key = SigningKey(key_id_for(_public_raw(private)), private, now)
        self._write(key, None)
        return key

    def signing_key(self, now: datetime) -> SigningKey:
        now = now.astimezone(UTC)
        key = self._open_key(self._all(), now)
        if key is not None:
            return key
        with self._locked():
            return self._open_key(self._all(), now) or self._create(now)

    def rotate_if_due(self, now: datetime) -> PublicKeyInfo | None:
        now = now.astimezone(UTC)
        current = self._open_key(self._all(), now)
        if current is not None and now - current.not_before < self.rotate_after:
            return None
        return self.rotate(now)

    def rotate(self, now: datetime) -> PublicKeyInfo:
        """Close every open key at `now` and start a new one."""
        now = now.astimezone(UTC)
        with self._locked():
            for key, not_after in self._all():
                if not_after is None or not_after > now:
                    self._write(key, now)
            return self._create(now).public_info

    def public_keys(self) -> PublicKeySet:
        return PublicKeySet.of(
            PublicKeyInfo(k.key_id, _public_raw(k.private_key), k.not_before, not_after)
            for k, not_after in self._all()
        )


def build_keyring(settings: AuditSettings, data_dir: Path) -> Keyring:
    """The keyring the settings describe: the configured key, else files under the key directory."""
    if settings.signing_key is not None:
        assert settings.signing_key_not_before is not None  # noqa: S101 - enforced by AuditSettings
        retired = [
            PublicKeyInfo.from_json(k.model_dump(mode="json")) for k in settings.retired_public_keys
        ]
        raw = _unb64(settings.signing_key.get_secret_value().strip(), "signing_key", 32)
        return StaticKeyring(raw, settings.signing_key_not_before, retired)
    return FileKeyring(
        settings.key_dir(data_dir), rotate_after=timedelta(days=settings.signing_key_rotation_days)
    )
