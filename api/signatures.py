"""Webhook signatures as the API checks them; the scheme itself is :mod:`foundation.signatures`
(pure, shared with the ``webhook.trigger`` node and with senders).

``Reflux-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.METHOD.PATH." + body>`` (several ``v1``
during a secret rotation). The body-only ``X-Reflux-Signature: sha256=<hex>`` scheme is gone:
a request that only carries it is refused with reason ``legacy`` (ADR 0047, docs/triggers.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from foundation.signatures import (
    DEFAULT_TOLERANCE_S,
    LEGACY_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    SignatureError,
    Verified,
    callback_key,
    callback_path,
    replay_id,
    sign,
    sign_callback,
    verify,
)

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "LEGACY_SIGNATURE_HEADER",
    "SIGNATURE_HEADER",
    "SignatureError",
    "Verified",
    "callback_key",
    "callback_path",
    "replay_id",
    "sign",
    "sign_callback",
    "signature_header",
    "verify",
]


def signature_header(headers: Mapping[str, str]) -> str | None:
    """The ``Reflux-Signature`` value; :class:`SignatureError` (``legacy``) when a request only
    carries the removed body-only header, so its sender learns what changed."""
    value = headers.get(SIGNATURE_HEADER)
    if value is None and headers.get(LEGACY_SIGNATURE_HEADER) is not None:
        raise SignatureError(
            "legacy",
            f"Expected a {SIGNATURE_HEADER} header (t=<unix>,v1=<hex HMAC-SHA256 of "
            f"'t.METHOD.PATH.' + body>), but got only {LEGACY_SIGNATURE_HEADER}: the body-only "
            "scheme is no longer accepted (docs/triggers.md#signatures)",
        )
    return value
