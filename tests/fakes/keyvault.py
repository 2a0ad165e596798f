"""A small Azure Key Vault that speaks the REST shapes `azure-keyvault-keys` sends (the project's only fake).

It runs as a real HTTPS server on a loopback port, with a self-signed certificate the client trusts through
`connection_verify`, and the Key Vault bearer challenge: a request without the expected token gets a 401
with `WWW-Authenticate: Bearer authorization=..., resource=...`, as the real service answers. Keys are real
`cryptography` keys; wrap/unwrap really encrypt. Soft delete is on and purge protection off (what C7 needs).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hmac
import ipaddress
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TENANT = "72f988bf-0000-4000-8000-00000000fake"
_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
_OAEP_256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


class FakeCredential:
    """An AsyncTokenCredential handing out one fixed token; records the scopes it was asked for."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[str] = []

    async def get_token(self, *scopes: str, **_kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken(self.token, int(dt.datetime.now(dt.UTC).timestamp()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> FakeCredential:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None


@dataclass
class KeyVersion:
    version: str
    kty: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | bytes
    key_ops: list[str]
    tags: dict[str, str]
    created: int
    enabled: bool = True
    exp: int | None = None


@dataclass
class StoredKey:
    versions: list[KeyVersion] = field(default_factory=list)
    deleted_at: int | None = None


class FakeKeyVault:
    """State and REST handlers. `url` is set once the server listens."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.url = ""
        self.keys: dict[str, StoredKey] = {}
        self.calls: Counter[str] = Counter()
        self.fail_next: dict[str, int] = {}  # operation -> HTTP status to answer once (fault injection)
        self.app = Starlette(routes=[
            Route("/keys", self.list_keys, methods=["GET"]),
            Route("/keys/{name}/create", self.create_key, methods=["POST"]),
            Route("/keys/{name}/{version}/{op:str}", self.key_operation, methods=["POST"]),
            Route("/keys/{name}//{op:str}", self.key_operation, methods=["POST"]),
            Route("/keys/{name}/{version}", self.get_key, methods=["GET"]),
            Route("/keys/{name}/", self.get_key, methods=["GET"]),
            Route("/keys/{name}", self.get_key, methods=["GET"]),
            Route("/keys/{name}", self.delete_key, methods=["DELETE"]),
            Route("/deletedkeys/{name}", self.get_deleted_key, methods=["GET"]),
            Route("/deletedkeys/{name}", self.purge_deleted_key, methods=["DELETE"]),
        ])
        self.app.add_middleware(_BearerChallenge, vault=self)

    # --- helpers ----------------------------------------------------------------------------------

    def live(self, name: str) -> StoredKey | None:
        stored = self.keys.get(name)
        return stored if stored is not None and stored.deleted_at is None else None

    def _error(self, status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    def _not_found(self, name: str) -> JSONResponse:
        return self._error(404, "KeyNotFound", f"A key with (name/id) {name} was not found in this key vault.")

    def _injected(self, op: str) -> JSONResponse | None:
        status = self.fail_next.pop(op, None)
        if status is None:
            return None
        return self._error(status, "Throttled" if status == 429 else "InternalError", f"injected {op} failure")

    def _attributes(self, version: KeyVersion) -> dict[str, Any]:
        attrs: dict[str, Any] = {"enabled": version.enabled, "created": version.created, "updated": version.created,
                                 "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 7}
        if version.exp is not None:
            attrs["exp"] = version.exp
        return attrs

    def _jwk(self, name: str, version: KeyVersion) -> dict[str, Any]:
        jwk: dict[str, Any] = {"kid": f"{self.url}/keys/{name}/{version.version}", "kty": version.kty,
                               "key_ops": version.key_ops}
        if isinstance(version.private, rsa.RSAPrivateKey):
            numbers = version.private.public_key().public_numbers()
            jwk.update(n=b64url(_int_bytes(numbers.n)), e=b64url(_int_bytes(numbers.e)))
        elif isinstance(version.private, ec.EllipticCurvePrivateKey):
            point = version.private.public_key().public_numbers()
            jwk.update(crv="P-256", x=b64url(point.x.to_bytes(32, "big")), y=b64url(point.y.to_bytes(32, "big")))
        return jwk  # symmetric (oct-HSM) material never leaves the HSM

    def _bundle(self, name: str, version: KeyVersion) -> dict[str, Any]:
        return {"key": self._jwk(name, version), "attributes": self._attributes(version), "tags": version.tags}

    # --- REST -------------------------------------------------------------------------------------

    async def create_key(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.calls["create"] += 1
        if (failed := self._injected("create")) is not None:
            return failed
        if not _NAME.match(name):
            return self._error(400, "BadParameter", "invalid key name")
        stored = self.keys.get(name)
        if stored is not None and stored.deleted_at is not None:
            return self._error(409, "Conflict", f"Key {name} is currently in a deleted but recoverable state.")
        body = await request.json()
        kty = body["kty"]
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | bytes
        if kty in ("RSA", "RSA-HSM"):
            private = rsa.generate_private_key(public_exponent=65537, key_size=int(body.get("key_size") or 2048))
        elif kty in ("EC", "EC-HSM"):
            private = ec.generate_private_key(ec.SECP256R1())
        elif kty == "oct-HSM":
            private = secrets.token_bytes(int(body.get("key_size") or 256) // 8)
        else:
            return self._error(400, "BadParameter", f"unsupported kty {kty}")
        attrs = body.get("attributes") or {}
        version = KeyVersion(
            version=secrets.token_hex(16), kty=kty, private=private,
            key_ops=list(body.get("key_ops") or ["wrapKey", "unwrapKey"]), tags=dict(body.get("tags") or {}),
            created=int(dt.datetime.now(dt.UTC).timestamp()), enabled=attrs.get("enabled", True),
            exp=attrs.get("exp"),
        )
        self.keys.setdefault(name, StoredKey()).versions.append(version)
        return JSONResponse(self._bundle(name, version))

    async def get_key(self, request: Request) -> Response:
        name = request.path_params["name"]
        wanted = request.path_params.get("version") or ""
        self.calls["get"] += 1
        if (failed := self._injected("get")) is not None:
            return failed
        stored = self.live(name)
        if stored is None:
            return self._not_found(name)
        version = next((v for v in stored.versions if v.version == wanted), None) if wanted else stored.versions[-1]
        if version is None:
            return self._not_found(f"{name}/{wanted}")
        return JSONResponse(self._bundle(name, version))

    async def list_keys(self, request: Request) -> Response:
        self.calls["list"] += 1
        items = [{"kid": f"{self.url}/keys/{name}", "attributes": self._attributes(s.versions[-1]),
                  "tags": s.versions[-1].tags} for name, s in sorted(self.keys.items()) if s.deleted_at is None]
        return JSONResponse({"value": items, "nextLink": None})

    async def key_operation(self, request: Request) -> Response:
        name, op = request.path_params["name"], request.path_params["op"]
        wanted = request.path_params.get("version") or ""
        self.calls[op] += 1
        if (failed := self._injected(op)) is not None:
            return failed
        stored = self.live(name)
        version = None
        if stored is not None:
            version = next((v for v in stored.versions if v.version == wanted), None) if wanted else stored.versions[-1]
        if version is None:
            return self._not_found(name)
        if op not in ("wrapkey", "unwrapkey") or ("wrapKey" if op == "wrapkey" else "unwrapKey") not in version.key_ops:
            return self._error(403, "Forbidden", f"Operation {op} is not permitted on this key.")
        body = await request.json()
        alg, value = body["alg"], unb64url(body["value"])
        try:
            result = _apply(version.private, alg, op, value)
        except (ValueError, InvalidUnwrap):
            return self._error(400, "BadParameter", "The parameter is incorrect.")
        return JSONResponse({"kid": f"{self.url}/keys/{name}/{version.version}", "value": b64url(result)})

    async def delete_key(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.calls["delete"] += 1
        if (failed := self._injected("delete")) is not None:
            return failed
        stored = self.live(name)
        if stored is None:
            return self._not_found(name)
        stored.deleted_at = int(dt.datetime.now(dt.UTC).timestamp())
        return JSONResponse(self._deleted_bundle(name, stored))

    def _deleted_bundle(self, name: str, stored: StoredKey) -> dict[str, Any]:
        assert stored.deleted_at is not None
        body = self._bundle(name, stored.versions[-1])
        body.update(recoveryId=f"{self.url}/deletedkeys/{name}", deletedDate=stored.deleted_at,
                    scheduledPurgeDate=stored.deleted_at + 7 * 86400)
        return body

    async def get_deleted_key(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.calls["get_deleted"] += 1
        stored = self.keys.get(name)
        if stored is None or stored.deleted_at is None:
            return self._error(404, "KeyNotFound", f"Deleted Key not found: {name}")
        return JSONResponse(self._deleted_bundle(name, stored))

    async def purge_deleted_key(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.calls["purge"] += 1
        if (failed := self._injected("purge")) is not None:
            return failed
        stored = self.keys.get(name)
        if stored is None or stored.deleted_at is None:
            return self._error(404, "KeyNotFound", f"Deleted Key not found: {name}")
        del self.keys[name]
        return Response(status_code=204)


def _apply(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | bytes, alg: str, op: str, value: bytes) -> bytes:
    if isinstance(private, rsa.RSAPrivateKey) and alg == "RSA-OAEP-256":
        if op == "wrapkey":
            return private.public_key().encrypt(value, _OAEP_256)
        return private.decrypt(value, _OAEP_256)
    if isinstance(private, bytes) and alg == "A256KW":
        return aes_key_wrap(private, value) if op == "wrapkey" else aes_key_unwrap(private, value)
    raise ValueError("algorithm does not fit the key")


class _BearerChallenge:
    """Key Vault's authentication: no or wrong bearer token -> 401 with the challenge the SDK parses."""

    def __init__(self, app: Any, vault: FakeKeyVault) -> None:
        self.app = app
        self.vault = vault

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"").decode()
            expected = f"Bearer {self.vault.token}"
            if not hmac.compare_digest(auth.encode(), expected.encode()):
                self.vault.calls["challenge"] += 1
                challenge = (f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                             'resource="https://vault.azure.net"')
                response = JSONResponse({"error": {"code": "Unauthorized", "message": "AKV10000"}},
                                        status_code=401, headers={"WWW-Authenticate": challenge})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway TLS certificate for 127.0.0.1/localhost; returns (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-keyvault.local")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fake-keyvault.pem", directory / "fake-keyvault.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@dataclass
class RunningKeyVault:
    vault: FakeKeyVault
    url: str
    ca_file: Path
    credential: FakeCredential


@contextlib.asynccontextmanager
async def run_fake_keyvault(directory: Path) -> AsyncIterator[RunningKeyVault]:
    """Serve a FakeKeyVault over HTTPS on a free loopback port in this event loop."""
    token = secrets.token_urlsafe(24)
    vault = FakeKeyVault(token)
    cert_path, key_path = make_self_signed_cert(directory)
    config = uvicorn.Config(vault.app, host="127.0.0.1", port=0, ssl_certfile=str(cert_path),
                            ssl_keyfile=str(key_path), log_level="warning", lifespan="off", loop="asyncio")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    vault.url = f"https://127.0.0.1:{port}"
    try:
        yield RunningKeyVault(vault=vault, url=vault.url, ca_file=cert_path, credential=FakeCredential(token))
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
