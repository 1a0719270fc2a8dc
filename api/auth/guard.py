"""Who is calling (a middleware, before routing) and may they (the /v1 router's first
dependency); ADR 0046.

:class:`AuthenticationMiddleware` authenticates every /v1 request before routing and body
parsing; :func:`authorize`, a dependency of the /v1 router (so no route can skip it), finds the
route's entry in :data:`api.auth.roles.ROUTE_ACCESS` (via :func:`bind_route_access`, which
``create_app`` calls and which refuses an app with an undeclared /v1 route) and checks the role:

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

import logging
import re
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal
from urllib.parse import unquote

import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from psycopg_pool import PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth.keys import KEY_PREFIX, KeyRefusedError, check_key, parse_key
from api.auth.oidc import JwksCache, TokenRefusedError, verify_token
from api.auth.roles import ROUTE_ACCESS, SIGNED, Access, Role, satisfies
from api.config import ApiSettings
from api.errors import ApiError, UnauthorizedError
from api.store import ApiStore
from foundation.errors import ConfigurationError

__all__ = [
    "API_KEY_HEADER",
    "AuthenticationMiddleware",
    "ForbiddenError",
    "NotAuthenticatedError",
    "Principal",
    "PrincipalDep",
    "RouteRule",
    "acting_as",
    "authorize",
    "bind_route_access",
    "match_route",
    "route_rule",
]

log = logging.getLogger(__name__)

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


class NotAuthenticatedError(UnauthorizedError):
    """A credential missing or refused (the 401 with ``WWW-Authenticate``)."""

    error_class = "NotAuthenticatedError"

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
    patterns: list[tuple[re.Pattern[str], RouteRule]] = []
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
                rules[id(route)] = rule = RouteRule(method, path, access)
                patterns.append((compile_path(context.path or path)[0], rule))
    if missing:
        raise ConfigurationError(
            "Expected every /v1 route to declare its permission in api.auth.roles.ROUTE_ACCESS, "
            f"but these have none: {missing}"
        )
    app.state.route_access = rules
    app.state.route_patterns = patterns
    return rules


def route_rule(scope: dict[str, Any] | Any) -> RouteRule | None:
    """The rule of the route that matched ``scope`` -- or, for a request refused before routing
    (401), of the route its method and path would match (None: not a /v1 route)."""
    state = getattr(scope.get("app"), "state", None)
    rules: dict[int, RouteRule] | None = getattr(state, "route_access", None)
    if rules is None:
        return None
    route = scope.get("route")
    if route is not None:
        return rules.get(id(route))
    matched = match_route(scope)
    return matched[0] if matched is not None else None


def match_route(scope: dict[str, Any] | Any) -> tuple[RouteRule, dict[str, str]] | None:
    """The rule and path parameters of the /v1 route ``scope``'s method and path match,
    without routing (for requests answered before the router ran)."""
    state = getattr(scope.get("app"), "state", None)
    patterns: list[tuple[re.Pattern[str], RouteRule]] = getattr(state, "route_patterns", [])
    path, method = str(scope.get("path", "")), scope.get("method")
    for pattern, rule in patterns:
        found = pattern.match(path) if rule.method == method else None
        if found is not None:
            return rule, found.groupdict()
    return None


def _credential(request: Request, *, webhook: bool = False) -> str | None:
    """The credential the request carries. On a webhook route (``webhook``) the Authorization
    header may be the sender's own (it is passed on to the waiting step): only an API key
    (``Bearer rfx_...``) there counts as ours; anything else is left to the HMAC signature."""
    bearer: str | None = None
    header = request.headers.get("authorization")
    if webhook and header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip().startswith(KEY_PREFIX):
            header = None
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


_NO_CREDENTIAL: Final = (
    "Expected a credential: 'Authorization: Bearer <API key or OIDC token>' or "
    f"'{API_KEY_HEADER}: <API key>'"
)


class AuthenticationMiddleware:
    """Who is calling, before anything else of a /v1 request runs: routing, body parsing (a
    malformed body from an anonymous caller is 401, not 422), validation. Puts the principal on
    ``request.state``; :func:`authorize` then checks the route's role. Only the webhook routes
    (``/v1/hooks/...``, all ``SIGNED``) are let through without a credential."""

    def __init__(self, app: ASGIApp, prefix: str = "/v1/", signed_prefix: str = "/v1/hooks/"):
        self.app = app
        self.prefix = prefix
        self.signed_prefix = signed_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or not path.startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        request = Request(scope)  # headers only: the body stays unread for the route
        try:
            credential = _credential(request, webhook=path.startswith(self.signed_prefix))
            if credential is not None:
                scope["state"]["principal"] = await _authenticate(request, credential)
            elif not path.startswith(self.signed_prefix):
                raise NotAuthenticatedError(_NO_CREDENTIAL)
            elif not _start_hook_may_be_anonymous(request, path[len(self.signed_prefix) :]):
                # Answered here, before the body is read (as for any other anonymous write).
                raise NotAuthenticatedError(_START_HOOK_NEEDS_KEY)
        except NotAuthenticatedError as exc:
            scope["state"]["auth_refusal"] = str(exc.detail)
            response = JSONResponse({"detail": exc.detail}, 401, headers=exc.headers)
            await response(scope, receive, send)
            return
        except (PoolTimeout, psycopg.OperationalError) as exc:
            # Outside the app's exception handlers: the same answer they give (api.errors).
            log.warning("Postgres unavailable while checking an API key: %s", exc)
            detail = f"Postgres is unavailable: {type(exc).__name__}: {exc}"
            await JSONResponse({"detail": detail}, 503)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def authorize(request: Request) -> None:
    """The /v1 router's dependency: the route's role; see the module docstring."""
    rule = route_rule(request.scope)
    principal: Principal | None = getattr(request.state, "principal", None)
    try:
        if rule is None:  # fail closed: bind_route_access makes this unreachable for /v1
            raise ForbiddenError(
                f"no permission is declared for {request.method} {request.url.path}"
            )
        if principal is None:
            if rule.access != SIGNED:  # AuthenticationMiddleware answers first; fail closed
                raise NotAuthenticatedError(_NO_CREDENTIAL)
            if _signed_without_key(request):
                return
            raise NotAuthenticatedError(_START_HOOK_NEEDS_KEY)
        _need(rule, principal, Role.OPERATOR if rule.access == SIGNED else Role(rule.access))
    except (NotAuthenticatedError, ForbiddenError) as exc:
        request.state.auth_refusal = str(exc.detail)
        raise


_START_HOOK_NEEDS_KEY = (
    "this workflow has no webhook secret: send an API key or OIDC token (role operator or higher)"
)


def _start_hook_may_be_anonymous(request: Request, rest: str) -> bool:
    """``rest``: the path after ``/v1/hooks/``. A start hook (``{workflow_id}``, one segment)
    goes without a key only for a workflow with a webhook secret; the other hooks always do."""
    if not rest or "/" in rest:
        return True
    api: ApiSettings = request.app.state.api_settings
    return unquote(rest) in api.webhook_secrets


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
