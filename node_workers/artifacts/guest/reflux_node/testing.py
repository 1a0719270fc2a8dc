"""``fake_context``: a ``Context`` for an artifact's tests, answering from canned responses.

Tests run in the sandbox with no network at all; ``ctx.http`` never leaves the process here.
``responses`` maps ``"METHOD URL"`` (the URL without its query string) to a :class:`Response`, a
``(status, body)`` pair (``body`` bytes/str, or anything else sent as JSON), a plain JSON value
(status 200) or a callable taking the request dict and returning any of those; ``responses``
may also be one such callable for every request. Each request is recorded in ``ctx.requests``
(``method``, ``url`` with the query, ``headers``, ``body`` bytes or None, ``params``, ``json``).
"""

from __future__ import annotations

import json as _json
import sys
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import Context, Response

__all__ = ["FakeContext", "fake_context"]

Responses = Mapping[str, Any] | Callable[[dict[str, Any]], Any] | None


def _as_response(value: Any) -> Response:
    if isinstance(value, Response):
        return value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int):
        status, body = value
        if isinstance(body, bytes):
            return Response(status, {}, body)
        if isinstance(body, str):
            return Response(status, {"content-type": "text/plain"}, body.encode())
        return Response(status, {"content-type": "application/json"}, _json.dumps(body).encode())
    return Response(200, {"content-type": "application/json"}, _json.dumps(value).encode())


class FakeContext(Context):
    def __init__(self, responses: Responses = None, secrets: Mapping[str, str] | None = None):
        super().__init__(secrets, egress_socket=None, log_stream=sys.stderr)
        self._responses = responses

    def _send(self, request: dict[str, Any], timeout: float) -> Response:
        parts = urlsplit(request["url"])
        base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        key = f"{request['method']} {base}"
        responses = self._responses
        if callable(responses):
            answer = responses(request)
        elif responses is not None and key in responses:
            answer = responses[key]
            if callable(answer):
                answer = answer(request)
        else:
            known = sorted(responses) if isinstance(responses, Mapping) else []
            raise AssertionError(f"fake_context has no response for {key!r} (it has {known})")
        if isinstance(answer, BaseException):
            raise answer
        return _as_response(answer)


def fake_context(
    responses: Responses = None, secrets: Mapping[str, str] | None = None
) -> FakeContext:
    """A context whose ``http`` answers from ``responses`` and whose ``secret`` reads
    ``secrets``."""
    return FakeContext(responses, secrets)
