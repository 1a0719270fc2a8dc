"""Where secret values come from: one small protocol, and the providers REFLUX ships.

:class:`SecretProvider` (``get(name) -> str | None``) is what a Vault or KMS adapter implements;
``None`` means "not here", so :class:`ChainSecretProvider` can ask the next one. Shipped:
:class:`FileSecretProvider` (a folder of files named ``NAME``, e.g. a mounted Kubernetes Secret,
or one YAML/JSON mapping file) and :class:`EnvSecretProvider` (``REFLUX_SECRET_<NAME>``; the only
place that reads those variables). Providers read at each ``get`` so rotated values are picked
up without a restart; none of them puts a value in an error message or a ``repr()``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from foundation.errors import ConfigurationError
from node_workers.secrets.config_files import load_config_file
from node_workers.secrets.errors import SecretProviderError
from node_workers.secrets.files import read_secret_file
from workflows.expressions import SECRET_NAME

__all__ = [
    "ENV_PREFIX",
    "MAPPING_FILES",
    "MAX_SECRET_BYTES",
    "ChainSecretProvider",
    "EnvSecretProvider",
    "FileSecretProvider",
    "SecretProvider",
]

ENV_PREFIX: Final = "REFLUX_SECRET_"
MAPPING_FILES: Final = ("secrets.yaml", "secrets.yml", "secrets.json")
"""Optional ``NAME: value`` files in ``secrets_dir`` (after the one-file-per-secret layout)."""
MAX_SECRET_BYTES: Final = 1024 * 1024


@runtime_checkable
class SecretProvider(Protocol):
    """Where secret values come from: the interface a Vault/KMS adapter implements.

    ``get`` returns the value, or ``None`` when this provider does not have ``name`` (so a chain
    asks the next one). It is called in a worker thread, once per secret per attempt, so it may
    block (an HTTP call to Vault) and should cache as the backend allows. It raises for a
    provider that cannot answer; exception messages must not contain values. ``repr()`` must not
    reveal values either: it appears in error messages.
    """

    def get(self, name: str) -> str | None: ...


class EnvSecretProvider:
    """``REFLUX_SECRET_<NAME>`` environment variables, read at each ``get`` (the only place in
    REFLUX that reads them). ``environ`` replaces ``os.environ`` (tests)."""

    def __init__(self, environ: Mapping[str, str] | None = None, *, prefix: str = ENV_PREFIX):
        self._environ = environ
        self.prefix = prefix

    def get(self, name: str) -> str | None:
        environ = os.environ if self._environ is None else self._environ
        return environ.get(self.prefix + name)

    def __repr__(self) -> str:
        return f"EnvSecretProvider({self.prefix}<NAME>)"


class FileSecretProvider:
    """A folder with one file per secret, named ``NAME`` (a mounted Kubernetes Secret, Docker
    secrets), or one YAML/JSON file mapping ``NAME: value``.

    Read at each ``get``, so rotated files are picked up without a restart (Kubernetes swaps a
    volume's files atomically). One trailing newline of a file is dropped (``echo v > NAME``
    writes one); everything else is kept byte for byte.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._mapping: dict[str, str] | None = None
        self._mtime: float | None = None
        self._lock = threading.Lock()

    def get(self, name: str) -> str | None:
        if not SECRET_NAME.fullmatch(name):  # never a path: no "../", no "grants.yaml"
            return None
        if self.path.is_dir():
            return self._read_file(self.path / name)
        return self._read_mapping().get(name)

    def _read_file(self, file: Path) -> str | None:
        data = read_secret_file(file, MAX_SECRET_BYTES)
        if data is None:
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigurationError(
                f"Expected secret file {file} to be UTF-8 text, but it is not"
            ) from None
        return text.removesuffix("\n").removesuffix("\r")

    def _read_mapping(self) -> dict[str, str]:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                return {}
            except OSError as exc:
                raise SecretProviderError(
                    f"Expected to read {self.path}, but: {exc.strerror or type(exc).__name__}"
                ) from None
            if self._mapping is None or mtime != self._mtime:
                self._mapping = _parse_secret_mapping(self.path)
                self._mtime = mtime
            return self._mapping

    def __repr__(self) -> str:
        return f"FileSecretProvider({str(self.path)!r})"


def _parse_secret_mapping(path: Path) -> dict[str, str]:
    data = load_config_file(path, "secrets file")
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigurationError(
            f"Expected secrets file {path} to be a mapping of NAME: value, "
            f"but it is a {type(data).__name__}"
        )
    out: dict[str, str] = {}
    for name, value in data.items():
        if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
            raise ConfigurationError(
                f"Expected secret names in {path} to match {SECRET_NAME.pattern}, but got {name!r}"
            )
        if not isinstance(value, str):  # the type only: the value may be the secret
            raise ConfigurationError(
                f"Expected secret {name!r} in {path} to be a string, "
                f"but it is a {type(value).__name__}"
            )
        out[name] = value
    return out


class ChainSecretProvider:
    """Asks each provider in order; the first that has the name wins."""

    def __init__(self, *providers: SecretProvider) -> None:
        self.providers = providers

    def get(self, name: str) -> str | None:
        for provider in self.providers:
            value = provider.get(name)
            if value is not None:
                return value
        return None

    def __repr__(self) -> str:
        return "ChainSecretProvider(" + ", ".join(map(repr, self.providers)) + ")"
