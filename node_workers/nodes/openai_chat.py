"""``openai.chat@1.0.0``: one chat completion from any OpenAI-compatible API (``base_url``).

The ``openai`` client runs with ``max_retries=0``: REFLUX's retry policy owns retries (with
backoff, visible in traces and to the critic); a client retrying on its own would hide
attempts and multiply latency behind one step attempt.

Classification: connection errors and timeouts -> retryable ``LlmUnavailable``; ``429`` ->
retryable ``LlmRateLimited``; ``5xx`` (and ``409``, which the API uses for transient
conflicts) or a malformed response -> retryable ``LlmServerError``; ``401``/``403`` ->
non-retryable ``LlmAuth``; other ``4xx`` (``400`` bad request, ``404`` unknown model) ->
non-retryable ``LlmRequestError``; with ``response_format: json_object``, content that is not
JSON -> retryable ``LlmInvalidJson`` (sampling may do better next time).

Tokens: ``ctx.cost_tokens = usage.total_tokens`` (the trace's ``cost_tokens``), and the
metrics ``prompt_tokens`` / ``completion_tokens``.

Workload: I/O (a completion waits seconds on the model). One connection pool serves every base
URL; it allows as many connections as the runtime runs attempts of this node at once
(:meth:`OpenAIChatNode.set_concurrency`), so no attempt waits for a connection inside its
timeout.

Egress policy: ``base_url`` is the workflow's, so every connection goes through
:func:`node_workers.egress.net.egress_transport` (resolved, checked, pinned; a denied address
fails the step with non-retryable ``EgressDenied``), and redirects are not followed (an
OpenAI-compatible API does not redirect; following one would carry the API key elsewhere):
a 3xx is a non-retryable ``LlmRequestError``. Pools are per egress scope (workflow).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Final, Literal

import openai
from pydantic import Field, HttpUrl, SecretStr, field_validator

from foundation.settings import Settings
from node_workers.egress.net import EgressDeniedError, OperatorPolicy, egress_transport
from node_workers.egress.policy import EgressPolicy
from node_workers.node import (
    Node,
    NodeContext,
    NodeError,
    NodeModel,
    NonRetryableNodeError,
    RetryableNodeError,
    Workload,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "ChatMessage",
    "OpenAIChatInput",
    "OpenAIChatNode",
    "OpenAIChatOutput",
    "TokenUsage",
    "classify_llm_error",
]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
DEFAULT_MAX_CONNECTIONS: Final = 1000
"""Connections of a node never told its concurrency (the openai client's own default)."""
_EXCERPT_CHARS: Final = 300


class ChatMessage(NodeModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str
    name: str | None = None


class OpenAIChatInput(NodeModel):
    base_url: HttpUrl = HttpUrl(DEFAULT_BASE_URL)
    """Any OpenAI-compatible endpoint (vLLM, Ollama, a gateway), up to and including ``/v1``."""
    api_key: SecretStr
    """Later ``{{ secrets.NAME }}``; never logged or echoed in errors."""
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    timeout_s: float = Field(default=60.0, gt=0, le=600)
    """The whole request, also capped by the invocation deadline."""
    response_format: Literal["text", "json_object"] = "text"
    """``json_object``: ask for a JSON object and return it parsed in ``json``."""

    @field_validator("api_key")
    @classmethod
    def _non_empty(cls, value: SecretStr) -> SecretStr:
        # The client would fall back to OPENAI_API_KEY from the environment: hidden config.
        if not value.get_secret_value().strip():
            raise ValueError("Expected an API key, but it is empty")
        return value


class TokenUsage(NodeModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class OpenAIChatOutput(NodeModel):
    content: str
    """The first choice's text (empty when the model returned none, e.g. a refusal)."""
    json_value: Any = Field(default=None, alias="json")
    """``content`` parsed, with ``response_format: json_object``; else ``null``."""
    model: str
    """The model that answered, as the server names it."""
    finish_reason: str | None
    usage: TokenUsage
    """All zero when the server reports no usage."""


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _EXCERPT_CHARS else flat[:_EXCERPT_CHARS] + "..."


def classify_llm_error(exc: BaseException, *, base_url: str, api_key: str = "") -> NodeError:
    """The node error for an exception from the ``openai`` client."""

    def clean(text: str) -> str:
        return _excerpt(text.replace(api_key, "***") if len(api_key) >= 4 else text)

    if isinstance(exc, openai.APITimeoutError):
        return RetryableNodeError(f"Timed out calling {base_url}", error_class="LlmUnavailable")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return RetryableNodeError(
            f"Cannot reach {base_url}: {clean(repr(cause))}", error_class="LlmUnavailable"
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        what = f"HTTP {status} from {base_url}: {clean(exc.message)}"
        if status == 429:
            return RetryableNodeError(what, error_class="LlmRateLimited")
        if status >= 500 or status == 409:
            return RetryableNodeError(what, error_class="LlmServerError")
        if status == 408:
            return RetryableNodeError(what, error_class="LlmUnavailable")
        if status in {401, 403}:
            return NonRetryableNodeError(what, error_class="LlmAuth")
        return NonRetryableNodeError(what, error_class="LlmRequestError")
    if isinstance(exc, openai.APIResponseValidationError):
        return RetryableNodeError(
            f"Malformed response from {base_url}: {clean(str(exc))}",
            error_class="LlmServerError",
        )
    return NonRetryableNodeError(f"{base_url}: {clean(repr(exc))}", error_class="LlmRequestError")


def _retry_after(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after", "") if response is not None else ""
    return int(value) if value.isdigit() else None


class OpenAIChatNode(Node[OpenAIChatInput, OpenAIChatOutput]):
    name = "openai.chat"
    version = "1.0.0"
    Input = OpenAIChatInput
    Output = OpenAIChatOutput
    cacheable = True  # a step still opts in; cached answers save tokens on re-runs
    side_effects = False
    workload = Workload.IO
    description = "One chat completion from an OpenAI-compatible API; usage as cost_tokens."

    def __init__(self) -> None:
        # One connection pool for every base URL and key; the AsyncOpenAI facade per call is
        # cheap (<1 ms) and keeps keys from different workflows in different objects.
        # One pool per egress scope: a connection checked for one workflow's policy is never
        # reused by another's.
        self._http: dict[EgressPolicy, openai.DefaultAsyncHttpxClient] = {}
        self._max_connections = DEFAULT_MAX_CONNECTIONS
        self._egress = OperatorPolicy()

    def set_concurrency(self, limit: int) -> None:
        self._max_connections = limit

    def bind(self, settings: Settings) -> None:
        self._egress.bind(settings)

    def policy(self) -> EgressPolicy:
        """The operator's policy; outside a worker (never bound), the environment's settings."""
        return self._egress.get()

    def _client(
        self, params: OpenAIChatInput, timeout: float, policy: EgressPolicy
    ) -> openai.AsyncOpenAI:
        http = self._http.get(policy)
        if http is None or http.is_closed:
            # The SDK's own Limits class (httpx's or its fork httpx2's, by SDK version).
            limits = type(openai.DEFAULT_CONNECTION_LIMITS)(
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
            )
            library = type(limits).__module__.split(".", 1)[0]
            http = self._http[policy] = openai.DefaultAsyncHttpxClient(
                transport=egress_transport(policy, node=self.name, library=library, limits=limits),
                follow_redirects=False,
                trust_env=False,
            )
        return openai.AsyncOpenAI(
            api_key=params.api_key.get_secret_value(),
            base_url=str(params.base_url),
            max_retries=0,
            timeout=timeout,
            http_client=http,
        )

    async def aclose(self) -> None:
        clients, self._http = list(self._http.values()), {}
        for http in clients:
            await http.aclose()

    async def execute(self, params: OpenAIChatInput, ctx: NodeContext) -> OpenAIChatOutput:
        base_url = str(params.base_url)
        timeout = params.timeout_s
        remaining = ctx.remaining_s()
        if remaining is not None:
            timeout = max(min(timeout, remaining), 0.001)
        request: dict[str, Any] = {
            "model": params.model,
            "messages": [m.model_dump(exclude_none=True) for m in params.messages],
        }
        if params.temperature is not None:
            request["temperature"] = params.temperature
        if params.max_tokens is not None:
            request["max_tokens"] = params.max_tokens
        if params.response_format == "json_object":
            request["response_format"] = {"type": "json_object"}
        # Every secret of the params (the API key, one in a message) goes to base_url, and
        # redirects are not followed: one check before the request (ADR 0050).
        ctx.secrets.check(
            params.base_url.host or "",
            params.base_url.port or (443 if params.base_url.scheme == "https" else 80),
            node="openai.chat",
            target="base_url",
        )
        policy = self._egress.for_call(workflow_id=ctx.workflow_id, tenant=ctx.tenant)
        client = self._client(params, timeout, policy)
        started = time.perf_counter()
        try:
            # The client's timeout is per operation; this bounds the whole exchange (a server
            # that trickles a token per second never trips a read timeout).
            async with asyncio.timeout(timeout):
                completion = await client.chat.completions.create(**request)
        except TimeoutError:
            raise RetryableNodeError(
                f"Timed out calling {base_url} after {timeout:.3f}s", error_class="LlmUnavailable"
            ) from None
        except openai.OpenAIError as exc:
            denied = exc.__cause__  # the SDK wraps every transport exception
            if isinstance(denied, EgressDeniedError):
                raise EgressDeniedError(denied.decision, node=f"openai.chat {base_url}") from None
            retry_after = _retry_after(exc)
            if retry_after is not None:
                ctx.record("retry_after_s", retry_after)
            raise classify_llm_error(
                exc, base_url=base_url, api_key=params.api_key.get_secret_value()
            ) from None
        finally:
            ctx.record("elapsed_ms", round((time.perf_counter() - started) * 1000, 3))

        usage = TokenUsage()
        if completion.usage is not None:
            usage = TokenUsage(
                prompt_tokens=completion.usage.prompt_tokens or 0,
                completion_tokens=completion.usage.completion_tokens or 0,
                total_tokens=completion.usage.total_tokens or 0,
            )
            ctx.cost_tokens = usage.total_tokens
        ctx.record("prompt_tokens", usage.prompt_tokens)
        ctx.record("completion_tokens", usage.completion_tokens)
        if not completion.choices:
            raise RetryableNodeError(
                f"Expected at least one choice from {base_url}, but got none",
                error_class="LlmServerError",
            )
        choice = completion.choices[0]
        content = choice.message.content or ""
        parsed: Any = None
        if params.response_format == "json_object":
            try:
                parsed = json.loads(content)
            except ValueError:
                raise RetryableNodeError(
                    f"Expected JSON content from {params.model}, but got: {_excerpt(content)}",
                    error_class="LlmInvalidJson",
                ) from None
        return OpenAIChatOutput.model_validate(
            {
                "content": content,
                "json": parsed,
                "model": completion.model or params.model,
                "finish_reason": choice.finish_reason,
                "usage": usage,
            }
        )
