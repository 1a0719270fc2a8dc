"""Webhook signatures: ``Reflux-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]``.

``v1`` is the hex HMAC-SHA256, with the shared secret, of the **signed message**
``"<t>.<METHOD>.<path>." + raw body bytes`` (:func:`signed_message`). The MAC therefore binds
the delivery to its time and to its address: the same body sent to another run's path, or
again after the replay window, does not verify. Several ``v1`` values may be sent at once
(one per secret while a secret is rotated); one that verifies is enough.

Pure (stdlib only): the API verifies start webhooks and step callbacks with it, the
``webhook.trigger`` node re-verifies what it takes from its mailbox, and senders sign with
:func:`sign`. Comparison is constant-time. The replay store (a delivery verified once is refused
again within the window) needs Redis and lives with the callers; its id is :func:`replay_id`.

Step callbacks (``POST /v1/hooks/runs/{run}/steps/{step}``) are signed with a key *derived*
from the step's secret for that run and step, :func:`callback_key`, so the API can verify a
call before storing it without the secret itself ever leaving the worker (the worker publishes
only the derived key, for the time it waits: :mod:`node_workers.webhooks`). ADR 0047.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from foundation.errors import NonRetryableError

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "LEGACY_SIGNATURE_HEADER",
    "SIGNATURE_HEADER",
    "SignatureError",
    "SignatureReason",
    "Verified",
    "callback_key",
    "callback_path",
    "parse_signature",
    "replay_id",
    "sign",
    "sign_callback",
    "signed_message",
    "verify",
]

SIGNATURE_HEADER: Final = "Reflux-Signature"
LEGACY_SIGNATURE_HEADER: Final = "X-Reflux-Signature"
"""The removed body-only scheme (``sha256=<hex>``): named in the refusal, never accepted."""
DEFAULT_TOLERANCE_S: Final = 300
"""A signature's timestamp may be this far from the receiver's clock (either way)."""
MAX_SIGNATURES: Final = 8
"""``v1`` values per header at most: rotation needs two; more is someone probing."""
_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")
_CALLBACK_CONTEXT: Final = b"reflux-webhook-callback-v1"

SignatureReason = Literal["missing", "malformed", "too_old", "wrong", "legacy", "replayed"]


class SignatureError(NonRetryableError):
    """A delivery's signature is refused; ``reason`` says which check failed."""

    error_class = "SignatureError"

    def __init__(self, reason: SignatureReason, message: str) -> None:
        super().__init__(message)
        self.reason: SignatureReason = reason


@dataclass(frozen=True, slots=True)
class Verified:
    timestamp: int
    replay_id: str
    """Names the signed message in the replay store (see :func:`replay_id`)."""
    expires_in_s: int
    """Seconds until this signature is too old anyway: how long the replay store keeps it."""


def signed_message(timestamp: int, method: str, path: str, body: bytes) -> bytes:
    return f"{timestamp}.{method.upper()}.{path}.".encode() + body


def _mac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(
    secrets: str | Sequence[str],
    method: str,
    path: str,
    body: bytes,
    *,
    timestamp: int | None = None,
) -> str:
    """The ``Reflux-Signature`` value a sender puts on ``body`` sent as ``METHOD path``; one
    ``v1`` per secret (during a rotation, sign with the old and the new one)."""
    t = int(time.time()) if timestamp is None else timestamp
    message = signed_message(t, method, path, body)
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    return ",".join([f"t={t}", *(f"v1={_mac(key, message)}" for key in keys)])


