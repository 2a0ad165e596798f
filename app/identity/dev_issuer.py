"""The built-in dev issuer: an ES256 key of its own, tokens for any identity, a JWKS to verify them.

For the embedded default and tests only. The service verifies its tokens exactly as it verifies Entra
ID's: through the discovery document and the JWKS the dev routes serve (see tokens.build_token_verifier).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from app.clock import Clock, SystemClock
from app.identity.jwks import jwk_thumbprint
from app.identity.principal import Role

KEY_FILE = "signing-key.pem"
DEFAULT_TTL = timedelta(hours=1)
MAX_TTL = timedelta(hours=24)


class DevIssuerKeyError(RuntimeError):
    """The dev issuer's key file is unusable (wrong permissions or not an EC P-256 key)."""


def load_or_create_signing_key(key_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The dev signing key from `key_dir`, generated on first use into a 0600 file."""
    path = key_dir / KEY_FILE
    if not path.exists():
        _create_key_file(path)
    mode = path.stat().st_mode
    if mode & 0o077:
        raise DevIssuerKeyError(f"{path} is accessible to other users; run `chmod 600 {path}`")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise DevIssuerKeyError(f"{path} is not an EC P-256 private key")
    return key


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        # link() is atomic and refuses to replace: when the CLI and the service race, one key wins for both.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class DevIssuer:
    """Signs ES256 tokens shaped like Entra ID's: `sub`, `roles`, `tid`, `iss`, `aud`, `exp`, `nbf`."""

    def __init__(
        self, private_key: ec.EllipticCurvePrivateKey, *, issuer: str, audience: str, clock: Clock | None = None
    ) -> None:
        self._key = private_key
        self.issuer = issuer
        self.audience = audience
        self._clock = clock or SystemClock()
        self._public_jwk: dict[str, Any] = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
        self.kid = jwk_thumbprint(self._public_jwk)
        self._public_jwk.update(kid=self.kid, use="sig", alg="ES256")

    @classmethod
    def load_or_create(
        cls, key_dir: Path, *, issuer: str, audience: str, clock: Clock | None = None
    ) -> DevIssuer:
        return cls(load_or_create_signing_key(key_dir), issuer=issuer, audience=audience, clock=clock)

    def jwks(self) -> dict[str, Any]:
        """The public key set, as served at `/dev/oidc/jwks.json`."""
        return {"keys": [dict(self._public_jwk)]}

    def discovery(self) -> dict[str, Any]:
        """The OIDC discovery document, as served at `/dev/oidc/.well-known/openid-configuration`."""
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks.json",
            "dev_token_endpoint": f"{self.issuer}/token",
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "claims_supported": ["sub", "iss", "aud", "exp", "nbf", "iat", "roles", "tid", "name"],
        }

    def mint(
        self,
        subject: str,
        roles: Iterable[Role | str] = (),
        tenant: str | None = None,
        ttl: timedelta = DEFAULT_TTL,
        *,
        name: str | None = None,
    ) -> str:
        """A signed access token for `subject` with `roles` (app role names) and optional tenant `tid`."""
        if not subject:
            raise ValueError("a token needs a subject")
        if not timedelta(0) < ttl <= MAX_TTL:
            raise ValueError(f"ttl must be positive and at most {MAX_TTL}")
        now = int(self._clock.now().timestamp())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl.total_seconds()),
            "jti": secrets.token_urlsafe(16),
            "roles": sorted({r.value if isinstance(r, Role) else str(r) for r in roles}),
        }
        if tenant is not None:
            claims["tid"] = tenant
        if name is not None:
            claims["name"] = name
        return self.sign(claims)

    def sign(self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> str:
        """Sign arbitrary claims with the dev key (tests use it to build malformed tokens)."""
        return jwt.encode(dict(claims), self._key, algorithm="ES256",
                          headers={"kid": self.kid, "typ": "JWT", **(headers or {})})
