"""``http.request@1.0.0``: one HTTP request with httpx, failures classified for the retry policy.

Classification (what the scheduler's retry policy and the critic group by):

- timeouts (connect/read/write/pool, or the whole request over ``timeout_s``) -> retryable
  ``HttpTimeout``; connection failures -> retryable ``NetworkError``;
- ``429`` -> retryable ``Http429``; ``5xx`` -> retryable ``Http5xx``; other ``4xx`` ->
  non-retryable ``Http4xx``; a status outside ``expect_status`` that is none of those ->
  non-retryable ``UnexpectedStatus``; a body over ``max_response_bytes`` -> non-retryable
  ``ResponseTooLarge`` (the next attempt would get the same body).

Delivery is at-least-once, so unsafe methods carry ``Idempotency-Key: <ctx.idempotency_key>``
(the invocation's key) and a server that honours it applies a re-delivered request once.
The body is read as a stream and abandoned past the limit, so a huge response cannot exhaust a
worker's memory.

Workload: I/O. The node has as many connections as the runtime runs attempts of it at once
(:meth:`HttpRequestNode.set_concurrency`) and keeps them all alive between requests: an attempt
never waits for a pooled connection inside its timeout, and a steady load does not open and
close a connection per request. They are spread over small httpx clients
(:data:`CONNECTIONS_PER_CLIENT` each; a request takes the client with the most free
connections): httpcore's pool scans its connections, and for keep-alive bookkeeping scans them
again per connection, every time a request comes or goes. Measured at 256 requests in flight
(200 ms each): one pool of 256 connections cost 20 ms of CPU per request (45 requests/s, some
timing out), pools of 4 cost 1.2 ms (docs/decisions/0019-worker-concurrency.md).

Egress policy (docs/nodes.md#security, docs/decisions/0045-egress-policy.md): every connection
goes through :func:`node_workers.egress.net.egress_transport`, which resolves the host, checks
the address with the operator's policy (loopback, link-local, private, metadata and the
platform's own endpoints denied unless allowed) and connects to the address it checked. A
denied destination fails the step with non-retryable ``EgressDenied`` naming the host, the
address and the rule. Redirects are followed here, not by httpx (at most
:data:`MAX_REDIRECTS`): each hop connects through the same check, and a hop to another origin
carries only :data:`~node_workers.egress.policy.CROSS_ORIGIN_SAFE_HEADERS` (no Authorization,
Cookie or custom auth header). The body limit is the step's ``max_response_bytes``, capped by
the operator's ``REFLUX_EGRESS_MAX_RESPONSE_BYTES``. No cookie jar: a response's cookies never
reach another request (the clients are shared by every run).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, Literal, Self

import httpx
from opentelemetry.trace import SpanKind
from pydantic import Field, HttpUrl, field_validator, model_validator

from foundation.settings import Settings
from foundation.telemetry import current_trace_context
from foundation.trace_context import TRACEPARENT, clean_trace_context
from node_workers.egress.net import EgressDeniedError, OperatorPolicy, egress_transport
from node_workers.egress.policy import (
    EgressPolicy,
    cross_origin_headers,
    same_origin,
)
from node_workers.node import (
    Node,
    NodeContext,
    NodeError,
    NodeModel,
    NonRetryableNodeError,
    RetryableNodeError,
    Workload,
)
from node_workers.secrets.destinations import SecretDestinations
from node_workers.tracing import worker_tracer

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "MAX_REDIRECTS",
    "HttpRequestInput",
    "HttpRequestNode",
    "HttpRequestOutput",
    "classify_status",
    "classify_transport_error",
    "decode_body",
    "is_json_content_type",
]

DEFAULT_MAX_RESPONSE_BYTES: Final = 1024 * 1024
DEFAULT_MAX_CONNECTIONS: Final = 100
"""Connections of a node never told its concurrency (used outside a worker)."""
CONNECTIONS_PER_CLIENT: Final = 4
"""Connections per httpx client (pool), small so that the pool's bookkeeping stays cheap. CPU
per request at 256 in flight, measured: 1.0 ms with 2, 1.2 ms with 4, 1.2-1.6 ms with 8,
2.1 ms with 16, 20 ms with 256; 4 keeps the clients few (64 for 256 connections)."""
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_REDIRECTS: Final = 10
"""Redirect hops followed before ``TooManyRedirects`` (each one is checked by the policy)."""
# Request headers that describe the request itself: rebuilt for each redirect hop.
_HOP_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding"})
USER_AGENT: Final = "reflux-worker/1.0"
INVOCATION_HEADER: Final = "X-Reflux-Invocation-Id"
_EXCERPT_CHARS: Final = 200

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_QUERY_SCALARS: Final = (str, int, float, bool)


class HttpRequestInput(NodeModel):
    url: HttpUrl
    method: Method = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, Any] = Field(default_factory=dict)
    """Query parameters: scalars, or lists of scalars for repeated parameters."""
    json_body: Any = Field(default=None, alias="json")
    """JSON request body (``"json"`` in params); at most one of json / form / body."""
    form: dict[str, str] | None = None
    body: str | None = None
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    follow_redirects: bool = True
    verify_tls: bool = True
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, gt=0)
    expect_status: list[int] | None = None
    """Statuses that count as success; default: 2xx and 3xx."""

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("query")
    @classmethod
    def _query(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, item in value.items():
            items = item if isinstance(item, list) else [item]
            if not all(isinstance(i, _QUERY_SCALARS) for i in items):
                raise ValueError(
                    "Expected query values to be strings, numbers, booleans or lists of them, "
                    f"but {name!r} is {item!r}"
                )
        return value

    @field_validator("expect_status")
    @classmethod
    def _statuses(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            bad = [s for s in value if not 100 <= s <= 599]
            if bad or not value:
                raise ValueError(f"Expected HTTP statuses between 100 and 599, but got {value}")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> Self:
        given = [
            name
            for name, field_name in (("json", "json_body"), ("form", "form"), ("body", "body"))
            if field_name in self.model_fields_set
        ]
        if len(given) > 1:
            raise ValueError(f"Expected at most one of json, form, body, but got {given}")
        return self

    @property
    def has_json(self) -> bool:
        # `"json": null` is a JSON body too; only an absent key means "no JSON body".
        return "json_body" in self.model_fields_set


class HttpRequestOutput(NodeModel):
    status: int
    headers: dict[str, str]
    """Response headers, names lower-cased, repeated headers joined with ", "."""
    body: Any
    """JSON-decoded for a JSON content type, else text."""
    elapsed_ms: float


def is_json_content_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def decode_body(content: bytes, content_type: str | None, encoding: str | None = None) -> Any:
    """Text, or the decoded JSON value when the content type says JSON and it parses."""
    try:
        text = content.decode(encoding or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name in the response
        text = content.decode("utf-8", errors="replace")
    if is_json_content_type(content_type) and text.strip():
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _EXCERPT_CHARS else flat[:_EXCERPT_CHARS] + "..."


def classify_status(
    status: int,
    *,
    method: str,
    url: str,
    body_text: str = "",
    expect_status: Sequence[int] | None = None,
) -> NodeError | None:
    """``None`` when ``status`` counts as success, else the error to raise."""
    ok = status in expect_status if expect_status is not None else 200 <= status < 400
    if ok:
        return None
    message = f"HTTP {status} from {method} {url}: {_excerpt(body_text) or '<empty body>'}"
    if status == 429:
        return RetryableNodeError(message, error_class="Http429")
    if 500 <= status <= 599:
        return RetryableNodeError(message, error_class="Http5xx")
    if 400 <= status <= 499:
        return NonRetryableNodeError(message, error_class="Http4xx")
    return NonRetryableNodeError(
        f"Expected status in {list(expect_status or [])}, but got {message}",
        error_class="UnexpectedStatus",
    )


def classify_transport_error(exc: BaseException, *, method: str, url: str) -> NodeError:
    """The error for an exception raised while sending or reading (no status available)."""
    where = f"{method} {url}"
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return RetryableNodeError(f"Timed out: {where} ({exc!r})", error_class="HttpTimeout")
    if isinstance(exc, httpx.TooManyRedirects):
        return NonRetryableNodeError(f"{where}: {exc}", error_class="TooManyRedirects")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return NonRetryableNodeError(f"{where}: {exc}", error_class="InvalidUrl")
    if isinstance(exc, httpx.DecodingError):
        return NonRetryableNodeError(f"{where}: {exc}", error_class="ResponseDecodeError")
    if isinstance(exc, httpx.TransportError | OSError):
        return RetryableNodeError(f"Network error on {where}: {exc!r}", error_class="NetworkError")
    return NonRetryableNodeError(f"{where}: {exc!r}", error_class="HttpError")


class _TooLargeError(NonRetryableNodeError):
    """Internal: the body passed the limit; ``execute`` reports it with the request's details."""

    error_class = "ResponseTooLarge"

    def __init__(self, size: int) -> None:
        super().__init__(f"a response of at least {size} bytes")
        self.size = size


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLargeError(int(declared))
    chunks: list[bytes] = []
    size = 0
    # Decoded bytes are counted, so a small gzip bomb is caught too.
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise _TooLargeError(size)
        chunks.append(chunk)
    return b"".join(chunks)


