"""Credentials `make up` generates for the local services, kept under ``data_dir/credentials``.

The folder is 0700 and every file 0600, owned by whoever runs `make up` (the user that runs the
components). Nothing here is a default: a missing file is generated with a random value, an
existing one is kept (idempotent, and restarting a service keeps its password).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

__all__ = [
    "ensure_private_dir",
    "pgpass_line",
    "read_or_create_json",
    "read_pgpass_password",
    "write_private",
]


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` with mode 0600 from the first byte (no window where another
    user could read it), replacing the file atomically."""
    ensure_private_dir(path.parent)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(staging, path)
    path.chmod(0o600)


def new_password() -> str:
    # URL-safe alphabet: no ':' or '\\' (pgpass separators) and nothing a DSN must escape.
    return secrets.token_urlsafe(32)


def pgpass_line(port: int, role: str, password: str) -> str:
    """A libpq password file line for ``role`` on any host at ``port``, any database."""
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:{port}:*:{role}:{escaped}\n"


def read_pgpass_password(path: Path, role: str) -> str | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 5 and fields[3] == role:
            return ":".join(fields[4:]).replace("\\:", ":").replace("\\\\", "\\")
    return None


def read_or_create_json(path: Path, keys: tuple[str, ...], make: dict[str, str]) -> dict[str, str]:
    """The JSON object in ``path``; generated from ``make`` when missing or lacking a key."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and all(isinstance(data.get(k), str) and data[k] for k in keys):
        return {k: data[k] for k in keys}
    write_private(path, json.dumps(make, indent=2) + "\n")
    return dict(make)
