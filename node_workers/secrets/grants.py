"""Who may read which secret, and where it may be sent: operator configuration, never the
workflow definition (docs/secrets.md; docs/decisions/0009-secrets.md and
0050-secret-grants-versions-hosts.md).

``<secrets_dir>/grants.yaml`` maps each secret ``NAME`` to the hosts its value may be sent to and
to grants, each naming a **tenant**, a **workflow** id pattern and the **versions** allowed::

    API_TOKEN:
      hosts: [api.stripe.com, "*.example.com:443"]
      grants:
        - {workflow: billing, versions: [1, 2, "4-6"]}          # tenant: default
        - {tenant: acme, workflow: "acme-*", versions: [3]}

A new version of a granted workflow gets nothing until the operator adds it: that closes
"whoever can register version N+1 can send the secret anywhere". ``versions: any`` is the
explicit, visible opt-out. The legacy form ``NAME: [workflow id patterns]`` still loads, as
tenant ``default``, any version, any host, with a warning per name (ADR 0050).

A definition cannot grant itself anything, a name nobody listed is granted to nobody, and with no
grants file nothing is granted (deny by default).
"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from foundation.errors import ConfigurationError
from foundation.tenancy import DEFAULT_TENANT
from node_workers.secrets.config_files import load_config_file
from workflows.expressions import SECRET_NAME

__all__ = [
    "ANY_HOST",
    "DEFAULT_TENANT",
    "GRANTS_FILES",
    "Grant",
    "GrantsFile",
    "HostPattern",
    "SecretGrants",
    "SecretRule",
    "VersionSet",
]

log = logging.getLogger(__name__)

GRANTS_FILES: Final = ("grants.yaml", "grants.yml", "grants.json")
"""Looked up in ``secrets_dir`` in this order. Lower-case, so never mistaken for a secret."""

ANY_HOST: Final = "*"
_RANGE: Final = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
_HOST: Final = re.compile(r"^(\*|(\*\.)?[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(:(\d{1,5}))?$")


@dataclass(frozen=True, slots=True)
class VersionSet:
    """Workflow versions a grant covers: explicit numbers and closed ranges, or ``any``.

    No open ranges (``5-``): an open range grants versions nobody has read yet, which is the hole
    version binding closes. ``any`` exists for the operator who decides so, in writing."""

    ranges: tuple[tuple[int, int], ...] = ()
    any_version: bool = False

    def __contains__(self, version: object) -> bool:
        if self.any_version:
            return True
        return isinstance(version, int) and any(lo <= version <= hi for lo, hi in self.ranges)

    def describe(self) -> str:
        if self.any_version:
            return "any"
        return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges)

    @classmethod
    def parse(cls, data: Any, *, where: str) -> VersionSet:
        if data == "any":
            return cls(any_version=True)
        items = [data] if isinstance(data, int | str) and not isinstance(data, bool) else data
        if not isinstance(items, list) or not items:
            raise ConfigurationError(
                f"Expected {where}.versions to be a list of versions and ranges like "
                f'[1, 2, "4-6"], or "any", but got {data!r}'
            )
        ranges: list[tuple[int, int]] = []
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool) and item >= 1:
                ranges.append((item, item))
                continue
            match = _RANGE.match(item) if isinstance(item, str) else None
            if match is None or not 1 <= int(match.group(1)) <= int(match.group(2)):
                raise ConfigurationError(
                    f"Expected each of {where}.versions to be a version >= 1 or a closed range "
                    f'"LOW-HIGH" (open ranges would grant versions not registered yet), '
                    f"but got {item!r}"
                )
            ranges.append((int(match.group(1)), int(match.group(2))))
        return cls(tuple(ranges))


@dataclass(frozen=True, slots=True)
class HostPattern:
    """``api.stripe.com``, ``*.example.com`` (any subdomain, not the domain itself), an IP
    (``127.0.0.1``, ``[::1]``), each with an optional ``:port`` (none: any port); ``*``: any."""

    text: str
    host: str
    port: int | None

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        host = host.lower().rstrip(".").strip("[]")
        if self.host == ANY_HOST:
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host

    @classmethod
    def parse(cls, text: Any, *, where: str) -> HostPattern:
        match = _HOST.match(text) if isinstance(text, str) else None
        port = int(match.group(4)) if match is not None and match.group(4) else None
        if match is None or (port is not None and not 1 <= port <= 65535):
            raise ConfigurationError(
                f"Expected each of {where}.hosts to be a host name, '*.domain', an IP or '*', "
                f"with an optional ':port', but got {text!r}"
            )
        return cls(text, match.group(1).lower().rstrip(".").strip("[]"), port)


@dataclass(frozen=True, slots=True)
class Grant:
    tenant: str
    workflow: str
    """Shell glob over the whole workflow id (``billing-*``)."""
    versions: VersionSet

    def describe(self) -> str:
        versions = self.versions.describe()
        return f"tenant {self.tenant!r}, workflow {self.workflow!r}, versions {versions}"


@dataclass(frozen=True, slots=True)
class SecretRule:
    """One secret's grants and hosts; ``hosts is None``: any host (legacy grants only)."""

    grants: tuple[Grant, ...]
    hosts: tuple[HostPattern, ...] | None
    legacy: bool = False

    def host_allowed(self, host: str, port: int) -> bool:
        return self.hosts is None or any(p.matches(host, port) for p in self.hosts)

    @property
    def any_host(self) -> bool:
        return self.hosts is None or any(p.host == ANY_HOST and p.port is None for p in self.hosts)

    def describe_hosts(self) -> str:
        if self.hosts is None:
            return "any (legacy grant without hosts)"
        return ", ".join(p.text for p in self.hosts) or "none"


