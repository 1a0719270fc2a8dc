"""OIDC bearer tokens: a JWT signed by the configured issuer, checked against its JWKS.

Checks: the signature with the issuer's key named by ``kid`` (algorithms from
``ApiSettings.oidc_algorithms`` only: never ``none``, never HMAC), ``exp`` (required), ``nbf``
and ``iat`` (when present), ``iss`` and ``aud`` (required, equal to the settings), ``sub``
(required). The role and tenant come from the configured claims.

The JWKS is cached for ``oidc_jwks_cache_s``; a token naming a ``kid`` the cache does not have
re-reads it (the issuer rotated its keys), at most once per ``oidc_jwks_min_refresh_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from jwt import PyJWK

from api.auth.roles import ROLE_RANK, Role
from api.config import ApiSettings
from foundation.errors import RefluxError

__all__ = ["JwksCache", "TokenClaims", "TokenRefusedError", "verify_token"]


class TokenRefusedError(RefluxError):
    """The token cannot be accepted; ``reason`` says why (shown to the client)."""

    error_class = "TokenRefused"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TokenClaims:
    subject: str
    role: Role
    tenant: str


class JwksCache:
    """The issuer's signing keys by ``kid``; thread-safe (requests verify in worker threads)."""

    def __init__(self, url: str, ttl_s: float, min_refresh_s: float, timeout_s: float = 5.0):
        self.url = url
        self.ttl_s = ttl_s
        self.min_refresh_s = min_refresh_s
        self.timeout_s = timeout_s
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()
        self.fetches = 0

    def _fetch(self) -> None:
        try:
            response = httpx.get(self.url, timeout=self.timeout_s)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise TokenRefusedError(f"cannot read the issuer's JWKS at {self.url}: {exc}") from exc
        keys: dict[str, PyJWK] = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or "kid" not in entry or entry.get("use") == "enc":
                continue
            try:
                keys[str(entry["kid"])] = PyJWK.from_dict(entry)
            except jwt.PyJWTError:
                continue  # a key type this library cannot use; others may still work
        self._keys = keys
        self._fetched_at = time.monotonic()
        self.fetches += 1

    def get(self, kid: str) -> PyJWK:
        with self._lock:
            now = time.monotonic()
            age = None if self._fetched_at is None else now - self._fetched_at
            if age is None or age > self.ttl_s:
                self._fetch()
            elif kid not in self._keys and age > self.min_refresh_s:
                self._fetch()  # the issuer may have rotated its keys
            key = self._keys.get(kid)
        if key is None:
            raise TokenRefusedError(f"bad signature: the issuer has no signing key {kid!r}")
        return key


def _claim(claims: Mapping[str, Any], dotted: str) -> Any:
    value: Any = claims
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _role(value: Any, claim: str) -> Role:
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    roles = [Role(n) for n in names if isinstance(n, str) and n in Role._value2member_map_]
    if not roles:
        raise TokenRefusedError(
            f"the token's {claim!r} claim names no REFLUX role "
            f"({', '.join(r.value for r in Role)}): {value!r}"
        )
    return max(roles, key=ROLE_RANK.__getitem__)


def verify_token(token: str, api: ApiSettings, jwks: JwksCache) -> TokenClaims:
    """The checked claims of ``token``; :class:`TokenRefusedError` naming what failed."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenRefusedError(f"malformed token: {exc}") from exc
    alg = header.get("alg")
    if alg not in api.oidc_algorithms:
        raise TokenRefusedError(
            f"token algorithm {alg!r} is not accepted (expected one of {list(api.oidc_algorithms)})"
        )
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise TokenRefusedError("token header has no 'kid' naming the issuer's signing key")
    key = jwks.get(kid)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=list(api.oidc_algorithms),
            audience=api.oidc_audience,
            issuer=api.oidc_issuer,
            leeway=api.oidc_leeway_s,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenRefusedError("token expired") from exc
    except jwt.ImmatureSignatureError as exc:
        raise TokenRefusedError("token not valid yet (nbf/iat in the future)") from exc
    except jwt.InvalidAudienceError as exc:
        raise TokenRefusedError(f"wrong audience: expected {api.oidc_audience!r}") from exc
    except jwt.InvalidIssuerError as exc:
        raise TokenRefusedError(f"wrong issuer: expected {api.oidc_issuer!r}") from exc
    except jwt.InvalidSignatureError as exc:
        raise TokenRefusedError("bad signature") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise TokenRefusedError(f"token lacks a required claim: {exc.claim!r}") from exc
    except jwt.PyJWTError as exc:
        raise TokenRefusedError(f"invalid token: {exc}") from exc
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise TokenRefusedError("token 'sub' must be a non-empty string")
    role = _role(_claim(claims, api.oidc_roles_claim), api.oidc_roles_claim)
    tenant = _claim(claims, api.oidc_tenant_claim)
    if tenant is not None and not isinstance(tenant, str):
        raise TokenRefusedError(f"the token's {api.oidc_tenant_claim!r} claim is not a string")
    return TokenClaims(subject=subject, role=role, tenant=tenant or "default")
