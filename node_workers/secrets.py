"""Secrets inside the worker: providers, grants, placeholder resolution and redaction.

A definition writes ``{{ secrets.NAME }}`` in step params. The scheduler keeps that text as it is
(:mod:`workflows.expressions`), so run events, invocations, Postgres rows and traces
carry the placeholder, never the value. Here, in the worker and right before the node's params
are validated, :class:`SecretResolver` replaces each placeholder with the value, if the
workflow is **granted** that secret, and registers the value with a :class:`Redactor`, which
replaces it by ``***`` in the attempt's output, error and metric names and in every log record
the process creates (:func:`install_log_redaction`). See docs/secrets.md and
docs/decisions/0009-secrets.md.

Where values come from (:class:`SecretProvider`, ``get(name) -> str | None``):
:class:`FileSecretProvider` (a folder of files named ``NAME``, e.g. a mounted Kubernetes Secret,
or one YAML/JSON mapping file), :class:`EnvSecretProvider` (``REFLUX_SECRET_<NAME>``; the only
place that reads those variables), and :class:`ChainSecretProvider` (first that knows the name).
A Vault or KMS adapter implements the same protocol.

Who may read what (:class:`SecretGrants`): operator configuration, ``NAME -> workflow id
patterns``, in ``<secrets_dir>/grants.yaml``. A workflow definition cannot grant itself anything;
with no grants file nothing is granted.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import logging
import os
import re
import threading
import traceback
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import quote, quote_plus

import yaml

from foundation.errors import ConfigurationError, NonRetryableError, RefluxError, RetryableError
from foundation.settings import Settings
from schemas.models import ErrorInfo
from workflows.expressions import SECRET_NAME, SECRET_PLACEHOLDER

__all__ = [
    "ENV_PREFIX",
    "GRANTS_FILES",
    "REDACTED",
    "ChainSecretProvider",
    "EnvSecretProvider",
    "FileSecretProvider",
    "GrantsFile",
    "Redactor",
    "SecretGrants",
    "SecretProvider",
    "SecretProviderError",
    "SecretResolver",
    "SecretUnavailable",
    "install_log_redaction",
    "no_secrets",
    "resolver_from_settings",
    "secret_names",
]

ENV_PREFIX: Final = "REFLUX_SECRET_"
GRANTS_FILES: Final = ("grants.yaml", "grants.yml", "grants.json")
"""Looked up in ``secrets_dir`` in this order. Lower-case, so never mistaken for a secret."""
MAPPING_FILES: Final = ("secrets.yaml", "secrets.yml", "secrets.json")
"""Optional ``NAME: value`` files in ``secrets_dir`` (after the one-file-per-secret layout)."""
REDACTED: Final = "***"
MAX_SECRET_BYTES: Final = 1024 * 1024
# Lines of a multi-line secret (a PEM key) are redacted on their own when at least this long:
# a node may log or return one line of it. Shorter lines ("-----", "") would redact noise.
_MIN_LINE_CHARS: Final = 8
# Characters a URL library may leave unescaped in a query or path (RFC 3986 sub-delims, ":@/?"
# and "~"): pydantic/httpx normalise "a b+c" to "a%20b+c", which neither quote() nor
# quote_plus() produce.
_URL_SAFE: Final = "!$&'()*+,;=:@/?~"

log = logging.getLogger(__name__)


# -- errors ---------------------------------------------------------------------------------------


class SecretUnavailable(NonRetryableError):  # noqa: N818 - the error class name users see
    """A step asked for a secret that is not granted to its workflow, or not set anywhere.

    Non-retryable: grants and provider contents are configuration; another attempt of the same
    step sees the same configuration. The message names the secret, never a value.
    """

    error_class = "SecretUnavailable"

    def __init__(self, name: str, workflow_id: str, reason: str) -> None:
        super().__init__(f"secret {name!r} is not available to workflow {workflow_id!r}: {reason}")
        self.name = name
        self.workflow_id = workflow_id


class SecretProviderError(RetryableError):
    """A provider failed to answer (unreadable file, Vault down): another attempt may work."""

    error_class = "SecretProviderUnavailable"


# -- providers ------------------------------------------------------------------------------------


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
        try:
            if not file.is_file():
                return None
            with file.open("rb") as handle:
                data = handle.read(MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise SecretProviderError(
                f"Expected to read secret file {file}, but: {exc.strerror or type(exc).__name__}"
            ) from None
        if len(data) > MAX_SECRET_BYTES:
            raise ConfigurationError(
                f"Expected secret file {file} to hold at most {MAX_SECRET_BYTES} bytes, "
                "but it is larger"
            )
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


def _load_yaml_file(path: Path, what: str) -> Any:
    """YAML/JSON file contents. Parse errors give the position only: YAML's own messages quote
    the offending line, which in a secrets file is a value."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretProviderError(
            f"Expected to read {what} {path}, but: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"Expected {what} {path} to be UTF-8 text") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigurationError(
            f"Expected {what} {path} to be YAML or JSON, but it does not parse{where}"
        ) from None


