"""Identity without services (ADR 0046): the route table covers every /v1 route, the OpenAPI
document declares the security, OIDC tokens are checked against a real local JWKS server, and
the actor of a write is the principal's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from api.app import create_app
from api.auth.guard import (
    ForbiddenError,
    NotAuthenticatedError,
    Principal,
    acting_as,
    bind_route_access,
)
from api.auth.keys import KEY_PREFIX, ApiKey, hash_secret, parse_key
from api.auth.oidc import JwksCache, TokenRefusedError, verify_token
from api.auth.roles import ROUTE_ACCESS, SIGNED, Role, satisfies
from api.config import ApiSettings
from foundation.errors import ConfigurationError
from foundation.settings import Settings
from tests.support.oidc_issuer import LocalIssuer, local_issuer


def _v1_operations(app: FastAPI) -> set[str]:
    found = set()
    for context in iter_route_contexts(app.routes):
        path = context.path_format or ""
        if isinstance(context.original_route, APIRoute) and path.startswith("/v1/"):
            found |= {f"{m} {path}" for m in context.methods or () if m != "HEAD"}
    return found


def test_every_v1_route_of_the_real_app_declares_its_permission() -> None:
    app = create_app(Settings())
    operations = _v1_operations(app)
    assert len(operations) >= 60
    assert sorted(operations - set(ROUTE_ACCESS)) == [], "routes without a permission"
    assert sorted(set(ROUTE_ACCESS) - operations) == [], "permissions of routes that are gone"
    assert {r.access for r in app.state.route_access.values()} == {*Role, SIGNED}


def test_an_app_with_an_undeclared_v1_route_is_refused() -> None:
    app = FastAPI()
    router = APIRouter(prefix="/v1")

    @router.get("/secret-stuff")
    def secret_stuff() -> dict[str, str]:
        return {}

    app.include_router(router)
    with pytest.raises(ConfigurationError, match=r"GET /v1/secret-stuff"):
        bind_route_access(app)


def test_roles_are_ordered_and_the_matrix_says_who_may_do_what() -> None:
    assert satisfies(Role.ADMIN, Role.VIEWER) and not satisfies(Role.VIEWER, Role.OPERATOR)
    assert ROUTE_ACCESS["POST /v1/runs"] is Role.OPERATOR
    assert ROUTE_ACCESS["POST /v1/workflows"] is Role.EDITOR
    assert ROUTE_ACCESS["POST /v1/nodes"] is Role.ADMIN
    assert ROUTE_ACCESS["PUT /v1/workflows/{workflow_id}/improvement"] is Role.ADMIN
    assert ROUTE_ACCESS["POST /v1/mutations"] is Role.EDITOR
    assert ROUTE_ACCESS["POST /v1/mutations/{mutation_id}/approve"] is Role.OPERATOR
    assert ROUTE_ACCESS["GET /v1/audit"] is Role.ADMIN
    assert ROUTE_ACCESS["POST /v1/hooks/{workflow_id}"] == SIGNED
    # Every read a viewer may make is a GET, and no GET needs more than viewer except the
    # admin's own (keys and audit).
    admin_reads = {"GET /v1/api-keys", "GET /v1/audit"}
    for operation, access in ROUTE_ACCESS.items():
        if operation.startswith("GET ") and operation not in admin_reads:
            assert access is Role.VIEWER, operation
        if not operation.startswith("GET "):
            assert access is not Role.VIEWER, operation


def test_openapi_declares_the_security_schemes_and_each_operations_security() -> None:
    spec = create_app(Settings()).openapi()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"]["in"] == "header" and schemes["apiKey"]["name"] == "X-API-Key"
    seen = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if not path.startswith("/v1/"):
                assert "security" not in operation, f"{method} {path} must stay open"
                continue
            seen += 1
            access = ROUTE_ACCESS[f"{method.upper()} {path}"]
            assert operation["x-reflux-role"] == access
            assert {"401", "403"} <= set(operation["responses"]), f"{method} {path}"
            if access == SIGNED:
                assert {} in operation["security"]
            else:
                assert operation["security"] == [{"bearer": []}, {"apiKey": []}]
    assert seen == len(ROUTE_ACCESS)
    assert "/healthz" in spec["paths"] and "/readyz" in spec["paths"]


def test_a_key_names_its_id_and_only_its_hash_is_kept() -> None:
    secret = "A" * 43
    assert parse_key(f"{KEY_PREFIX}0123456789abcdef_{secret}") == ("0123456789abcdef", secret)
    assert parse_key("rfx_nothex_" + secret) is None
    assert parse_key("Bearer something") is None
    assert hash_secret(secret) != secret and len(hash_secret(secret)) == 64


def test_a_keys_refusal_says_revoked_or_expired() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    key = ApiKey("0123456789abcdef", "ci", Role.VIEWER, "default", now, "t", None, None, None)
    assert key.refusal(now) is None
    expired = _fields(key, expires_at=now - timedelta(seconds=1))
    assert "expired" in (expired.refusal(now) or "")
    revoked = _fields(key, revoked_at=now)
    assert "revoked" in (revoked.refusal(now) or "")


def _fields(key: ApiKey, **changes: object) -> ApiKey:
    from dataclasses import replace

    return replace(key, **changes)  # type: ignore[arg-type]


def test_the_actor_is_the_principal_unless_an_admin_acts_for_another() -> None:
    editor = Principal("api_key", "k1", "ci", Role.EDITOR, "default")
    admin = Principal("api_key", "k2", "root", Role.ADMIN, "default")
    assert acting_as(editor, None, "requested_by") == "user:ci"
    assert acting_as(editor, "ci", "requested_by") == "user:ci"
    assert acting_as(editor, "user:ci", "requested_by") == "user:ci"
    with pytest.raises(ForbiddenError, match="requested_by 'user:bob' does not name the caller"):
        acting_as(editor, "user:bob", "requested_by")
    assert acting_as(admin, "optimizer:timeout", "author") == "optimizer:timeout"


def test_a_401_carries_www_authenticate_with_the_reason() -> None:
    error = NotAuthenticatedError('API key x "expired"')
    assert error.status_code == 401
    assert error.headers["WWW-Authenticate"].startswith('Bearer realm="reflux"')
    assert "expired" in error.headers["WWW-Authenticate"]


# -- OIDC against a real local JWKS server ----------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with local_issuer() as issuer:
        yield issuer


def _api(issuer: LocalIssuer, **overrides: object) -> ApiSettings:
    fields: dict[str, object] = {
        "oidc_issuer": issuer.url,
        "oidc_audience": issuer.audience,
        "oidc_jwks_url": issuer.jwks_url,
        "oidc_leeway_s": 0,
        "oidc_jwks_min_refresh_s": 0,
        **overrides,
    }
    return ApiSettings(**fields)  # type: ignore[arg-type]


def _cache(api: ApiSettings) -> JwksCache:
    assert api.oidc_jwks_url is not None
    return JwksCache(api.oidc_jwks_url, api.oidc_jwks_cache_s, api.oidc_jwks_min_refresh_s)


def test_a_token_of_the_local_issuer_is_accepted_with_its_role_and_tenant(
    issuer: LocalIssuer,
) -> None:
    api = _api(issuer)
    claims = verify_token(issuer.token(roles=["viewer", "operator"]), api, _cache(api))
    assert (claims.subject, claims.role, claims.tenant) == ("alice", Role.OPERATOR, "acme")
    nested = _api(issuer, oidc_roles_claim="realm_access.roles", oidc_tenant_claim="org")
    token = issuer.token(roles=[], tenant=None, extra={"realm_access": {"roles": ["admin"]}})
    claims = verify_token(token, nested, _cache(nested))
    assert (claims.role, claims.tenant) == (Role.ADMIN, "default")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("bad_signature", "bad signature"),
        ("wrong_audience", "wrong audience"),
        ("wrong_issuer", "wrong issuer"),
        ("expired", "token expired"),
        ("not_yet", "not valid yet"),
        ("no_role", "names no REFLUX role"),
        ("unknown_kid", "has no signing key 'nope'"),
        ("hs256", "algorithm 'HS256' is not accepted"),
    ],
)
def test_a_bad_token_is_refused_with_the_reason(
    issuer: LocalIssuer, case: str, reason: str
) -> None:
    import jwt

    api = _api(issuer)
    tokens = {
        # Signed by another key under the issuer's kid: the signature check must fail.
        "bad_signature": lambda: issuer.token(
            key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ),
        "wrong_audience": lambda: issuer.token(audience="someone-else"),
        "wrong_issuer": lambda: issuer.token(issuer="http://evil.example"),
        "expired": lambda: issuer.token(expires_in=-60),
        "not_yet": lambda: issuer.token(not_before_in=600),
        "no_role": lambda: issuer.token(roles=["superuser"]),
        "unknown_kid": lambda: issuer.token(kid="nope", key=issuer.keys[issuer.kid]),
        "hs256": lambda: jwt.encode(
            {"sub": "x", "iss": issuer.url, "aud": issuer.audience, "exp": time.time() + 60},
            "shared-secret-of-32-bytes-or-more!!",
            algorithm="HS256",
            headers={"kid": issuer.kid},
        ),
    }
    with pytest.raises(TokenRefusedError) as refused:
        verify_token(tokens[case](), api, _cache(api))
    assert reason in refused.value.reason


def test_an_unknown_kid_rereads_the_jwks_once_the_issuer_rotated(issuer: LocalIssuer) -> None:
    api = _api(issuer, oidc_jwks_min_refresh_s=0)
    cache = _cache(api)
    verify_token(issuer.token(), api, cache)
    assert cache.fetches == 1
    verify_token(issuer.token(), api, cache)
    assert cache.fetches == 1, "a known kid is served from the cache"
    issuer.rotate()
    claims = verify_token(issuer.token(sub="bob"), api, cache)
    assert claims.subject == "bob" and cache.fetches == 2


def test_unknown_kids_do_not_hammer_the_issuer(issuer: LocalIssuer) -> None:
    api = _api(issuer, oidc_jwks_min_refresh_s=3600)
    cache = _cache(api)
    verify_token(issuer.token(), api, cache)
    for _ in range(5):
        with pytest.raises(TokenRefusedError, match="no signing key"):
            verify_token(issuer.token(kid="forged", key=issuer.keys[issuer.kid]), api, cache)
    assert cache.fetches == 1


def test_a_reason_quoting_a_claim_cannot_break_the_header() -> None:
    error = NotAuthenticatedError("no role in 'r\u00f4le\r\nSet-Cookie: x'")
    header = error.headers["WWW-Authenticate"]
    assert "\r" not in header and "\n" not in header
    header.encode("latin-1")


def test_the_cli_sends_reflux_api_key_else_the_key_file(tmp_path: Path) -> None:
    from api.auth.bootstrap import write_key_file
    from reflux.credentials import api_key, auth_headers

    key_file = write_key_file(tmp_path / "sub" / "api-key", "rfx_from_file")
    assert key_file.stat().st_mode & 0o777 == 0o600
    from_file = Settings(api_key_file=key_file)
    assert api_key(from_file) == "rfx_from_file"
    assert auth_headers(from_file) == {"Authorization": "Bearer rfx_from_file"}
    both = Settings(api_key_file=key_file, api_key="rfx_from_env")  # type: ignore[arg-type]
    assert api_key(both) == "rfx_from_env"
    assert "rfx_from_env" not in repr(both), "the key is a secret in the settings"
    assert api_key(Settings(api_key_file=tmp_path / "missing")) is None
    assert auth_headers(Settings(api_key_file=tmp_path / "missing")) == {}
    key_file.chmod(0o644)
    write_key_file(key_file, "rfx_again")  # rewriting an existing file restores 0600
    assert key_file.stat().st_mode & 0o777 == 0o600
