"""Who is calling and may they: the dependency every /v1 route runs first (ADR 0046).

:func:`authorize` is a dependency of the /v1 router, so no route can skip it. It finds the
route's entry in :data:`api.auth.roles.ROUTE_ACCESS` (via :func:`bind_route_access`, which
``create_app`` calls and which refuses an app with an undeclared /v1 route), authenticates the
credential and checks the role:

- ``Authorization: Bearer <credential>`` or ``X-API-Key: <key>``; a credential starting with
  ``rfx_`` is an API key (:mod:`api.auth.keys`), anything else a JWT (:mod:`api.auth.oidc`);
- no or a bad credential: 401 with ``WWW-Authenticate: Bearer ...`` and the reason;
- a role below the route's: 403 naming the role needed and the one held;
- the principal (:class:`Principal`) lands on ``request.state.principal`` for the routes and
  the audit middleware; refusals leave their reason on ``request.state.auth_refusal``.

Webhook routes (``SIGNED``) need no credential: a start hook is allowed without one only when
its workflow has a webhook secret (the route then checks the HMAC), a step-resume hook always
(the waiting worker checks the step's signature). A credential sent to them must be valid and
at least ``operator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.concurrency import run_in_threadpool

from api.auth.keys import KEY_PREFIX, KeyRefusedError, check_key, parse_key
from api.auth.oidc import JwksCache, TokenRefusedError, verify_token
from api.auth.roles import ROUTE_ACCESS, SIGNED, Access, Role, satisfies
from api.config import ApiSettings
from api.errors import ApiError
from api.store import ApiStore
from foundation.errors import ConfigurationError

__all__ = [
    "API_KEY_HEADER",
    "ForbiddenError",
    "NotAuthenticatedError",
    "Principal",
    "PrincipalDep",
    "RouteRule",
    "acting_as",
    "authorize",
    "bind_route_access",
    "route_rule",
]

API_KEY_HEADER: Final = "X-API-Key"
_REALM: Final = 'Bearer realm="reflux"'


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Literal["api_key", "oidc"]
    id: str
    """The key id, or the token's subject."""
    name: str
    """The key's name, or the token's subject."""
    role: Role
    tenant: str

    @property
    def actor(self) -> str:
        """What the API writes as who did it (``requested_by``, ``actor``, ``registered_by``)."""
        return f"user:{self.name}"


class NotAuthenticatedError(ApiError):
    error_class = "NotAuthenticatedError"
    status_code = 401

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        # A header value is latin-1 without control characters; the reason may quote a claim.
        printable = "".join(c if " " <= c <= "~" else "?" for c in reason)
        quoted = printable.replace("\\", "\\\\").replace('"', "'")
        self.headers = {
            "WWW-Authenticate": f'{_REALM}, error="invalid_token", error_description="{quoted}"'
        }


class ForbiddenError(ApiError):
    error_class = "ForbiddenError"
    status_code = 403


@dataclass(frozen=True, slots=True)
class RouteRule:
    method: str
    template: str
    """The full route template, e.g. ``/v1/runs/{run_id}/cancel``."""
    access: Access


def bind_route_access(app: FastAPI, prefix: str = "/v1") -> dict[int, RouteRule]:
    """Map every route under ``prefix`` to its :data:`ROUTE_ACCESS` entry (by route object, which
    the router puts in ``scope["route"]``); :class:`ConfigurationError` listing the routes with
    no entry, so an undeclared route stops the app from being built."""
    rules: dict[int, RouteRule] = {}
    missing: list[str] = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        path = context.path_format or context.path
        if not isinstance(route, APIRoute) or not path or not path.startswith(prefix + "/"):
            continue
        methods = sorted(m for m in (context.methods or ()) if m != "HEAD")
        for method in methods:
            access = ROUTE_ACCESS.get(f"{method} {path}")
            if access is None:
                missing.append(f"{method} {path}")
            else:
                rules[id(route)] = RouteRule(method, path, access)
    if missing:
        raise ConfigurationError(
            "Expected every /v1 route to declare its permission in api.auth.roles.ROUTE_ACCESS, "
            f"but these have none: {missing}"
        )
    app.state.route_access = rules
    return rules


def route_rule(scope: dict[str, Any] | Any) -> RouteRule | None:
    """The rule of the route that matched ``scope`` (None: not a /v1 route, or unmatched)."""
    app = scope.get("app")
    rules: dict[int, RouteRule] | None = getattr(getattr(app, "state", None), "route_access", None)
    route = scope.get("route")
    if rules is None or route is None:
        return None
    return rules.get(id(route))


