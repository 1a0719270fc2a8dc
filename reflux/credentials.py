"""The API key the ``reflux`` CLI sends (ADR 0046, docs/api.md#authentication-and-roles).

Where it comes from, first found wins:

1. ``REFLUX_API_KEY`` (``Settings.api_key``);
2. the first line of ``REFLUX_API_KEY_FILE`` (``Settings.api_key_file``), by default
   ``<data_dir>/api-key`` -- the file ``reflux dev``, ``make demo`` and
   ``reflux api-keys create --write-to`` write (mode 0600).

No key: requests go without one and the API answers 401 saying what it expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from foundation.settings import Settings

__all__ = ["api_client", "api_key", "auth_headers", "default_key_file"]


def _settings() -> Settings:
    # Read afresh (not the cached get_settings()): a CLI process reads it once anyway, and a
    # test or an embedding program may set REFLUX_API_KEY after the first settings were built.
    return Settings()


def default_key_file(settings: Settings | None = None) -> Path:
    settings = settings or _settings()
    return settings.api_key_file or settings.data_dir / "api-key"


def api_key(settings: Settings | None = None) -> str | None:
    settings = settings or _settings()
    if settings.api_key is not None and settings.api_key.get_secret_value().strip():
        return settings.api_key.get_secret_value().strip()
    path = default_key_file(settings)
    try:
        lines = path.read_text().splitlines()
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        return None
    return lines[0].strip() if lines and lines[0].strip() else None


def auth_headers(settings: Settings | None = None) -> dict[str, str]:
    key = api_key(settings)
    return {"Authorization": f"Bearer {key}"} if key else {}


def api_client(base_url: str, timeout: float = 30, **kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` for the API that sends the configured key."""
    headers = {**auth_headers(), **kwargs.pop("headers", {})}
    return httpx.Client(base_url=base_url, timeout=timeout, headers=headers, **kwargs)


def console_link(base_url: str, path: str = "/runs", *, sign_in: bool) -> str:
    """The web console's address (``/ui``, docs/console.md). ``sign_in``: with the local key in
    the fragment, which browsers never send to a server and the console drops once read; only
    for a terminal a person reads, never for logs."""
    url = f"{base_url.rstrip('/')}/ui{path}"
    key = api_key() if sign_in else None
    return f"{url}#key={quote(key, safe='')}" if key else url
