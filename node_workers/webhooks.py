"""Webhook mailboxes: inbound calls that resume a waiting ``webhook.trigger`` step.

The API (``POST /v1/hooks/runs/{run_id}/steps/{step_id}``) and the node
(:mod:`node_workers.nodes.webhook_trigger`) meet in Redis, on keys derived from
``(topic_prefix, run_id, step_id)``, on the **webhook store** (``Settings.webhook_store_url``:
a ``noeviction`` instance, by default the attempt ledger's, under its own ``<prefix>:webhook:``
keys; ADR 0047). Nothing here may be evicted: a lost mailbox loses a human's approval, a lost
replay entry lets a captured call be replayed.

- the attempt, while it waits, publishes a **waiting record** (:meth:`WebhookWaiter.announce`):
  its attempt number and the step's *callback key* (``foundation.signatures.callback_key``,
  derived from the step's secret for this run and step; never the secret), with a TTL of the
  wait. The API refuses (409) a call for a step without one: deliveries exist only for steps
  that actually wait.
- the API checks the call against that record (signature with the callback key: timestamp
  window, method and path in the MAC; then the replay store), and only then appends a
  :class:`Delivery` to the step's **mailbox** (a Redis list, bounded in count and bytes) in one
  atomic script that re-checks the record's attempt (:meth:`WebhookMailbox.deliver`).
- the node moves the oldest delivery atomically (``BLMOVE``) from the mailbox to the step's
  **in-flight** list, checks it again (signature with the secret *it* resolved, the ``expect``
  condition) and either returns it as the step's output or drops it.

Why the in-flight list instead of ``BLPOP``: a payload taken by an attempt whose result never
reaches the scheduler (worker crash, step timeout racing the call, a claim check that failed)
would otherwise be lost. A new attempt of the step first moves what is in flight back to the
front of the mailbox (:meth:`WebhookWaiter.recover`). An attempt only starts after the previous
one ended, and a step whose result was accepted gets no further attempt, so one payload resumes
exactly one *accepted* attempt; in-flight leftovers of a finished step expire with the TTL.
"""

from __future__ import annotations

import base64
import hashlib
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
from foundation.signatures import (
    SIGNATURE_HEADER,
    SignatureError,
    Verified,
    callback_key,
    verify,
)

