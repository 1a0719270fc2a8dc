"""Node references (``"http.request@^1"``) and the semver subset they use.

Constraints: exact (``1.2.0``, ``=1.2.0``), x-ranges (``1``, ``1.2``), caret (``^1``, ``^1.2.3``,
``^0.2``), tilde (``~1.2``, ``~1.2.3``), lower bound (``>=1.2``) and any (``*`` or no ``@``).
Pre-release versions (``0.1.0-draft``) only satisfy an exact constraint, as in npm: a rollout must
opt in to them explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "NodeRef",
    "Version",
    "VersionConstraint",
    "invoke_major",
    "parse_node_ref",
]

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?$")
_PARTIAL = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?$")
_NODE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$")


@dataclass(frozen=True, order=True)
class Version:
    """A concrete semver version; ordering puts ``1.0.0-rc`` before ``1.0.0``."""

    major: int
    minor: int
    patch: int
    # Sort key part: releases (1) after pre-releases (0); then the tag itself.
    _release: int = 1
    prerelease: str = ""

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION.fullmatch(text.strip())
        if not match:
            raise ValueError(f"invalid version {text!r}: expected MAJOR.MINOR.PATCH, e.g. 1.2.0")
        major, minor, patch, pre = match.groups()
        return cls(int(major), int(minor), int(patch), 0 if pre else 1, pre or "")

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{self.prerelease}" if self.prerelease else core


@dataclass(frozen=True)
class VersionConstraint:
    """The set of versions ``lower <= v < upper`` (either bound optional), or one exact version."""

    raw: str
    lower: Version | None = None
    upper: Version | None = None
    exact: Version | None = None

    @classmethod
    def parse(cls, text: str) -> VersionConstraint:
        return _parse_constraint(text.strip())

    def allows(self, version: Version | str) -> bool:
        v = Version.parse(version) if isinstance(version, str) else version
        if self.exact is not None:
            return v == self.exact
        if v.prerelease:
            return False
        if self.lower is not None and v < self.lower:
            return False
        return not (self.upper is not None and v >= self.upper)

    def best(self, versions: Iterable[str]) -> str | None:
        """The highest allowed version among ``versions`` (unparseable ones are ignored)."""
        allowed: list[Version] = []
        for text in versions:
            try:
                v = Version.parse(text)
            except ValueError:
                continue
            if self.allows(v):
                allowed.append(v)
        return str(max(allowed)) if allowed else None

    @property
    def default_major(self) -> int:
        """The invoke-topic major used when no catalog resolves the constraint.

        Bounded ranges (``^1``, ``~1.2``, ``1``) allow exactly one major; an exact pin is its own
        major; open ranges (``>=1.2``) use their lower bound; ``*`` uses 1, the first stable major.
        """
        if self.exact is not None:
            return self.exact.major
        if self.lower is not None:
            return self.lower.major
        return 1

    def __str__(self) -> str:
        return self.raw


@lru_cache(maxsize=1024)
def _parse_constraint(text: str) -> VersionConstraint:
    # Cached: the scheduler parses a step's constraint at every attempt it schedules, and a
    # workflow has a handful of distinct ones (constraints are immutable; errors are not cached).
    if text in ("", "*", "x", "latest"):
        return VersionConstraint(raw="*")
    op = ""
    for candidate in (">=", "^", "~", "="):
        if text.startswith(candidate):
            op, body = candidate, text[len(candidate) :].strip()
            break
    else:
        body = text
    match = _PARTIAL.fullmatch(body)
    if not match:
        raise ValueError(
            f"invalid version constraint {text!r}: use an exact version (1.2.0), ^1, ~1.2, "
            ">=1.2 or *"
        )
    major_s, minor_s, patch_s, pre = match.groups()
    major, minor, patch = int(major_s), int(minor_s or 0), int(patch_s or 0)
    lower = Version(major, minor, patch, 0 if pre else 1, pre or "")
    if pre and (op not in ("", "=") or minor_s is None or patch_s is None):
        raise ValueError(
            f"invalid version constraint {text!r}: a pre-release must be pinned exactly"
        )
    if op == ">=":
        return VersionConstraint(raw=f">={body}", lower=lower)
    if op == "^":
        if major > 0 or minor_s is None:
            upper = Version(major + 1, 0, 0)
        elif minor > 0 or patch_s is None:
            upper = Version(0, minor + 1, 0)
        else:
            upper = Version(0, 0, patch + 1)
        return VersionConstraint(raw=f"^{body}", lower=lower, upper=upper)
    if op == "~":
        upper = Version(major + 1, 0, 0) if minor_s is None else Version(major, minor + 1, 0)
        return VersionConstraint(raw=f"~{body}", lower=lower, upper=upper)
    # Exact or x-range: "1.2.0" pins, "1.2" means 1.2.x, "1" means 1.x.
    if patch_s is not None:
        return VersionConstraint(raw=body, exact=lower)
    upper = Version(major + 1, 0, 0) if minor_s is None else Version(major, minor + 1, 0)
    return VersionConstraint(raw=body, lower=lower, upper=upper)


@dataclass(frozen=True)
class NodeRef:
    """``name@constraint`` as written in a step's ``node`` field."""

    name: str
    constraint: VersionConstraint

    def __str__(self) -> str:
        return f"{self.name}@{self.constraint.raw}"


@lru_cache(maxsize=4096)
def parse_node_ref(text: str) -> NodeRef:
    """Parse ``"http.request@^1"``; a bare name (``"condition"``) allows any version."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected a node reference like 'http.request@^1'")
    name, _, constraint = text.strip().partition("@")
    if not _NODE_NAME.fullmatch(name):
        raise ValueError(
            f"invalid node name {name!r}: use dotted lowercase segments, e.g. 'http.request'"
        )
    return NodeRef(name=name, constraint=VersionConstraint.parse(constraint))


def invoke_major(version: str) -> int:
    """Major of a concrete version (``"2.1.0"`` -> 2) or of an unresolved constraint (``"^1"``).

    The scheduler puts the resolver's answer into events; without a catalog that answer may still
    be the constraint text, and the invoke topic must be derivable from it either way.
    """
    try:
        return Version.parse(version).major
    except ValueError:
        return VersionConstraint.parse(version).default_major
