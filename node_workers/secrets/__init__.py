"""Secrets inside the worker: providers, grants, placeholder resolution and redaction.

A definition writes ``{{ secrets.NAME }}`` in step params. The scheduler keeps that text as it is
(:mod:`workflows.expressions`), so run events, invocations, Postgres rows and traces
carry the placeholder, never the value. Here, in the worker and right before the node's params
are validated, :class:`SecretResolver` replaces each placeholder with the value, if the
workflow is **granted** that secret, and registers the value with a :class:`Redactor`, which
replaces it by ``***`` in the attempt's output, error and metric names and in every log record
the process creates (:func:`install_log_redaction`). See docs/secrets.md and
docs/decisions/0009-secrets.md.

One module per concern; import from this package, which re-exports the public names:

- :mod:`~node_workers.secrets.providers`: where values come from (:class:`SecretProvider`,
  ``get(name) -> str | None``): :class:`FileSecretProvider` (a folder of files named ``NAME``,
  e.g. a mounted Kubernetes Secret, or one YAML/JSON mapping file), :class:`EnvSecretProvider`
  (``REFLUX_SECRET_<NAME>``; the only place that reads those variables) and
  :class:`ChainSecretProvider` (first that knows the name). A Vault or KMS adapter implements
  the same protocol.
- :mod:`~node_workers.secrets.grants`: who may read what (:class:`SecretGrants`), operator
  configuration in ``<secrets_dir>/grants.yaml``: per ``NAME``, grants to tenant + workflow +
  versions, and the hosts the value may be sent to. A workflow definition cannot grant itself
  anything; with no grants file nothing is granted.
- :mod:`~node_workers.secrets.destinations`: :class:`SecretDestinations`, what a node checks
  before sending a request that carries secrets (``SecretHostDenied``).
- :mod:`~node_workers.secrets.placeholders`: finding and filling placeholders in params.
- :mod:`~node_workers.secrets.redaction` (:class:`Redactor`) and
  :mod:`~node_workers.secrets.log_redaction` (:func:`install_log_redaction`): masking values.
- :mod:`~node_workers.secrets.resolver`: :class:`SecretResolver`, which ties the above together,
  and the worker's wiring (:func:`resolver_from_settings`, :func:`no_secrets`).
- :mod:`~node_workers.secrets.errors` and :mod:`~node_workers.secrets.config_files`: the
  failures, and reading the operator's YAML/JSON without quoting values in errors.
"""

from __future__ import annotations

from node_workers.secrets.destinations import SecretDestinations, UsedSecret
from node_workers.secrets.encryption import (
    EncryptedFileSecretProvider,
    KeyManager,
    LocalKeyManager,
)
from node_workers.secrets.errors import SecretHostDenied, SecretProviderError, SecretUnavailable
from node_workers.secrets.grants import (
    DEFAULT_TENANT,
    GRANTS_FILES,
    Grant,
    GrantsFile,
    HostPattern,
    SecretGrants,
    SecretRule,
    VersionSet,
)
from node_workers.secrets.log_redaction import install_log_redaction
from node_workers.secrets.placeholders import secret_names
from node_workers.secrets.providers import (
    ENV_PREFIX,
    ChainSecretProvider,
    EnvSecretProvider,
    FileSecretProvider,
    SecretProvider,
)
from node_workers.secrets.redaction import REDACTED, Redactor
from node_workers.secrets.resolver import SecretResolver, no_secrets, resolver_from_settings

__all__ = [
    "DEFAULT_TENANT",
    "ENV_PREFIX",
    "GRANTS_FILES",
    "REDACTED",
    "ChainSecretProvider",
    "EncryptedFileSecretProvider",
    "EnvSecretProvider",
    "FileSecretProvider",
    "Grant",
    "GrantsFile",
    "HostPattern",
    "KeyManager",
    "LocalKeyManager",
    "Redactor",
    "SecretDestinations",
    "SecretGrants",
    "SecretHostDenied",
    "SecretProvider",
    "SecretProviderError",
    "SecretResolver",
    "SecretRule",
    "SecretUnavailable",
    "UsedSecret",
    "VersionSet",
    "install_log_redaction",
    "no_secrets",
    "resolver_from_settings",
    "secret_names",
]
