"""Who may read which secret: operator configuration, never the workflow definition.

``<secrets_dir>/grants.yaml`` maps ``NAME -> workflow id patterns``. A definition cannot grant
itself anything, a name nobody listed is granted to nobody, and with no grants file nothing is
granted (deny by default, docs/decisions/0009-secrets.md).
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from foundation.errors import ConfigurationError
from node_workers.secrets.config_files import load_config_file
from workflows.expressions import SECRET_NAME

__all__ = ["GRANTS_FILES", "GrantsFile", "SecretGrants"]

GRANTS_FILES: Final = ("grants.yaml", "grants.yml", "grants.json")
"""Looked up in ``secrets_dir`` in this order. Lower-case, so never mistaken for a secret."""


@dataclass(frozen=True)
class SecretGrants:
    """Which workflows may read which secret: ``NAME -> workflow id patterns``.

    Patterns are shell globs matched against the whole workflow id (``billing-*``, ``demo``,
    ``*`` for every workflow). A name that is not listed is granted to nobody.
    """

    rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = "no grants"
    """Where the rules came from, for error messages."""

    def allows(self, name: str, workflow_id: str) -> bool:
        return any(fnmatch.fnmatchcase(workflow_id, p) for p in self.rules.get(name, ()))

    @classmethod
    def from_mapping(cls, data: Any, *, source: str) -> SecretGrants:
        """``{"API_TOKEN": ["billing-*", "demo"], "DB_PASSWORD": "*"}`` (a string = one pattern)."""
        if data is None:
            return cls({}, source)
        if not isinstance(data, Mapping):
            raise ConfigurationError(
                f"Expected grants in {source} to be a mapping of NAME: [workflow id patterns], "
                f"but got a {type(data).__name__}"
            )
        rules: dict[str, tuple[str, ...]] = {}
        for name, patterns in data.items():
            if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
                raise ConfigurationError(
                    f"Expected secret names in {source} to match {SECRET_NAME.pattern}, "
                    f"but got {name!r}"
                )
            items = [patterns] if isinstance(patterns, str) else patterns
            if not isinstance(items, list) or not all(isinstance(p, str) and p for p in items):
                raise ConfigurationError(
                    f"Expected the grant of {name!r} in {source} to be a workflow id pattern or "
                    f"a list of them, but got {patterns!r}"
                )
            rules[name] = tuple(items)
        return cls(rules, source)

    @classmethod
    def load(cls, path: Path) -> SecretGrants:
        return cls.from_mapping(load_config_file(path, "grants file"), source=str(path))


class GrantsFile:
    """Grants read from a file, re-read when it changes; a missing file grants nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._grants: SecretGrants | None = None
        self._mtime: float | None = None
        self._lock = threading.Lock()

    def current(self) -> SecretGrants:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                return SecretGrants({}, f"{self.path} (missing, so nothing is granted)")
            if self._grants is None or mtime != self._mtime:
                self._grants = SecretGrants.load(self.path)
                self._mtime = mtime
            return self._grants
