"""Request limits enforced before any route runs (ASGI middleware).

- **Body size**: the body is counted as it streams in, so a missing or lying ``Content-Length``
  changes nothing; over the route's limit the answer is 413 naming the limit, and the rest of
  the body is never read. The default limit is ``ApiSettings.max_body_bytes``; routes that need
  more (run bundle import) have their own.
- **JSON bodies** are parsed once here with :func:`foundation.parse_limits.load_json`: nesting
  deeper than :data:`~foundation.parse_limits.MAX_DEPTH`, ``NaN``/``Infinity``, NUL characters
  and lone surrogates are 422 naming the field path. Postgres cannot store NUL or non-finite
  numbers, so such a write would otherwise be accepted (202) and then lost by the projector.
  A body declared JSON that does not parse is 422 too (``type: json_invalid``).
- **NUL in the path or query** is 422 too (Postgres lookups cannot carry it).

Checked once for every route, so a new route cannot forget them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.asgi_answer import answer_json
from api.errors import path_to_loc
from foundation.parse_limits import ParseLimitError, load_json, storage_issues

__all__ = ["BodyLimit", "RequestLimitsMiddleware", "describe_bytes"]

_JSON_TYPE = re.compile(r"^application/([\w.+-]+\+)?json$")


@dataclass(frozen=True, slots=True)
class BodyLimit:
    """A larger (or smaller) body limit for the routes whose method and path match."""

    method: str
    path: re.Pattern[str]
    max_bytes: int


def describe_bytes(size: int) -> str:
    """``1048576`` -> ``"1048576 bytes (1 MiB)"``."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size} bytes ({size // factor} {unit})"
    return f"{size} bytes"


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int, routes: Sequence[BodyLimit] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.routes = tuple(routes)

    def limit_for(self, method: str, path: str) -> int:
        for route in self.routes:
            if route.method == method and route.path.fullmatch(path):
                return route.max_bytes
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        nul = _nul_in_request(scope)
        if nul is not None:
            await answer_json(
                send, 422, [_issue(nul, "Expected no NUL (\\u0000) character", "nul")]
            )
            return
        limit = self.limit_for(method, path)
        too_large = (
            f"Expected a request body of at most {describe_bytes(limit)} for {method} "
            f"{path}, but got more"
        )
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await answer_json(send, 413, f"{too_large} (Content-Length: {declared})")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await answer_json(send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and _is_json(_header(scope, b"content-type")):
            problem = _json_problem(body)
            if problem is not None:
                await answer_json(send, 422, problem)
                return
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the buffered body to the app once, then the real one (which
    reports the disconnect a streaming response waits for)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _is_json(content_type: str | None) -> bool:
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    return bool(_JSON_TYPE.match(kind))


def _nul_in_request(scope: Scope) -> list[str | int] | None:
    """``loc`` of a NUL character in the path or the query string, if there is one."""
    if "\x00" in scope["path"]:
        return ["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    if "%00" in query or "\x00" in query:
        for name, value in parse_qsl(query, keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return ["query", name.replace("\x00", "\\u0000")]
        return ["query"]
    return None


def _issue(loc: list[str | int], msg: str, type_: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type_}


def _json_problem(body: bytes) -> list[dict[str, Any]] | None:
    """422 detail for a JSON body that does not parse or that storage cannot hold; None when
    it is fine."""
    try:
        value = load_json(body)
    except ParseLimitError as exc:
        return [_issue(["body"], str(exc), exc.kind)]
    except (ValueError, UnicodeDecodeError) as exc:
        # FastAPI answers some of these 400 ("error parsing the body"), others 422: one answer.
        return [
            _issue(["body"], f"Expected a JSON body, but it does not parse: {exc}", "json_invalid")
        ]
    issues = storage_issues(value)
    if not issues:
        return None
    return [
        _issue(["body", *path_to_loc(issue.path)], issue.message, issue.type) for issue in issues
    ]