def parse_signature(header: str | None) -> tuple[int, list[str]]:
    """``(timestamp, [v1 hex, ...])``; :class:`SignatureError` (``missing``/``malformed``)."""
    if header is None or not header.strip():
        raise SignatureError(
            "missing", f"Expected a {SIGNATURE_HEADER} header (t=<unix>,v1=<hex>), but got none"
        )
    timestamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(
                "malformed",
                f"Expected {SIGNATURE_HEADER} as 't=<unix>,v1=<hex>', got {part[:20]!r}",
            )
        if name == "t":
            if timestamp is not None or not value.isdigit() or len(value) > 12:
                raise SignatureError(
                    "malformed", f"Expected one t=<unix seconds> in {SIGNATURE_HEADER}"
                )
            timestamp = int(value)
        elif name == "v1":
            if not _HEX64.fullmatch(value.lower()):
                raise SignatureError(
                    "malformed", f"Expected v1=<64 hex digits> in {SIGNATURE_HEADER}"
                )
            macs.append(value.lower())
        # Other schemes (v0, v2...) are ignored, so a sender may add one before we accept it.
    if timestamp is None or not macs:
        raise SignatureError(
            "malformed", f"Expected both t= and at least one v1= in {SIGNATURE_HEADER}"
        )
    if len(macs) > MAX_SIGNATURES:
        raise SignatureError(
            "malformed", f"Expected at most {MAX_SIGNATURES} v1 values in {SIGNATURE_HEADER}"
        )
    return timestamp, macs


def replay_id(timestamp: int, method: str, path: str, body: bytes) -> str:
    """The id of a *signed message*, not of a header: a replay that keeps only one of several
    ``v1`` values (or adds junk ones) is the same message and is still caught."""
    return hashlib.sha256(signed_message(timestamp, method, path, body)).hexdigest()


def verify(
    header: str | None,
    secrets: str | Sequence[str],
    method: str,
    path: str,
    body: bytes,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> Verified:
    """Check ``header`` for this request; raise :class:`SignatureError` with the reason
    (``missing``, ``malformed``, ``too_old``, ``wrong``). Replays are the caller's check (it
    holds the store): :attr:`Verified.replay_id` for :attr:`Verified.expires_in_s` seconds."""
    timestamp, macs = parse_signature(header)
    current = int(time.time() if now is None else now)
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(
            "too_old",
            f"Expected the {SIGNATURE_HEADER} timestamp within {tolerance_s}s of the server's "
            f"clock, but it is {current - timestamp}s off: sign each delivery when sending it",
        )
    message = signed_message(timestamp, method, path, body)
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    # Every pair is compared (no early exit), each in constant time.
    matched = False
    for key in keys:
        expected = _mac(key, message).encode()
        for given in macs:
            matched |= hmac.compare_digest(given.encode(), expected)
    if not matched:
        raise SignatureError(
            "wrong",
            f"Expected a {SIGNATURE_HEADER} v1 to be the HMAC-SHA256 of "
            f"'{timestamp}.{method.upper()}.{path}.<body>' with the secret, but none matches",
        )
    return Verified(
        timestamp=timestamp,
        replay_id=hashlib.sha256(message).hexdigest(),
        expires_in_s=max(timestamp + tolerance_s - current, 0) + 1,
    )


# -- step callbacks -------------------------------------------------------------------------------


def callback_path(run_id: str, step_id: str, prefix: str = "/v1") -> str:
    return f"{prefix}/hooks/runs/{run_id}/steps/{step_id}"


def callback_key(secret: str, run_id: str, step_id: str) -> str:
    """The key that signs calls to one step of one run: ``hex(HMAC-SHA256(secret,
    "reflux-webhook-callback-v1:<run_id>/<step_id>"))``. Knowing it lets one sign for that step
    only; the step's secret cannot be recovered from it."""
    context = _CALLBACK_CONTEXT + f":{run_id}/{step_id}".encode()
    return hmac.new(secret.encode(), context, hashlib.sha256).hexdigest()


def sign_callback(
    secret: str | Sequence[str],
    run_id: str,
    step_id: str,
    body: bytes,
    *,
    path: str | None = None,
    timestamp: int | None = None,
) -> str:
    """``Reflux-Signature`` for ``POST /v1/hooks/runs/<run_id>/steps/<step_id>`` with the step's
    secret (or secrets, during a rotation)."""
    keys = [secret] if isinstance(secret, str) else list(secret)
    return sign(
        [callback_key(k, run_id, step_id) for k in keys],
        "POST",
        path or callback_path(run_id, step_id),
        body,
        timestamp=timestamp,
    )