__all__ = [
    "DEFAULT_MAX_WAITS",
    "DEFAULT_TTL_S",
    "MAX_BODY_BYTES",
    "MAX_MAILBOX_BYTES",
    "MAX_QUEUED",
    "RUN_ID_PATTERN",
    "SIGNATURE_HEADER",
    "STEP_ID_PATTERN",
    "Delivery",
    "DeliveryOutcome",
    "MailboxFullError",
    "MailboxKeys",
    "NotWaitingError",
    "ReplayedError",
    "WaitingRecord",
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
"""Deliveries waiting in one mailbox at most (429 beyond)."""
MAX_MAILBOX_BYTES: Final = 4 * 1024 * 1024
"""Stored bytes (mailbox + in flight) per step at most (429 beyond): the webhook store never
evicts, so what one step may hold is bounded, not just what one call may carry."""
WAIT_RECORD_MARGIN_S: Final = 5
"""The waiting record outlives the wait's budget by this much (the attempt deletes it when it
stops waiting; the TTL only matters when its worker died)."""

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

# Atomic: the step still waits in the same attempt, replay store, dedupe by idempotency key,
# bound the queue (count and bytes), append, refresh TTLs.
# KEYS: mailbox, seen, bytes, waiting, replay.
# ARGV: delivery, ttl, max queued, use idempotency key, attempt, replay ttl (0: none),
#       max bytes.
# Returns the new length, -1 duplicate, -2 full (count), -3 not waiting, -4 replayed,
# -5 full (bytes). Nothing is left written when it refuses.
_DELIVER_LUA: Final = """
if redis.call('HGET', KEYS[4], 'attempt') ~= ARGV[5] then return -3 end
if ARGV[6] ~= '0' then
  if not redis.call('SET', KEYS[5], '1', 'NX', 'EX', ARGV[6]) then return -4 end
end
local function undo()
  if ARGV[6] ~= '0' then redis.call('DEL', KEYS[5]) end
  if ARGV[4] == '1' then redis.call('DEL', KEYS[2]) end
end
if ARGV[4] == '1' then
  if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
    if ARGV[6] ~= '0' then redis.call('DEL', KEYS[5]) end
    return -1
  end
end
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[3]) then undo() return -2 end
local size = string.len(ARGV[1])
local stored = tonumber(redis.call('GET', KEYS[3]) or '0')
if stored + size > tonumber(ARGV[7]) then undo() return -5 end
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('INCRBY', KEYS[3], size)
redis.call('EXPIRE', KEYS[3], ARGV[2])
return n
"""

# KEYS: inflight, bytes. ARGV: the stored delivery.
_DROP_LUA: Final = """
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if removed > 0 then
  if redis.call('DECRBY', KEYS[2], string.len(ARGV[1])) <= 0 then redis.call('DEL', KEYS[2]) end
end
return removed
"""

# Only the attempt that announced the wait withdraws it (a later attempt's record stays).
# KEYS: waiting. ARGV: attempt.
_WITHDRAW_LUA: Final = """
if redis.call('HGET', KEYS[1], 'attempt') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
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
    bytes: str
    """Bytes stored in mailbox + in flight (bounded by :data:`MAX_MAILBOX_BYTES`)."""
    waiting: str
    """The waiting record (a hash ``attempt``, ``key``) while an attempt waits."""
    replay_prefix: str
    """``replay_prefix + replay id``: signed messages already delivered, for their window."""

    def seen(self, idempotency_key: str) -> str:
        return self.seen_prefix + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]

    def replay(self, replay_id: str) -> str:
        return self.replay_prefix + replay_id


def mailbox_keys(topic_prefix: str, run_id: str, step_id: str) -> MailboxKeys:
    """The Redis keys of one step's mailbox, namespaced like the topics (environments sharing a
    Redis never share a mailbox). The ``{run/step}`` hash tag keeps a step's keys in one slot, so
    the atomic script also works on Redis Cluster."""
    check_ids(run_id, step_id)
    base = f"{topic_prefix}:webhook:{{{run_id}/{step_id}}}"
    return MailboxKeys(
        mailbox=base,
        inflight=f"{base}:inflight",
        seen_prefix=f"{base}:seen:",
        bytes=f"{base}:bytes",
        waiting=f"{base}:waiting",
        replay_prefix=f"{base}:replay:",
    )


def start_replay_key(topic_prefix: str, workflow_id: str, replay_id: str) -> str:
    """Replay store entry of a start webhook (``POST /v1/hooks/{workflow_id}``)."""
    digest = hashlib.sha256(workflow_id.encode()).hexdigest()[:32]
    return f"{topic_prefix}:webhook-start:{{{digest}}}:replay:{replay_id}"


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


@dataclass(frozen=True, slots=True)
class Delivery:
    """One inbound call as stored in a mailbox. ``body`` is the exact bytes received: the HMAC
    covers them, so they must not be re-encoded on the way. ``method`` and ``path`` are what the
    API received (the MAC covers them too)."""

    body: bytes
    signature: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    delivery_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    method: str = "POST"
    path: str | None = None

    def encode(self) -> bytes:
        return json.dumps(
            {
                "v": 2,
                "delivery_id": self.delivery_id,
                "received_at": self.received_at.isoformat(),
                "signature": self.signature,
                "headers": self.headers,
                "method": self.method,
                "path": self.path,
                "body_b64": base64.b64encode(self.body).decode("ascii"),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Delivery:
        """Raise ``ValueError`` for anything :meth:`encode` did not produce (version 1, from
        before the path was kept, decodes with ``path=None``)."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("v") not in (1, 2):
                raise ValueError("not a version 1 or 2 delivery")
            headers = data["headers"]
            signature = data["signature"]
            method = data.get("method", "POST")
            path = data.get("path")
            if not isinstance(headers, dict) or not isinstance(signature, str | None):
                raise ValueError("headers/signature of the wrong type")
            if not isinstance(method, str) or not isinstance(path, str | None):
                raise ValueError("method/path of the wrong type")
            return cls(
                body=base64.b64decode(data["body_b64"], validate=True),
                signature=signature,
                headers={str(k): str(v) for k, v in headers.items()},
                received_at=datetime.fromisoformat(data["received_at"]),
                delivery_id=str(data["delivery_id"]),
                method=method,
                path=path,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"Expected a stored webhook delivery, but {raw[:80]!r}: {exc}"
            ) from exc

    def payload(self) -> Any:
        """The body's JSON value; ``ValueError`` if it is not JSON (the API only stores JSON)."""
        return json.loads(self.body)


