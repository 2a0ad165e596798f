"""The issuer's signing keys: fetched over HTTP (JWKS, optionally found by OIDC discovery), cached.

The cache refreshes after its TTL and on an unknown `kid`, but never more often than once per
`min_refresh_s`, and concurrent callers share one fetch: a flood of tokens with random `kid`s costs the
issuer at most one request per interval. When a refresh fails, the last good keys stay usable for
`max_stale_s` so an issuer outage does not log everybody out at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from app.clock import Clock
from app.identity.errors import InvalidToken, KeysUnavailable, UnknownKey
from app.identity.settings import check_fetch_url
from app.logs import get_logger

log = get_logger("voicelog.identity")

ALLOWED_ALGORITHMS = frozenset({"RS256", "ES256"})
MIN_RSA_BITS = 2048
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_KEYS = 100

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class JwksUnavailable(Exception):
    """The key set could not be fetched or parsed; `reason` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SigningKey:
    """One public key from the key set, with what it may verify."""

    kid: str
    algorithm: str  # the one algorithm this key verifies: RS256 for RSA, ES256 for EC P-256
    key: PublicKey


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint of an EC or RSA public JWK (base64url SHA-256 of its canonical members)."""
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def parse_jwks(document: Any) -> dict[str, SigningKey]:
    """Usable signing keys by kid. Keys without kid, for encryption, weak or of another type are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksUnavailable("not a JWKS document")
    keys: dict[str, SigningKey] = {}
    for jwk in document["keys"][:MAX_KEYS]:
        key = _signing_key(jwk)
        if key is not None:
            keys[key.kid] = key
    if not keys:
        raise JwksUnavailable("no usable signing key in the JWKS document")
    return keys


def _signing_key(jwk: Any) -> SigningKey | None:
    if not isinstance(jwk, dict):
        return None
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
        return None
    kty = jwk.get("kty")
    algorithm = "RS256" if kty == "RSA" else "ES256" if kty == "EC" and jwk.get("crv") == "P-256" else None
    if algorithm is None or jwk.get("alg", algorithm) != algorithm:
        return None
    public = {k: v for k, v in jwk.items() if k not in {"d", "p", "q", "dp", "dq", "qi", "oth"}}
    try:
        loaded = RSAAlgorithm.from_jwk(public) if kty == "RSA" else ECAlgorithm.from_jwk(public)
    except Exception:  # a malformed key is skipped, the rest of the set still counts
        return None
    if isinstance(loaded, rsa.RSAPublicKey) and loaded.key_size >= MIN_RSA_BITS:
        return SigningKey(kid, algorithm, loaded)
    if isinstance(loaded, ec.EllipticCurvePublicKey) and isinstance(loaded.curve, ec.SECP256R1):
        return SigningKey(kid, algorithm, loaded)
    return None


class JwksSource(Protocol):
    async def fetch(self) -> Any:
        """The current JWKS document (parsed JSON), or raise JwksUnavailable."""
        ...


ClientFactory = Callable[[], httpx.AsyncClient]


