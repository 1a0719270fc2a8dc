"""Webhook signatures: ``X-Reflux-Signature: sha256=<hex HMAC-SHA256 of the raw body>``.

The HMAC covers the exact bytes received, so senders must sign what they send (no re-encoding).
Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from foundation.errors import NonRetryableError

__all__ = ["SIGNATURE_HEADER", "SignatureError", "sign", "verify_signature"]

SIGNATURE_HEADER: Final = "X-Reflux-Signature"
_SCHEME: Final = "sha256="


class SignatureError(NonRetryableError):
    """The request is not signed with the workflow's secret; the message says how."""

    error_class = "SignatureError"


def sign(secret: str, body: bytes) -> str:
    """The header value a sender puts on ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"{_SCHEME}{digest}"


def verify_signature(secret: str, body: bytes, header: str | None) -> None:
    """Raise :class:`SignatureError` unless ``header`` is ``sign(secret, body)``."""
    if header is None or not header.strip():
        raise SignatureError(
            f"Expected a {SIGNATURE_HEADER} header (sha256=<hex>), because this workflow's "
            "webhook has a secret, but the request has none"
        )
    value = header.strip()
    if not value.lower().startswith(_SCHEME):
        raise SignatureError(
            f"Expected {SIGNATURE_HEADER} to start with 'sha256=', but got {value[:16]!r}"
        )
    given = value[len(_SCHEME) :].lower()
    expected = sign(secret, body)[len(_SCHEME) :]
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise SignatureError(
            f"Expected {SIGNATURE_HEADER} to be the HMAC-SHA256 of the body with this "
            "workflow's secret, but it does not match"
        )