def signature_problem(secret: str, run_id: str, step_id: str, delivery: Delivery) -> str | None:
    """``None`` if the stored delivery is signed, for this run's step, with the callback key
    derived from ``secret`` (:func:`foundation.signatures.callback_key`), else why not.

    The worker's own check of what the API already verified: the secret never left the worker,
    so a delivery written into Redis by anything else than a verifying API is refused here. The
    time is checked against when the API received it (a delivery may wait in the mailbox).
    """
    suffix = f"/hooks/runs/{run_id}/steps/{step_id}"
    if delivery.path is None or not delivery.path.endswith(suffix):
        return f"the delivery was addressed to {delivery.path!r}, not to this step ({suffix})"
    try:
        verify(
            delivery.signature,
            callback_key(secret, run_id, step_id),
            delivery.method,
            delivery.path,
            delivery.body,
            now=delivery.received_at.timestamp(),
        )
    except SignatureError as exc:
        return f"{exc.reason}: {exc}"
    return None


# -- API side (sync: the API calls it from its thread pool) ---------------------------------------


class MailboxFullError(RetryableError):
    """The mailbox already holds :data:`MAX_QUEUED` deliveries or :data:`MAX_MAILBOX_BYTES`
    (the node empties it)."""

    error_class = "MailboxFullError"


class NotWaitingError(RetryableError):
    """No attempt of the step waits for a call (not started yet, between attempts, finished, or
    never a ``webhook.trigger`` step): nothing was stored."""

    error_class = "NotWaitingError"


class ReplayedError(RetryableError):
    """This signed message was delivered before, within its window: nothing was stored."""

    error_class = "ReplayedError"


@dataclass(frozen=True, slots=True)
class WaitingRecord:
    attempt: int
    key: str | None
    """The callback key deliveries must be signed with; ``None``: the step has no secret."""


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    delivery_id: str
    duplicate: bool
    """The idempotency key was seen before: nothing was stored."""
    queued: int
    """Deliveries in the mailbox after this one (0 for a duplicate)."""


def _redis_url(settings: Settings) -> str:
    return settings.webhook_store_url


