"""Masking resolved secret values as ``***`` in what leaves a worker.

A node may echo its inputs (an HTTP server reflecting a header, a transform), so the attempt's
output, error and metric names pass a :class:`Redactor` that knows every value this process has
resolved. Values rarely travel raw: they are JSON-escaped, URL-encoded or base64-encoded on the
way, so each value is matched in those forms too (docs/secrets.md lists what is not covered).
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote, quote_plus

from schemas.models import ErrorInfo

__all__ = ["REDACTED", "Redactor", "encoded_forms"]

REDACTED: Final = "***"
# Lines of a multi-line secret (a PEM key) are redacted on their own when at least this long:
# a node may log or return one line of it. Shorter lines ("-----", "") would redact noise.
_MIN_LINE_CHARS: Final = 8
# Characters a URL library may leave unescaped in a query or path (RFC 3986 sub-delims, ":@/?"
# and "~"): pydantic/httpx normalise "a b+c" to "a%20b+c", which neither quote() nor
# quote_plus() produce.
_URL_SAFE: Final = "!$&'()*+,;=:@/?~"


def encoded_forms(value: str) -> set[str]:
    """The value and the encodings it commonly travels in: JSON-escaped, URL-escaped (strict,
    path, form and minimal), base64 (standard and URL-safe, with and without padding)."""
    forms = {value, json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1]}
    forms |= {quote(value, safe=""), quote(value), quote_plus(value), quote(value, safe=_URL_SAFE)}
    raw = value.encode()
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode("ascii")
        forms |= {text, text.rstrip("=")}
    if "\n" in value:
        forms |= {
            line.strip() for line in value.splitlines() if len(line.strip()) >= _MIN_LINE_CHARS
        }
    forms.discard("")
    return forms


class Redactor:
    """Replaces known secret values (and their common encodings) by ``***``.

    Values are added when a worker resolves them and never removed: a late log line or a retry
    may still carry them. Thread-safe; every string of any length is redacted, so a very short
    secret makes outputs unreadable (keep secrets long and random).
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        for value in values:
            self.add(value)

    def add(self, value: str) -> None:
        if not value or value in self._values:
            return
        with self._lock:
            values = self._values | {value}
            forms = set().union(*(encoded_forms(v) for v in values))
            # Longest first: a secret that contains another is replaced whole.
            alternatives = sorted(forms, key=lambda f: (-len(f), f))
            self._pattern = re.compile("|".join(map(re.escape, alternatives)))
            self._values = values

    def __len__(self) -> int:
        return len(self._values)

    def redact_text(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None:
            return text
        return pattern.sub(REDACTED, text)

    def redact(self, value: Any) -> Any:
        """A JSON value with every string (keys too) redacted. A number whose text contains a
        secret becomes the string ``***``: the type changes, the secret does not leave."""
        if self._pattern is None:
            return value
        return self._redact(value)

    def _redact(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int | float):
            text = json.dumps(value)
            return REDACTED if self.redact_text(text) != text else value
        if isinstance(value, Mapping):
            return {self.redact_text(str(k)): self._redact(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._redact(item) for item in value]
        return value

    def redact_error(self, error: ErrorInfo | None) -> ErrorInfo | None:
        if error is None or self._pattern is None:
            return error
        return error.model_copy(
            update={
                "message": self.redact_text(error.message),
                "error_class": self.redact_text(error.error_class),
            }
        )
