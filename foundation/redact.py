"""Credentials out of text that may be logged or raised: the one helper every component uses.

A connection string is configuration, and configuration ends up in log lines and exception
messages ("Expected Postgres at <dsn>, but ..."). :func:`redact_credentials` masks what in such a
string is a credential, whatever its form, and leaves the rest (host, port, database, user) so
the message still says where the component tried to go:

- URL user info: ``postgresql://reflux:s3cret@host/db`` -> ``postgresql://reflux:***@host/db``
  (any scheme: ``redis://:pw@``, ``rediss://``, ``http://user:pw@``, ``kafka://``);
- ``key=value`` pairs (libpq conninfo, URL query strings, librdkafka properties) whose key names
  a credential: ``password``, ``sasl.password``, ``secret_key``, ``aws_secret_access_key``,
  ``token``, ``api_key``... -> ``password=***`` (quoted values too: ``password='a b'``).

It is a safety net for messages, not a parser: it errs towards masking too much.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["REDACTED", "redact_credentials"]

REDACTED: Final = "***"

# scheme://user:password@  (the password may hold anything but '@' and blanks; a '/' ends the
# authority, so "http://host/path:x@y" is not mistaken for user info).
_URL_USERINFO: Final = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@?#]*:)(?P<secret>[^\s@/?#]*)(?=@)"
)
# key=value / key: value, where the key names a credential. Keys may be dotted or prefixed
# (sasl.password, ssl.key.password, aws_secret_access_key, REFLUX_S3_SECRET_KEY).
_KEY_NAMES: Final = (
    r"[\w.\-]*(?:password|passwd|pwd|secret|secret[\w.\-]*?key|token|api[_\-.]?key|"
    r"access[_\-.]?key[_\-.]?secret)"
)
_KEY_VALUE: Final = re.compile(
    rf"(?P<head>\b{_KEY_NAMES}[\"']?\s*[=:]\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,'\")]+)",
    re.IGNORECASE,
)


def redact_credentials(text: str) -> str:
    """``text`` with passwords, keys and tokens in URLs and ``key=value`` pairs replaced by
    ``***``. Idempotent; text without credentials comes back unchanged."""
    text = _URL_USERINFO.sub(lambda m: f"{m['head']}{REDACTED}" if m["secret"] else m[0], text)

    def _pair(match: re.Match[str]) -> str:
        secret = match["secret"]
        quote = secret[0] if secret[0] in "'\"" else ""
        return f"{match['head']}{quote}{REDACTED}{quote}"

    return _KEY_VALUE.sub(_pair, text)