class WebhookMailbox:
    """Appends deliveries to step mailboxes and keeps the replay store (the API's half)."""

    def __init__(
        self,
        client: redis.Redis,
        topic_prefix: str,
        *,
        ttl_s: int = DEFAULT_TTL_S,
        max_queued: int = MAX_QUEUED,
        max_bytes: int = MAX_MAILBOX_BYTES,
    ) -> None:
        self._redis = client
        self._script = client.register_script(_DELIVER_LUA)
        self.topic_prefix = topic_prefix
        self.ttl_s = ttl_s
        self.max_queued = max_queued
        self.max_bytes = max_bytes

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> WebhookMailbox:
        client = redis.Redis.from_url(
            _redis_url(settings), socket_connect_timeout=2.0, socket_timeout=5.0
        )
        return cls(client, settings.topic_prefix, **kwargs)

    def waiting(self, run_id: str, step_id: str) -> WaitingRecord | None:
        """The step's waiting record, ``None`` when no attempt waits. ``ValueError`` (ids)."""
        keys = mailbox_keys(self.topic_prefix, run_id, step_id)
        try:
            found = self._redis.hgetall(keys.waiting)
        except redis.RedisError as exc:
            raise ServiceUnavailableError(f"Redis is unavailable: {exc}") from exc
        record: dict[bytes, bytes] = dict(found)  # type: ignore[arg-type]  # sync client
        attempt = record.get(b"attempt")
        if attempt is None or not attempt.isdigit():
            return None
        key = record.get(b"key", b"").decode()
        return WaitingRecord(attempt=int(attempt), key=key or None)

    def deliver(
        self,
        run_id: str,
        step_id: str,
        delivery: Delivery,
        idempotency_key: str | None = None,
        *,
        attempt: int,
        verified: Verified | None = None,
    ) -> DeliveryOutcome:
        """Store ``delivery`` for the waiting ``attempt`` (re-checked atomically); with
        ``verified``, also claim its signed message in the replay store. Raise
        :class:`NotWaitingError`, :class:`ReplayedError`, :class:`MailboxFullError`,
        ``ValueError`` (ids) or :class:`~foundation.errors.ServiceUnavailableError` (Redis)."""
        keys = mailbox_keys(self.topic_prefix, run_id, step_id)
        seen = keys.seen(idempotency_key) if idempotency_key else keys.mailbox
        replay = keys.replay(verified.replay_id) if verified else keys.mailbox
        try:
            answer = self._script(
                keys=[keys.mailbox, seen, keys.bytes, keys.waiting, replay],
                args=[
                    delivery.encode(),
                    self.ttl_s,
                    self.max_queued,
                    "1" if idempotency_key else "0",
                    str(attempt),
                    verified.expires_in_s if verified else 0,
                    self.max_bytes,
                ],
            )
        except redis.RedisError as exc:
            raise ServiceUnavailableError(f"Redis is unavailable: {exc}") from exc
        count = int(answer)
        where = f"step {step_id!r} of run {run_id!r}"
        if count == -1:
            return DeliveryOutcome(delivery.delivery_id, duplicate=True, queued=0)
        if count == -3:
            raise NotWaitingError(
                f"Expected {where} to be waiting for a webhook call in attempt {attempt}, but "
                "that attempt stopped waiting; nothing was stored (retry)"
            )
        if count == -4:
            raise ReplayedError(
                f"This signed call to {where} was delivered before; nothing was stored "
                "(sign every delivery anew, with its own timestamp)"
            )
        if count == -2:
            raise MailboxFullError(
                f"Expected fewer than {self.max_queued} deliveries waiting for {where}, but the "
                "mailbox is full; retry later"
            )
        if count == -5:
            raise MailboxFullError(
                f"Expected the deliveries stored for {where} to stay within {self.max_bytes} "
                "bytes, but this one does not fit; retry later"
            )
        return DeliveryOutcome(delivery.delivery_id, duplicate=False, queued=count)

    def claim_replay(self, key: str, verified: Verified) -> bool:
        """Record a verified start-webhook message; ``False`` when it was recorded before (a
        replay). Kept until the signature would be too old anyway."""
        try:
            return bool(self._redis.set(key, b"1", nx=True, ex=verified.expires_in_s))
        except redis.RedisError as exc:
            raise ServiceUnavailableError(f"Redis is unavailable: {exc}") from exc

    def release_replay(self, key: str) -> None:
        """Forget a claim whose request then failed (the sender may send it again)."""
        try:
            self._redis.delete(key)
        except redis.RedisError as exc:
            raise ServiceUnavailableError(f"Redis is unavailable: {exc}") from exc

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

    async def announce(
        self, keys: MailboxKeys, attempt: int, key: str | None, ttl_s: float
    ) -> None:
        """Publish the waiting record: from now on the API stores calls for this attempt."""
        try:
            pipe = self._redis().pipeline(transaction=True)
            pipe.hset(keys.waiting, mapping={"attempt": str(attempt), "key": key or ""})
            pipe.expire(keys.waiting, max(int(ttl_s) + WAIT_RECORD_MARGIN_S, 1))
            await pipe.execute()
        except redis.RedisError as exc:
            raise ServiceUnavailableError(f"Redis is unavailable: {exc}") from exc

    async def withdraw(self, keys: MailboxKeys, attempt: int) -> None:
        """Delete the waiting record if it is still this attempt's."""
        try:
            await self._redis().eval(_WITHDRAW_LUA, 1, keys.waiting, str(attempt))
        except redis.RedisError as exc:
            raise ServiceUnavailableError(f"Redis is unavailable: {exc}") from exc

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
            await self._redis().eval(_DROP_LUA, 2, keys.inflight, keys.bytes, raw)
        except redis.RedisError as exc:
            raise ServiceUnavailableError(f"Redis is unavailable: {exc}") from exc

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
