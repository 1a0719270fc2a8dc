"""Resolving a step's placeholders: the one place where grants, providers and redaction meet.

The worker calls :meth:`SecretResolver.resolve` right before a node's params are validated
(:mod:`node_workers.attempt`). Every value handed out is registered with the resolver's
:class:`Redactor` first, so no value exists in the process that its outputs and logs would not
mask. :func:`resolver_from_settings` wires the worker's resolver from ``secrets_dir``;
:func:`no_secrets` is the resolver of a worker started without one.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from foundation.errors import ConfigurationError, RefluxError
from foundation.settings import Settings
from node_workers.secrets.encryption import EncryptedFileSecretProvider, key_manager_from_settings
from node_workers.secrets.errors import SecretProviderError, SecretUnavailable
from node_workers.secrets.grants import GRANTS_FILES, GrantsFile, SecretGrants
from node_workers.secrets.log_redaction import install_log_redaction
from node_workers.secrets.placeholders import secret_names, substitute_secrets
from node_workers.secrets.providers import (
    MAPPING_FILES,
    ChainSecretProvider,
    EnvSecretProvider,
    FileSecretProvider,
    SecretProvider,
)
from node_workers.secrets.redaction import Redactor

__all__ = ["SecretResolver", "no_secrets", "resolver_from_settings"]


class SecretResolver:
    """Resolves placeholders for a workflow from ``provider``, checked against ``grants``, and
    feeds every value it hands out to ``redactor`` (whose values are redacted from logs)."""

    def __init__(
        self,
        provider: SecretProvider,
        grants: SecretGrants | GrantsFile,
        *,
        redactor: Redactor | None = None,
    ) -> None:
        self.provider = provider
        self._grants = grants
        self.redactor = redactor if redactor is not None else Redactor()
        install_log_redaction(self.redactor)

    @property
    def grants(self) -> SecretGrants:
        return self._grants.current() if isinstance(self._grants, GrantsFile) else self._grants

    def resolve(self, params: Any, *, workflow_id: str) -> Any:
        """``params`` with each ``{{ secrets.NAME }}`` replaced by the value.

        A string that is only a placeholder (blanks around it allowed) becomes the value;
        otherwise each placeholder is replaced in place. Keys are never resolved. Raises
        :class:`SecretUnavailable` (not granted, not set, empty) or
        :class:`SecretProviderError`; nothing is resolved unless every name is available.
        """
        names = secret_names(params)
        if not names:
            return params
        grants = self.grants
        values: dict[str, str] = {}
        for name in names:
            if not grants.allows(name, workflow_id):
                raise SecretUnavailable(
                    name,
                    workflow_id,
                    f"it is not granted to this workflow (grants: {grants.source})",
                )
            try:
                value = self.provider.get(name)
            except RefluxError:
                raise
            except Exception as exc:
                raise SecretProviderError(
                    f"Expected {self.provider!r} to return secret {name!r}, but it raised "
                    f"{type(exc).__name__}"
                ) from exc
            if value is None:
                raise SecretUnavailable(
                    name, workflow_id, f"it is granted but not set (looked in {self.provider!r})"
                )
            if not value:
                raise SecretUnavailable(
                    name, workflow_id, "it is set but empty, and an empty secret cannot be redacted"
                )
            self.redactor.add(value)
            values[name] = value
        return substitute_secrets(params, values)


@lru_cache(maxsize=1)
def no_secrets() -> SecretResolver:
    """The resolver of an attempt given none: every placeholder fails with SecretUnavailable, so
    an unresolved ``{{ secrets.X }}`` never reaches a node (and an outside service) as text."""
    return SecretResolver(
        ChainSecretProvider(), SecretGrants({}, "none: this worker was started without secrets")
    )


def resolver_from_settings(settings: Settings) -> SecretResolver:
    """The worker's resolver: files in ``secrets_dir`` (``NAME.enc`` encrypted, decrypted with
    ``secrets_key``; ``NAME``; then ``secrets.yaml``), then ``REFLUX_SECRET_<NAME>``; grants
    from ``secrets_dir/grants.yaml`` (or .yml/.json)."""
    directory = settings.secrets_dir
    if directory is None:
        return SecretResolver(
            EnvSecretProvider(),
            SecretGrants({}, "none: no secrets_dir (REFLUX_SECRETS_DIR) holds a grants.yaml"),
        )
    if not directory.is_dir():
        raise ConfigurationError(
            f"Expected secrets_dir {directory} to be a directory, but it is not"
        )
    # Encrypted files first: once a secret is encrypted, a stale plaintext copy never wins.
    providers: list[SecretProvider] = [
        EncryptedFileSecretProvider(directory, key_manager_from_settings(settings)),
        FileSecretProvider(directory),
    ]
    providers += [
        FileSecretProvider(directory / n) for n in MAPPING_FILES if (directory / n).is_file()
    ]
    providers.append(EnvSecretProvider())
    grants = next(
        (directory / n for n in GRANTS_FILES if (directory / n).is_file()),
        directory / GRANTS_FILES[0],
    )
    grants_file = GrantsFile(grants)
    grants_file.current()  # a malformed grants file stops the worker now, not at a step
    return SecretResolver(ChainSecretProvider(*providers), grants_file)