def _credential(request: Request) -> str | None:
    bearer: str | None = None
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise NotAuthenticatedError("Expected 'Authorization: Bearer <API key or OIDC token>'")
        bearer = value.strip()
    api_key = request.headers.get(API_KEY_HEADER)
    if bearer is not None and api_key is not None and bearer != api_key.strip():
        raise NotAuthenticatedError(
            f"Expected one credential, but Authorization and {API_KEY_HEADER} differ"
        )
    return bearer if bearer is not None else (api_key.strip() if api_key else None)


def _jwks(request: Request, api: ApiSettings) -> JwksCache:
    state = request.app.state
    cache: JwksCache | None = getattr(state, "jwks_cache", None)
    if cache is None:
        assert api.oidc_jwks_url is not None
        cache = state.jwks_cache = JwksCache(
            api.oidc_jwks_url, api.oidc_jwks_cache_s, api.oidc_jwks_min_refresh_s
        )
    return cache


async def _authenticate(request: Request, credential: str) -> Principal:
    api: ApiSettings = request.app.state.api_settings
    if credential.startswith(KEY_PREFIX):
        store: ApiStore = request.app.state.store
        parsed = parse_key(credential)
        request.state.auth_key_id = parsed[0] if parsed else None
        try:
            key = await store.call(check_key, store.schema, credential)
        except KeyRefusedError as exc:
            raise NotAuthenticatedError(exc.reason) from exc
        return Principal("api_key", key.key_id, key.name, key.role, key.tenant)
    if not api.oidc_enabled:
        raise NotAuthenticatedError(
            "not an API key (rfx_...), and OIDC tokens are not configured on this API"
        )
    try:
        claims = await run_in_threadpool(verify_token, credential, api, _jwks(request, api))
    except TokenRefusedError as exc:
        raise NotAuthenticatedError(f"OIDC token refused: {exc.reason}") from exc
    return Principal("oidc", claims.subject, claims.subject, claims.role, claims.tenant)


def _need(rule: RouteRule, principal: Principal, role: Role) -> None:
    if not satisfies(principal.role, role):
        raise ForbiddenError(
            f"{rule.method} {rule.template} needs role {role.value!r} (or higher); "
            f"{principal.actor} has role {principal.role.value!r}"
        )


async def authorize(request: Request) -> None:
    """The /v1 router's dependency; see the module docstring."""
    rule = route_rule(request.scope)
    try:
        if rule is None:  # fail closed: bind_route_access makes this unreachable for /v1
            raise ForbiddenError(
                f"no permission is declared for {request.method} {request.url.path}"
            )
        credential = _credential(request)
        if rule.access == SIGNED and credential is None:
            if _signed_without_key(request):
                return
            raise NotAuthenticatedError(
                "this workflow has no webhook secret: send an API key or OIDC token "
                "(role operator or higher)"
            )
        if credential is None:
            raise NotAuthenticatedError(
                f"Expected a credential: 'Authorization: Bearer <API key or OIDC token>' or "
                f"'{API_KEY_HEADER}: <API key>'"
            )
        principal = await _authenticate(request, credential)
        request.state.principal = principal
        _need(rule, principal, Role.OPERATOR if rule.access == SIGNED else Role(rule.access))
    except (NotAuthenticatedError, ForbiddenError) as exc:
        request.state.auth_refusal = str(exc.detail)
        raise


def _signed_without_key(request: Request) -> bool:
    if "workflow_id" in request.path_params:  # the start hook: only with an HMAC secret
        api: ApiSettings = request.app.state.api_settings
        return request.path_params["workflow_id"] in api.webhook_secrets
    return True  # a step-resume hook: the waiting worker checks the step's signature


def current_principal(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:  # only on SIGNED routes called without a key
        raise NotAuthenticatedError("Expected a credential for this operation")
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def acting_as(principal: Principal, claimed: str | None, field: str) -> str:
    """The actor to record for a write: the principal's, never what the request claims.

    A claimed value (a body field such as ``requested_by``/``author``/``actor``, or the
    ``X-Reflux-User`` header) is accepted when it names the principal itself (``<name>`` or
    ``user:<name>``); an admin may name another actor (e.g. ``optimizer:timeout`` when replaying
    the optimizer's proposals by hand) -- the audit record keeps the admin as the principal.
    Anyone else naming another actor gets 403.
    """
    if claimed is None or claimed in (principal.name, principal.actor):
        return principal.actor
    if principal.role is Role.ADMIN:
        return claimed
    raise ForbiddenError(
        f"{field} {claimed!r} does not name the caller ({principal.actor}); only an admin may "
        "act on behalf of another actor"
    )