class HttpJwksSource:
    """Fetches the JWKS from `jwks_url`, or finds it through the issuer's OIDC discovery document.

    A client per fetch (fetches are rare), no redirects, a timeout and a size cap on every response.
    """

    def __init__(
        self,
        *,
        issuer: str,
        jwks_url: str | None = None,
        discovery_url: str | None = None,
        timeout_s: float = 5.0,
        client_factory: ClientFactory | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        if (jwks_url is None) == (discovery_url is None):
            raise ValueError("give exactly one of jwks_url and discovery_url")
        self.issuer = issuer
        self.discovery_url = discovery_url
        self._allow_http = allow_insecure_http
        self._configured_jwks_url = jwks_url
        self._jwks_url = jwks_url and check_fetch_url(jwks_url, allow_insecure_http=allow_insecure_http)
        if discovery_url is not None:
            check_fetch_url(discovery_url, allow_insecure_http=allow_insecure_http)
        self._client_factory = client_factory or (lambda: httpx.AsyncClient())
        self._timeout = httpx.Timeout(timeout_s)
        self._deadline_s = timeout_s  # for the whole response too: a slow drip cannot hold the key lock

    async def fetch(self) -> Any:
        async with self._client_factory() as client:
            if self._jwks_url is None:
                self._jwks_url = await self._discover(client)
            try:
                return await self._get_json(client, self._jwks_url)
            except JwksUnavailable:
                if self._configured_jwks_url is None:
                    self._jwks_url = None  # the issuer may have moved its keys: discover again next time
                raise

    async def _discover(self, client: httpx.AsyncClient) -> str:
        assert self.discovery_url is not None  # noqa: S101 - set whenever no jwks_url is configured
        document = await self._get_json(client, self.discovery_url)
        if not isinstance(document, dict):
            raise JwksUnavailable("discovery document is not a JSON object")
        if document.get("issuer") != self.issuer:
            raise JwksUnavailable("discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise JwksUnavailable("discovery document has no jwks_uri")
        try:
            return check_fetch_url(jwks_uri, allow_insecure_http=self._allow_http)
        except ValueError as exc:
            raise JwksUnavailable(f"discovery jwks_uri refused: {exc}") from exc

    async def _get_json(self, client: httpx.AsyncClient, url: str) -> Any:
        try:
            async with asyncio.timeout(self._deadline_s), client.stream(
                "GET", url, timeout=self._timeout, follow_redirects=False, headers={"accept": "application/json"}
            ) as response:
                if response.status_code != 200:
                    raise JwksUnavailable(f"HTTP {response.status_code} from {_host(url)}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise JwksUnavailable(f"response from {_host(url)} is larger than {MAX_DOCUMENT_BYTES} bytes")
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise JwksUnavailable(f"timeout fetching from {_host(url)}") from exc
        except httpx.HTTPError as exc:
            raise JwksUnavailable(f"{type(exc).__name__} fetching from {_host(url)}") from exc
        try:
            return json.loads(body)
        except ValueError as exc:
            raise JwksUnavailable(f"response from {_host(url)} is not JSON") from exc


def _host(url: str) -> str:
    return urlsplit(url).netloc


class JwksCache:
    """Signing keys by kid, refreshed after `ttl_s` or on an unknown kid, at most once per `min_refresh_s`."""

    def __init__(
        self,
        source: JwksSource,
        *,
        clock: Clock,
        ttl_s: float = 3600.0,
        min_refresh_s: float = 60.0,
        max_stale_s: float = 86400.0,
    ) -> None:
        self.source = source
        self._clock = clock
        self._ttl_ns = int(ttl_s * 1e9)
        self._min_refresh_ns = int(min_refresh_s * 1e9)
        self._max_stale_ns = int(max_stale_s * 1e9)
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: int | None = None  # monotonic ns of the last successful fetch
        self._attempted_at: int | None = None  # monotonic ns of the last fetch, successful or not
        self._generation = 0  # bumped by every fetch attempt, so waiters know one happened meanwhile
        self._lock = asyncio.Lock()
        self.fetches = 0  # fetch attempts, for metrics and tests

    async def key_for(self, kid: str, algorithm: str) -> PublicKey:
        """The public key `kid` names, if it verifies `algorithm`; raises UnknownKey or KeysUnavailable."""
        if algorithm not in ALLOWED_ALGORITHMS:  # callers check first; this is the backstop
            raise InvalidToken("The token's algorithm is not accepted.")
        now = self._clock.monotonic_ns()
        expired = self._fetched_at is None or now - self._fetched_at >= self._ttl_ns
        # While a refresh is in flight, callers whose key is still usable do not queue behind it.
        if expired and not (self._lock.locked() and kid in self._usable_keys()):
            await self._refresh(self._generation, reason="initial" if self._fetched_at is None else "expired")
        key = self._usable_keys().get(kid)
        if key is None:
            await self._refresh(self._generation, reason="unknown_kid")
            key = self._usable_keys().get(kid)
        if key is None:
            if not self._usable_keys():
                raise KeysUnavailable("The issuer's signing keys could not be fetched; try again shortly.")
            raise UnknownKey("The token names a signing key the issuer does not publish.")
        if key.algorithm != algorithm:
            raise InvalidToken("The token's algorithm does not match its signing key.")
        return key.key

    def _usable_keys(self) -> dict[str, SigningKey]:
        if self._fetched_at is None:
            return {}
        if self._clock.monotonic_ns() - self._fetched_at >= self._ttl_ns + self._max_stale_ns:
            return {}
        return self._keys

    async def _refresh(self, seen_generation: int, *, reason: str) -> None:
        async with self._lock:
            if self._generation != seen_generation:
                return  # another caller fetched while this one waited
            now = self._clock.monotonic_ns()
            if self._attempted_at is not None and now - self._attempted_at < self._min_refresh_ns:
                return
            self._attempted_at = now
            self._generation += 1
            self.fetches += 1
            try:
                keys = parse_jwks(await self.source.fetch())
            except JwksUnavailable as exc:
                log.warning("identity.jwks.refresh_failed", reason=reason, error=exc.reason,
                            cached_keys=len(self._usable_keys()))
                return
            self._keys = keys
            self._fetched_at = self._clock.monotonic_ns()
            log.info("identity.jwks.refreshed", reason=reason, keys=len(keys))
