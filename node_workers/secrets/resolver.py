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
from node_workers.secrets.destinations import SecretDestinations, UsedSecret
from node_workers.secrets.encryption import EncryptedFileSecretProvider, key_manager_from_settings
from node_workers.secrets.errors import SecretProviderError, SecretUnavailable
from node_workers.secrets.grants import DEFAULT_TENANT, GRANTS_FILES, GrantsFile, SecretGrants
from node_workers.secrets.log_redaction import install_log_redaction
from node_workers.secrets.placeholders import secret_names, substitute_secrets
from node_workers.secrets.providers import (
    MAPPING_FILES,
    ChainSecretProvider,
    EnvSecretProvider,
    FileSecretProvider,
    SecretProvider,
)
from node_workers.secrets.redaction import Redactor, encoded_forms

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

    def resolve(
        self,
        params: Any,
        *,
        workflow_id: str,
        workflow_version: int | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Any:
        """``params`` with each ``{{ secrets.NAME }}`` replaced by the value (see
        :meth:`resolve_with_destinations`, which also says where the values may go)."""
        resolved, _ = self.resolve_with_destinations(
            params, workflow_id=workflow_id, workflow_version=workflow_version, tenant=tenant
        )
        return resolved

    def resolve_with_destinations(
        self,
        params: Any,
        *,
        workflow_id: str,
        workflow_version: int | None,
        tenant: str = DEFAULT_TENANT,
    ) -> tuple[Any, SecretDestinations]:
        """``params`` with each ``{{ secrets.NAME }}`` replaced by the value, and the secrets
        substituted with the hosts each may be sent to.

        A string that is only a placeholder (blanks around it allowed) becomes the value;
        otherwise each placeholder is replaced in place. Keys are never resolved. Each name must
        be granted to ``tenant`` + ``workflow_id`` + ``workflow_version`` (``None``: only grants
        of any version pass). Raises :class:`SecretUnavailable` (not granted, not set, empty) or
        :class:`SecretProviderError`; nothing is resolved unless every name is available.
        """
        names = secret_names(params)
        if not names:
            return params, SecretDestinations()
        grants = self.grants
        values: dict[str, str] = {}
        used: list[UsedSecret] = []
        for name in names:
            if workflow_version is not None:
                refusal = grants.refusal(
                    name, tenant=tenant, workflow_id=workflow_id, version=workflow_version
                )
            elif grants.allows(name, workflow_id, None, tenant):
                refusal = None
            else:  # a caller that knows no version: only grants of every version pass
                refusal = f"it is not granted to every version of it (grants: {grants.source})"
            if refusal is not None:
                raise SecretUnavailable(
                    name, workflow_id, refusal, version=workflow_version, tenant=tenant
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
            used.append(UsedSecret(name, grants.rules[name], frozenset(encoded_forms(value))))
        return substitute_secrets(params, values), SecretDestinations(tuple(used))


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
