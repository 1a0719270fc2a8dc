"""The databases an operator lets ``database.query`` reach: ``<secrets_dir>/databases.yaml``.

```yaml
orders: ORDERS_DSN        # connection name -> the secret that holds its DSN
analytics: ANALYTICS_DSN
```

A step names a connection (``connection: orders``); the worker reads the DSN from the secret,
which must be granted to the workflow in ``grants.yaml`` like any other secret. A missing file
configures nothing (every ``database.query`` is refused). Re-read when it changes.
See docs/secrets.md and docs/decisions/0044-database-access-and-platform-credentials.md.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from foundation.errors import ConfigurationError
from node_workers.secrets.config_files import load_config_file
from workflows.expressions import SECRET_NAME

__all__ = [
    "CONNECTION_NAME",
    "DATABASES_FILES",
    "DatabaseConnections",
    "DatabasesFile",
]

DATABASES_FILES: Final = ("databases.yaml", "databases.yml", "databases.json")
CONNECTION_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,62}")


@dataclass(frozen=True)
class DatabaseConnections:
    """``connection name -> secret name`` and where it was read from (for messages)."""

    secrets: Mapping[str, str] = field(default_factory=dict)
    source: str = "no databases file"

    @classmethod
    def from_mapping(cls, data: Any, *, source: str) -> DatabaseConnections:
        if data is None:
            return cls({}, source)
        if not isinstance(data, Mapping):
            raise ConfigurationError(
                f"Expected {source} to map connection names to secret names "
                f"(orders: ORDERS_DSN), but got a {type(data).__name__}"
            )
        out: dict[str, str] = {}
        for name, secret in data.items():
            if not isinstance(name, str) or not CONNECTION_NAME.fullmatch(name):
                raise ConfigurationError(
                    f"Expected connection names in {source} to match {CONNECTION_NAME.pattern}, "
                    f"but got {name!r}"
                )
            if not isinstance(secret, str) or not SECRET_NAME.fullmatch(secret):
                raise ConfigurationError(
                    f"Expected the connection {name!r} in {source} to name the secret holding "
                    f"its DSN ({SECRET_NAME.pattern}), but got {secret!r}"
                )
            out[name] = secret
        return cls(out, source)


class DatabasesFile:
    """Connections read from a file, re-read when it changes; a missing file configures none."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._current: DatabaseConnections | None = None
        self._mtime: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def in_folder(cls, folder: Path | None) -> DatabasesFile | None:
        if folder is None:
            return None
        found = next((folder / n for n in DATABASES_FILES if (folder / n).is_file()), None)
        return cls(found or folder / DATABASES_FILES[0])

    def current(self) -> DatabaseConnections:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                return DatabaseConnections({}, f"{self.path} (missing, so none is configured)")
            if self._current is None or mtime != self._mtime:
                self._current = DatabaseConnections.from_mapping(
                    load_config_file(self.path, "databases file"), source=str(self.path)
                )
                self._mtime = mtime
            return self._current