def _parse_secret_mapping(path: Path) -> dict[str, str]:
    data = _load_yaml_file(path, "secrets file")
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


# -- grants ---------------------------------------------------------------------------------------


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
        return cls.from_mapping(_load_yaml_file(path, "grants file"), source=str(path))


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


# -- redaction ------------------------------------------------------------------------------------


def _forms(value: str) -> set[str]:
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
            forms = set().union(*(_forms(v) for v in values))
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


class _LogHook:
    """The process-wide log record factory and the redactors it applies (weakly held)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.redactors: weakref.WeakSet[Redactor] = weakref.WeakSet()
        self.installed = False

    def install(self, redactor: Redactor) -> None:
        with self.lock:
            self.redactors.add(redactor)
            if self.installed:
                return
            previous = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                self.redact(record)
                return record

            logging.setLogRecordFactory(factory)
            self.installed = True

    def redact(self, record: logging.LogRecord) -> None:
        with self.lock:
            redactors = [r for r in self.redactors if len(r)]
        if not redactors:
            return

        def scrub(text: str) -> str:
            for redactor in redactors:
                text = redactor.redact_text(text)
            return text

        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it when a handler formats
            return
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            clean = scrub(text)
            if clean != text:
                # Formatters print exc_text when set; dropping exc_info keeps handlers that
                # format the exception themselves from printing the unredacted one.
                record.exc_text, record.exc_info = clean, None
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)


_LOG_HOOK: Final = _LogHook()


def install_log_redaction(redactor: Redactor) -> None:
    """Redact ``redactor``'s values from every log record this process creates from now on.

    A log record factory, not a handler filter: it sees records of every logger (httpx logs
    request URLs at INFO) whatever handlers are attached, before any handler formats them.
    Records without a known value are left untouched. Chains to the factory in place before.
    """
    _LOG_HOOK.install(redactor)


# -- resolution -----------------------------------------------------------------------------------


def secret_names(params: Any) -> list[str]:
    """Names of the placeholders in a JSON value's strings (not keys), first occurrence order."""
    names: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            if "{{" in value:
                for name in SECRET_PLACEHOLDER.findall(value):
                    if name not in names:
                        names.append(name)
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(params)
    return names


def _substitute(value: Any, secrets: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        if "{{" not in value:
            return value
        whole = SECRET_PLACEHOLDER.fullmatch(value.strip())
        if whole is not None:  # like a whole-value template: surrounding blanks are dropped
            return secrets[whole.group(1)]
        return SECRET_PLACEHOLDER.sub(lambda m: secrets[m.group(1)], value)
    if isinstance(value, Mapping):
        return {key: _substitute(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_substitute(item, secrets) for item in value]
    return value


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
        return _substitute(params, values)


@lru_cache(maxsize=1)
def no_secrets() -> SecretResolver:
    """The resolver of an attempt given none: every placeholder fails with SecretUnavailable, so
    an unresolved ``{{ secrets.X }}`` never reaches a node (and an outside service) as text."""
    return SecretResolver(
        ChainSecretProvider(), SecretGrants({}, "none: this worker was started without secrets")
    )


def resolver_from_settings(settings: Settings) -> SecretResolver:
    """The worker's resolver: files in ``secrets_dir`` (one per secret, then ``secrets.yaml``),
    then ``REFLUX_SECRET_<NAME>``; grants from ``secrets_dir/grants.yaml`` (or .yml/.json)."""
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
    providers: list[SecretProvider] = [FileSecretProvider(directory)]
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