def _no_cookies() -> http.cookiejar.CookieJar:
    """A jar that stores nothing: the clients serve every run, cookies must not cross them."""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


class _Clients:
    """httpx clients sharing ``max_connections`` (one TLS mode), at most
    :data:`CONNECTIONS_PER_CLIENT` each; a request leases the client with the most free
    connections, so up to ``max_connections`` requests at once never wait for one."""

    def __init__(
        self, verify: bool, max_connections: int, policy: EgressPolicy | None = None
    ) -> None:
        policy = policy or EgressPolicy()  # no allow list: the defaults deny
        count = -(-max_connections // CONNECTIONS_PER_CLIENT)  # ceiling
        # Sizes differ by at most one: 10 -> 3 clients of 4, 3 and 3.
        self.sizes = [
            max_connections // count + (i < max_connections % count) for i in range(count)
        ]
        self.busy = [0] * count
        # One TLS context for all: building one loads the CA bundle (~40 ms each).
        tls = httpx.create_ssl_context(verify=verify)
        self.clients = [
            httpx.AsyncClient(
                transport=egress_transport(
                    policy,
                    node=HttpRequestNode.name,
                    verify=tls,
                    limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                ),
                timeout=None,  # noqa: S113  # set per request in execute, never unbounded
                headers={"User-Agent": USER_AGENT},
                trust_env=False,  # no proxy, no .netrc: the checked address is the one used
                cookies=_no_cookies(),
            )
            for size in self.sizes
        ]

    @property
    def is_closed(self) -> bool:
        return self.clients[0].is_closed

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client for one exchange (request, redirects, body), until the block ends."""
        index = max(range(len(self.sizes)), key=lambda i: self.sizes[i] - self.busy[i])
        self.busy[index] += 1
        try:
            yield self.clients[index]
        finally:
            self.busy[index] -= 1

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


class HttpRequestNode(Node[HttpRequestInput, HttpRequestOutput]):
    name = "http.request"
    version = "1.0.0"
    Input = HttpRequestInput
    Output = HttpRequestOutput
    cacheable = False
    side_effects = True
    workload = Workload.IO
    description = "Send one HTTP request; output status, headers and body."

    def __init__(self) -> None:
        # Clients per event loop and TLS mode (verify is a client setting in httpx), created on
        # first use: a pool belongs to the loop it was opened in, and one node instance can
        # serve several loops (a worker, and a shadow replay engine or a second DevEngine in
        # the same process). Weak keys: a closed loop's clients go with it.
        # Per TLS mode and egress scope: a pooled connection was checked against the policy of
        # the workflow that opened it, so another workflow never reuses it.
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[bool, EgressPolicy], _Clients]
        ] = weakref.WeakKeyDictionary()
        self._max_connections = DEFAULT_MAX_CONNECTIONS
        self._egress = OperatorPolicy()
        self._max_response_cap = Settings.model_fields["egress_max_response_bytes"].default

    def set_concurrency(self, limit: int) -> None:
        self._max_connections = limit

    def bind(self, settings: Settings) -> None:
        self._egress.bind(settings)
        self._max_response_cap = settings.egress_max_response_bytes

    def policy(self) -> EgressPolicy:
        """The operator's policy; outside a worker (never bound), the environment's settings."""
        return self._egress.get()

    def cacheable_for(self, params: HttpRequestInput) -> bool:
        return params.method in {"GET", "HEAD"}

    def _client(self, verify: bool, policy: EgressPolicy | None = None) -> _Clients:
        """The clients of this loop, TLS mode and egress scope (default: the operator's)."""
        policy = policy or self.policy()
        per_mode = self._clients.setdefault(asyncio.get_running_loop(), {})
        clients = per_mode.get((verify, policy))
        if clients is None or clients.is_closed:
            clients = per_mode[verify, policy] = _Clients(verify, self._max_connections, policy)
        return clients

    async def aclose(self) -> None:
        """Close this loop's clients (another loop's can only be closed from that loop)."""
        clients = list(self._clients.pop(asyncio.get_running_loop(), {}).values())
        for client in clients:
            await client.aclose()

    def _headers(self, params: HttpRequestInput, ctx: NodeContext) -> dict[str, str]:
        headers = dict(params.headers)
        if params.method not in SAFE_METHODS and not any(
            name.lower() == "idempotency-key" for name in headers
        ):
            headers["Idempotency-Key"] = ctx.idempotency_key
        # Names the attempt, so a receiver (and our tests) can tell a retry from a redelivery.
        headers.setdefault(INVOCATION_HEADER, ctx.invocation_id)
        if not any(name.lower() == TRACEPARENT for name in headers):
            # The client span's context (the attempt's when tracing is off): the destination's
            # spans join the run's trace. A traceparent the workflow set wins (ADR 0062).
            headers.update(current_trace_context() or clean_trace_context(ctx.trace_context))
        return headers

    async def execute(self, params: HttpRequestInput, ctx: NodeContext) -> HttpRequestOutput:
        with worker_tracer().start_as_current_span(
            f"HTTP {params.method}",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": params.method, "url.full": str(params.url)},
        ) as span:
            output = await self._execute(params, ctx)
            span.set_attribute("http.response.status_code", output.status)
            return output

    async def _execute(self, params: HttpRequestInput, ctx: NodeContext) -> HttpRequestOutput:
        url = str(params.url)
        method = params.method
        timeout = params.timeout_s
        remaining = ctx.remaining_s()
        if remaining is not None:
            timeout = max(min(timeout, remaining), 0.001)
        policy = self._egress.for_call(workflow_id=ctx.workflow_id, tenant=ctx.tenant)
        clients = self._client(params.verify_tls, policy)
        limit = min(params.max_response_bytes, self._max_response_cap)
        kwargs: dict[str, Any] = {}
        if params.has_json:
            kwargs["json"] = params.json_body
        elif params.form is not None:
            kwargs["data"] = params.form
        elif params.body is not None:
            kwargs["content"] = params.body.encode()
        started = time.perf_counter()
        try:
            # httpx timeouts are per operation; this bounds the whole exchange (a server that
            # trickles a byte per second never trips a read timeout).
            async with clients.lease() as client, asyncio.timeout(timeout):
                request = client.build_request(
                    method,
                    url,
                    params=params.query or None,
                    headers=self._headers(params, ctx),
                    timeout=httpx.Timeout(timeout),
                    **kwargs,
                )
                response = await _send(
                    client, request, params.follow_redirects, secrets=ctx.secrets
                )
                try:
                    content = await _read_limited(response, limit)
                finally:
                    await response.aclose()
        except EgressDeniedError as exc:
            raise EgressDeniedError(exc.decision, node=f"http.request {method} {url}") from None
        except _TooLargeError as exc:
            ctx.record("response_bytes", exc.size)
            which = (
                "the step's max_response_bytes"
                if limit == params.max_response_bytes
                else "the operator's maximum (REFLUX_EGRESS_MAX_RESPONSE_BYTES)"
            )
            raise NonRetryableNodeError(
                f"Expected a response of at most {limit} bytes ({which}) from "
                f"{method} {url}, but got at least {exc.size}",
                error_class="ResponseTooLarge",
            ) from None
        except (httpx.HTTPError, httpx.InvalidURL, TimeoutError, OSError) as exc:
            raise classify_transport_error(exc, method=method, url=url) from exc
        elapsed_ms = round((time.perf_counter() - started) * 1000, 3)

        ctx.record("http_status", response.status_code)
        ctx.record("response_bytes", len(content))
        ctx.record("elapsed_ms", elapsed_ms)
        content_type = response.headers.get("content-type")
        body = decode_body(content, content_type, response.charset_encoding)
        error = classify_status(
            response.status_code,
            method=method,
            url=url,
            body_text=body if isinstance(body, str) else json.dumps(body),
            expect_status=params.expect_status,
        )
        if error is not None:
            retry_after = response.headers.get("retry-after", "")
            if retry_after.isdigit():
                ctx.record("retry_after_s", int(retry_after))
            raise error
        headers = {name: ", ".join(response.headers.get_list(name)) for name in response.headers}
        return HttpRequestOutput(
            status=response.status_code, headers=headers, body=body, elapsed_ms=elapsed_ms
        )


def _check_secrets(secrets: SecretDestinations, request: httpx.Request, *, first: bool) -> None:
    """Refuse a request that would carry a secret to a host outside its ``hosts`` (ADR 0050):
    the step's own request carries every secret of its params; a redirect hop, those whose value
    is in its URL, header values or body (a cross-origin hop already lost its credentials)."""
    if not secrets:
        return
    url = request.url
    port = url.port or (443 if url.scheme == "https" else 80)
    parts: list[str | bytes] | None = None
    if not first:
        parts = [str(url), *(value for _, value in request.headers.items()), request.content]
    secrets.check(
        url.host,
        port,
        node=f"http.request {request.method}",
        target="the step's URL" if first else "a redirect hop",
        parts=parts,
    )


async def _send(
    client: httpx.AsyncClient,
    request: httpx.Request,
    follow_redirects: bool,
    *,
    secrets: SecretDestinations | None = None,
) -> httpx.Response:
    """The final response (streamed), following at most :data:`MAX_REDIRECTS` redirects
    ourselves: each hop's connection is checked by the egress transport, its headers by
    :func:`_redirect_request` and the secrets it carries by :func:`_check_secrets`, before it
    is sent."""
    secrets = secrets or SecretDestinations()
    _check_secrets(secrets, request, first=True)
    response = await client.send(request, stream=True, follow_redirects=False)
    hops = 0
    while follow_redirects and response.is_redirect:
        await response.aclose()
        if hops == MAX_REDIRECTS:
            raise httpx.TooManyRedirects(f"Exceeded {MAX_REDIRECTS} redirects", request=request)
        hops += 1
        request = _redirect_request(client, request, response)
        _check_secrets(secrets, request, first=False)
        response = await client.send(request, stream=True, follow_redirects=False)
    return response


def _redirect_request(
    client: httpx.AsyncClient, request: httpx.Request, response: httpx.Response
) -> httpx.Request:
    """The next hop of a redirect, built the way browsers (and httpx) do, except that a hop to
    another origin keeps only the safe headers (egress policy: credentials stay with the origin
    the step named)."""
    try:
        target = request.url.join(response.headers["location"])
    except httpx.InvalidURL as exc:
        raise NonRetryableNodeError(
            f"Invalid redirect Location from {request.method} {request.url}: {exc}",
            error_class="InvalidUrl",
        ) from None
    if target.scheme not in {"http", "https"}:
        raise NonRetryableNodeError(
            f"Expected a redirect to an http(s) URL from {request.method} {request.url}, "
            f"but got {str(target)!r}",
            error_class="InvalidUrl",
        )
    method = request.method
    status = response.status_code
    if (status == 303 and method != "HEAD") or (status in {301, 302} and method == "POST"):
        method = "GET"
    keep_body = method == request.method  # 307/308 (and 301/302 of a non-POST) keep it
    headers = [
        (name, value)
        for name, value in request.headers.multi_items()
        if name.lower() not in _HOP_HEADERS
        and (keep_body or name.lower() not in {"content-type", "content-encoding"})
    ]
    if not same_origin(
        (request.url.scheme, request.url.host, request.url.port),
        (target.scheme, target.host, target.port),
    ):
        headers = cross_origin_headers(headers)
    hop = client.build_request(
        method, target, headers=headers, content=request.content if keep_body else None
    )
    hop.extensions["timeout"] = request.extensions["timeout"]
    return hop