@dataclass(frozen=True)
class SecretGrants:
    """Which workflows (tenant, id, versions) may read which secret, and where it may go."""

    rules: Mapping[str, SecretRule] = field(default_factory=dict)
    source: str = "no grants"
    """Where the rules came from, for error messages."""

    def refusal(self, name: str, *, tenant: str, workflow_id: str, version: int) -> str | None:
        """Why ``name`` is not granted to this run, with what to do; ``None`` if granted."""
        rule = self.rules.get(name)
        if rule is None:
            return (
                f"it is not granted to anyone (grants: {self.source}); an operator adds a grant "
                f"for tenant {tenant!r}, workflow {workflow_id!r}, version {version} there"
            )
        matching = [g for g in rule.grants if fnmatch.fnmatchcase(workflow_id, g.workflow)]
        if any(g.tenant == tenant and version in g.versions for g in matching):
            return None
        same_tenant = [g for g in matching if g.tenant == tenant]
        if same_tenant:
            granted = "; ".join(g.versions.describe() for g in same_tenant)
            return (
                f"version {version} is not granted (granted versions: {granted}; grants: "
                f"{self.source}). A new version gets no secret until an operator reviews it and "
                f"adds {version} to the versions of this grant"
            )
        if matching:
            tenants = ", ".join(sorted({repr(g.tenant) for g in matching}))
            return (
                f"it is granted to this workflow id in tenant {tenants} only, not in tenant "
                f"{tenant!r} (grants: {self.source})"
            )
        return (
            f"it is not granted to this workflow (grants: {self.source}); an operator adds a "
            f"grant for tenant {tenant!r}, workflow {workflow_id!r}, version {version} there"
        )

    def allows(
        self,
        name: str,
        workflow_id: str,
        version: int | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> bool:
        """Granted? ``version=None`` only passes grants of ``any`` version."""
        rule = self.rules.get(name)
        if rule is None:
            return False
        return any(
            g.tenant == tenant
            and fnmatch.fnmatchcase(workflow_id, g.workflow)
            and (g.versions.any_version if version is None else version in g.versions)
            for g in rule.grants
        )

    @classmethod
    def from_mapping(cls, data: Any, *, source: str) -> SecretGrants:
        """Parse the file's contents: per name, the structured form or the legacy pattern list."""
        if data is None:
            return cls({}, source)
        if not isinstance(data, Mapping):
            raise ConfigurationError(
                f"Expected grants in {source} to be a mapping of NAME: {{hosts, grants}}, "
                f"but got a {type(data).__name__}"
            )
        rules: dict[str, SecretRule] = {}
        for name, spec in data.items():
            if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
                raise ConfigurationError(
                    f"Expected secret names in {source} to match {SECRET_NAME.pattern}, "
                    f"but got {name!r}"
                )
            rules[name] = _rule(name, spec, source)
        legacy = sorted(n for n, r in rules.items() if r.legacy)
        if legacy:
            log.warning(
                "Secret grants in %s use the legacy form NAME: [workflow patterns] for %s: those "
                "secrets go to ANY version of the workflows and ANY host. Rewrite them as "
                "NAME: {hosts: [...], grants: [{workflow, versions}]} (docs/secrets.md)",
                source,
                ", ".join(legacy),
            )
        return cls(rules, source)

    @classmethod
    def load(cls, path: Path) -> SecretGrants:
        return cls.from_mapping(load_config_file(path, "grants file"), source=str(path))


def _rule(name: str, spec: Any, source: str) -> SecretRule:
    where = f"{source}: {name}"
    if isinstance(spec, str) or (isinstance(spec, list) and all(isinstance(p, str) for p in spec)):
        patterns = [spec] if isinstance(spec, str) else spec
        if not patterns or not all(patterns):
            raise ConfigurationError(
                f"Expected the legacy grant {where} to be a non-empty workflow id pattern or "
                f"list of them, but got {spec!r}"
            )
        legacy = tuple(Grant(DEFAULT_TENANT, p, VersionSet(any_version=True)) for p in patterns)
        return SecretRule(legacy, None, legacy=True)
    if not isinstance(spec, Mapping) or set(spec) - {"hosts", "grants"}:
        raise ConfigurationError(
            f"Expected {where} to be a mapping with keys hosts and grants (or a legacy list of "
            f"workflow id patterns), but got {spec!r}"
        )
    hosts = spec.get("hosts")
    if not isinstance(hosts, list):
        raise ConfigurationError(
            f"Expected {where}.hosts to be the list of hosts the secret may be sent to "
            f'(e.g. [api.stripe.com, "*.example.com:443"]; [] for nowhere, ["*"] for any), '
            f"but got {hosts!r}"
        )
    items = spec.get("grants")
    if not isinstance(items, list) or not items:
        raise ConfigurationError(
            f"Expected {where}.grants to be a non-empty list of {{tenant, workflow, versions}}, "
            f"but got {items!r}"
        )
    grants: list[Grant] = []
    for i, item in enumerate(items):
        at = f"{where}.grants[{i}]"
        if not isinstance(item, Mapping) or set(item) - {"tenant", "workflow", "versions"}:
            raise ConfigurationError(
                f"Expected {at} to be a mapping with keys tenant (optional), workflow and "
                f"versions, but got {item!r}"
            )
        tenant = item.get("tenant", DEFAULT_TENANT)
        workflow = item.get("workflow")
        if not isinstance(tenant, str) or not tenant:
            raise ConfigurationError(f"Expected {at}.tenant to be a tenant id, but got {tenant!r}")
        if not isinstance(workflow, str) or not workflow:
            raise ConfigurationError(
                f"Expected {at}.workflow to be a workflow id pattern, but got {workflow!r}"
            )
        if "versions" not in item:
            raise ConfigurationError(
                f'Expected {at}.versions: the workflow versions granted (e.g. [1, "3-4"]), or '
                f'"any" to grant every version including future ones'
            )
        grants.append(Grant(tenant, workflow, VersionSet.parse(item["versions"], where=at)))
    return SecretRule(
        tuple(grants), tuple(HostPattern.parse(h, where=where) for h in hosts), legacy=False
    )


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
