"""Webhook mailboxes: inbound calls that resume a waiting ``webhook.trigger`` step.

The API (``POST /v1/hooks/runs/{run_id}/steps/{step_id}``) and the node
(:mod:`node_workers.nodes.webhook_trigger`) meet in Redis, on keys derived from
``(topic_prefix, run_id, step_id)`` only, so neither needs the other to be up, nor the run's
projection to have caught up:

- the API appends a :class:`Delivery` (the raw body bytes, the signature header, a few headers)
  to the step's **mailbox**, a Redis list with a TTL (:data:`DEFAULT_TTL_S`), and answers 202.
  A call that arrives before the step waits is simply kept until it does.
- the node, while its attempt waits, moves the oldest delivery atomically (``BLMOVE``) from the
  mailbox to the step's **in-flight** list, checks it (HMAC signature with the secret *it*
  resolved, the ``expect`` condition) and either returns it as the step's output or drops it.

Why the in-flight list instead of ``BLPOP``: a payload taken by an attempt whose result never
reaches the scheduler (worker crash, step timeout racing the call, a claim check that failed)
would otherwise be lost. A new attempt of the step first moves what is in flight back to the
front of the mailbox (:meth:`WebhookWaiter.recover`). An attempt only starts after the previous
one ended, and a step whose result was accepted gets no further attempt, so one payload resumes
exactly one *accepted* attempt; in-flight leftovers of a finished step expire with the TTL.

Secrets never reach Redis: the API stores the signature header as sent, verification happens in
the worker (which holds the resolved ``{{ secrets.NAME }}`` value).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import redis
import redis.asyncio as aioredis

from foundation.errors import RetryableError, ServiceUnavailableError
from foundation.settings import Settings

__all__ = [
    "DEFAULT_MAX_WAITS",
    "DEFAULT_TTL_S",
    "MAX_BODY_BYTES",
    "MAX_QUEUED",
    "RUN_ID_PATTERN",
    "SIGNATURE_HEADER",
    "STEP_ID_PATTERN",
    "Delivery",
    "DeliveryOutcome",
    "MailboxFullError",
    "MailboxKeys",
    "WebhookMailbox",
    "WebhookWaiter",
    "check_ids",
    "mailbox_keys",
    "passed_headers",
    "signature_problem",
]

DEFAULT_TTL_S: Final = 7 * 24 * 3600
"""How long an unconsumed delivery (and an in-flight one) is kept."""
DEFAULT_MAX_WAITS: Final = 100
"""Concurrent waits a :class:`WebhookWaiter` has connections for, unless told otherwise (the
worker tells it the node's concurrency)."""
_SPARE_CONNECTIONS: Final = 4
"""Beyond one per wait: a pool is never the reason a wait fails."""
MAX_BODY_BYTES: Final = 1024 * 1024
"""Larger bodies are refused (413): a mailbox lives in Redis memory."""
MAX_QUEUED: Final = 100
"""Deliveries waiting in one mailbox at most (429 beyond): the endpoint needs no account, so
an unauthenticated sender must not be able to fill Redis."""
SIGNATURE_HEADER: Final = "X-Reflux-Signature"
"""Same header and scheme as the start-a-run webhook (:mod:`api.signatures`)."""
_SCHEME: Final = "sha256="

RUN_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$"
"""Run ids are uuids in practice; anything else that is a safe key segment is accepted too."""
STEP_ID_PATTERN: Final = r"^[a-z_][a-z0-9_]{0,62}$"
"""The workflow model's step id rule (``workflows.model``)."""
_RUN_ID: Final = re.compile(RUN_ID_PATTERN)
_STEP_ID: Final = re.compile(STEP_ID_PATTERN)

_HEADER_NAMES: Final = frozenset(
    {"content-type", "user-agent", "idempotency-key", "x-request-id", "x-correlation-id"}
)
_HEADER_SUFFIXES: Final = ("-event", "-delivery", "-delivery-id", "-event-type")
_MAX_HEADER_CHARS: Final = 1024

# Atomic: dedupe by idempotency key, bound the queue, append, refresh TTLs. Returns the new
# length, -1 for a duplicate, -2 when the mailbox is full.
_DELIVER_LUA: Final = """
if ARGV[4] == '1' then
  if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return -1 end
end
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  if ARGV[4] == '1' then redis.call('DEL', KEYS[2]) end
  return -2
end
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return n
"""


# -- pure parts -----------------------------------------------------------------------------------


def check_ids(run_id: str, step_id: str) -> None:
    """Raise ``ValueError`` unless both ids are safe key segments."""
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"Expected a run id of letters, digits, '_', '.', '-' (at most 200), but got {run_id!r}"
        )
    if not _STEP_ID.fullmatch(step_id):
        raise ValueError(
            f"Expected a step id of lowercase letters, digits and '_', but got {step_id!r}"
        )


@dataclass(frozen=True, slots=True)
class MailboxKeys:
    mailbox: str
    """Deliveries not taken yet (a list, oldest first)."""
    inflight: str
    """Deliveries an attempt took and has not dropped (a list)."""
    seen_prefix: str
    """``seen_prefix + sha256(idempotency key)``: deduplicates a sender's redeliveries."""

    def seen(self, idempotency_key: str) -> str:
        return self.seen_prefix + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def mailbox_keys(topic_prefix: str, run_id: str, step_id: str) -> MailboxKeys:
    """The Redis keys of one step's mailbox, namespaced like the topics (environments sharing a
    Redis never share a mailbox). The ``{run/step}`` hash tag keeps a step's keys in one slot, so
    the atomic script also works on Redis Cluster."""
    check_ids(run_id, step_id)
    base = f"{topic_prefix}:webhook:{{{run_id}/{step_id}}}"
    return MailboxKeys(mailbox=base, inflight=f"{base}:inflight", seen_prefix=f"{base}:seen:")


def passed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers kept with a delivery (and shown in the step's output): content type,
    user agent, idempotency key, request ids, and event/delivery names such as
    ``X-GitHub-Event`` / ``X-GitHub-Delivery``. Never credentials (``Authorization``, cookies,
    API keys) and never the signature, which is kept apart. Names lower-cased, values capped."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in _HEADER_NAMES or lower.endswith(_HEADER_SUFFIXES):
            kept[lower] = value[:_MAX_HEADER_CHARS]
    return kept


def signature_problem(secret: str, body: bytes, header: str | None) -> str | None:
    """``None`` if ``header`` is ``sha256=<hex HMAC-SHA256 of body with secret>`` (constant-time
    comparison), else why not. Same scheme as :func:`api.signatures.verify_signature`."""
    if header is None or not header.strip():
        return f"no {SIGNATURE_HEADER} header, but the step has a secret"
    value = header.strip()
    if not value.lower().startswith(_SCHEME):
        return f"{SIGNATURE_HEADER} does not start with 'sha256=' ({value[:16]!r})"
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    given = value[len(_SCHEME) :].lower()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return f"{SIGNATURE_HEADER} is not the HMAC-SHA256 of the body with the step's secret"
    return None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One inbound call as stored in a mailbox. ``body`` is the exact bytes received: the HMAC
    covers them, so they must not be re-encoded on the way."""

    body: bytes
    signature: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    delivery_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def encode(self) -> bytes:
        return json.dumps(
            {
                "v": 1,
                "delivery_id": self.delivery_id,
                "received_at": self.received_at.isoformat(),
                "signature": self.signature,
                "headers": self.headers,
                "body_b64": base64.b64encode(self.body).decode("ascii"),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Delivery:
        """Raise ``ValueError`` for anything :meth:`encode` did not produce."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("v") != 1:
                raise ValueError("not a version 1 delivery")
            headers = data["headers"]
            signature = data["signature"]
            if not isinstance(headers, dict) or not isinstance(signature, str | None):
                raise ValueError("headers/signature of the wrong type")
            return cls(
                body=base64.b64decode(data["body_b64"], validate=True),
                signature=signature,
                headers={str(k): str(v) for k, v in headers.items()},
                received_at=datetime.fromisoformat(data["received_at"]),
                delivery_id=str(data["delivery_id"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"Expected a stored webhook delivery, but {raw[:80]!r}: {exc}"
            ) from exc

    def payload(self) -> Any:
        """The body's JSON value; ``ValueError`` if it is not JSON (the API only stores JSON)."""
        return json.loads(self.body)


# -- API side (sync: the API calls it from its thread pool) ---------------------------------------


class MailboxFullError(RetryableError):
    """The mailbox already holds :data:`MAX_QUEUED` deliveries (the node empties it)."""

    error_class = "MailboxFullError"


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    delivery_id: str
    duplicate: bool
    """The idempotency key was seen before: nothing was stored."""
    queued: int
    """Deliveries in the mailbox after this one (0 for a duplicate)."""


class WebhookMailbox:
    """Appends deliveries to step mailboxes (the API's half)."""

    def __init__(
        self,
        client: redis.Redis,
        topic_prefix: str,
        *,
        ttl_s: int = DEFAULT_TTL_S,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self._redis = client
        self._script = client.register_script(_DELIVER_LUA)
        self.topic_prefix = topic_prefix
        self.ttl_s = ttl_s
        self.max_queued = max_queued

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> WebhookMailbox:
        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2.0, socket_timeout=5.0
        )
        return cls(client, settings.topic_prefix, **kwargs)

    def deliver(
        self, run_id: str, step_id: str, delivery: Delivery, idempotency_key: str | None = None
    ) -> DeliveryOutcome:
        """Store ``delivery``; raise :class:`MailboxFullError`, ``ValueError`` (ids) or
        :class:`~foundation.errors.ServiceUnavailableError` (Redis)."""
        keys = mailbox_keys(self.topic_prefix, run_id, step_id)
        seen = keys.seen(idempotency_key) if idempotency_key else keys.mailbox
        try:
            answer = self._script(
                keys=[keys.mailbox, seen],
                args=[
                    delivery.encode(),
                    self.ttl_s,
                    self.max_queued,
                    "1" if idempotency_key else "0",
                ],
            )
        except redis.RedisError as exc:
            raise ServiceUnavailableError(f"Redis is unavailable: {exc}") from exc
        count = int(answer)
        if count == -1:
            return DeliveryOutcome(delivery.delivery_id, duplicate=True, queued=0)
        if count == -2:
            raise MailboxFullError(
                f"Expected fewer than {self.max_queued} deliveries waiting for step {step_id!r} "
                f"of run {run_id!r}, but the mailbox is full; retry later"
            )
        return DeliveryOutcome(delivery.delivery_id, duplicate=False, queued=count)

    def close(self) -> None:
        self._redis.close()


# -- node side (async: it waits inside the worker's event loop) -----------------------------------


class WebhookWaiter:
    """Takes deliveries out of step mailboxes (the node's half).

    The client is created on first use so that its connections belong to the running loop.
    """

    def __init__(
        self,
        redis_url: str,
        topic_prefix: str,
        *,
        ttl_s: int = DEFAULT_TTL_S,
        max_waits: int = DEFAULT_MAX_WAITS,
    ) -> None:
        self.redis_url = redis_url
        self.topic_prefix = topic_prefix
        self.ttl_s = ttl_s
        self.max_waits = max_waits
        self._client: aioredis.Redis | None = None

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            # No socket_timeout: BLMOVE blocks by design; its own timeout bounds each call.
            # A wait holds a connection for up to a second at a time, one per wait: a pool
            # smaller than the waits would fail the surplus ("Too many connections").
            self._client = aioredis.Redis.from_url(
                self.redis_url,
                socket_connect_timeout=2.0,
                max_connections=self.max_waits + _SPARE_CONNECTIONS,
            )
        return self._client

    def keys(self, run_id: str, step_id: str) -> MailboxKeys:
        return mailbox_keys(self.topic_prefix, run_id, step_id)

    async def recover(self, keys: MailboxKeys) -> int:
        """Put deliveries an earlier attempt took but never got accepted back at the front of
        the mailbox, oldest first; returns how many."""
        moved = 0
        try:
            # RIGHT -> LEFT: the newest in-flight goes first, so the oldest ends up in front.
            while await self._redis().lmove(keys.inflight, keys.mailbox, "RIGHT", "LEFT"):
                moved += 1
            if moved:
                await self._redis().expire(keys.mailbox, self.ttl_s)
        except redis.RedisError as exc:
            raise ServiceUnavailableError(f"Redis is unavailable: {exc}") from exc
        return moved

    async def take(self, keys: MailboxKeys, timeout_s: float) -> bytes | None:
        """The oldest delivery, moved to the in-flight list; ``None`` after ``timeout_s``."""
        try:
            # Redis takes decimal seconds here (>= 6.0); redis-py's stub says int.
            raw = await self._redis().blmove(
                keys.mailbox,
                keys.inflight,
                max(timeout_s, 0.01),  # type: ignore[arg-type]
                "LEFT",
                "RIGHT",
            )
            if raw is not None:
                await self._redis().expire(keys.inflight, self.ttl_s)
        except redis.RedisError as exc:
            raise ServiceUnavailableError(f"Redis is unavailable: {exc}") from exc
        return raw if isinstance(raw, bytes) else None

    async def drop(self, keys: MailboxKeys, raw: bytes) -> None:
        """Forget a delivery that was taken and refused (bad signature, condition not met)."""
        try:
            await self._redis().lrem(keys.inflight, 1, raw)  # type: ignore[arg-type]  # bytes ok
        except redis.RedisError as exc:
            raise ServiceUnavailableError(f"Redis is unavailable: {exc}") from exc

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
