"""Which schemas exist: fingerprint -> (full name, version, writer schema), plus current readers.

Current schemas live in ``schemas/avro/<FullName>.avsc`` (one named type per file, so fastavro's
``load_schema`` resolves references across files). Older versions of a record live in
``schemas/avro/history/<FullName>.v<N>.avsc``, *self-contained* (named types inlined), so a later
change to a shared type such as ``ErrorInfo`` cannot silently alter a historical writer schema.

Records in ``reflux.common`` and enums are building blocks, not top-level records: they get no
fingerprint of their own. Everything here is validated once at load time and fails loudly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from fastavro.schema import (
    SchemaParseException,
    UnknownType,
    fingerprint,
    load_schema,
    parse_schema,
    to_parsing_canonical_form,
)

from schemas.errors import SchemaDefinitionError

AVRO_DIR = Path(__file__).parent / "avro"
HISTORY_DIR = AVRO_DIR / "history"
COMMON_NAMESPACE = "reflux.common"
VERSION_ATTRIBUTE = "reflux.version"
_HISTORY_FILE = re.compile(r"^(?P<name>[\w.]+)\.v(?P<version>\d+)\.avsc$")

Schema = dict[str, Any]


@dataclass(frozen=True)
class SchemaEntry:
    """One writer schema: a version of a top-level record."""

    name: str
    version: int
    fingerprint: bytes
    schema: Schema = field(repr=False, compare=False)
    path: Path
    current: bool


def schema_fingerprint(schema: Schema) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form, as the 8 little-endian bytes on the wire."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def full_name(raw: Schema) -> str:
    """The full name of a raw named-type definition."""
    name = str(raw["name"])
    namespace = raw.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def is_top_level(raw: Schema) -> bool:
    """Top-level records are what goes on a topic; common records and enums are parts of them."""
    return raw.get("type") == "record" and not full_name(raw).startswith(COMMON_NAMESPACE + ".")


def _read_json(path: Path) -> Schema:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaDefinitionError(f"Cannot read schema file {path}: {exc}") from exc
    if not isinstance(raw, dict) or "name" not in raw:
        raise SchemaDefinitionError(f"{path} must hold one named Avro type (a JSON object).")
    return raw


def _version_of(raw: Schema, path: Path) -> int:
    version = raw.get(VERSION_ATTRIBUTE)
    if not isinstance(version, int) or version < 1:
        raise SchemaDefinitionError(f"{path}: record needs an integer {VERSION_ATTRIBUTE!r} >= 1.")
    defaults = [f.get("default") for f in raw["fields"] if f["name"] == "schema_version"]
    if defaults != [version]:
        raise SchemaDefinitionError(
            f"{path}: field 'schema_version' must exist with default {version} "
            f"(equal to {VERSION_ATTRIBUTE})."
        )
    return version


def _record_or_enum(parsed: object, path: Path) -> Schema:
    if not isinstance(parsed, dict):
        raise SchemaDefinitionError(f"{path} must define a named record or enum.")
    return parsed


@dataclass
class SchemaRegistry:
    """All known writer schemas and, per record name, the current reader schema."""

    by_fingerprint: dict[bytes, SchemaEntry]
    current: dict[str, SchemaEntry]
    # Parsed current schemas of every named type, building blocks included (for samples).
    named: dict[str, Schema]

    def entry(self, name: str) -> SchemaEntry:
        """Current entry of a top-level record, or a SchemaDefinitionError naming the fix."""
        try:
            return self.current[name]
        except KeyError:
            raise SchemaDefinitionError(
                f"{name!r} is not a top-level record: expected {AVRO_DIR}/{name}.avsc outside "
                f"{COMMON_NAMESPACE} (common types travel only inside other records)."
            ) from None

    def versions(self, name: str) -> list[SchemaEntry]:
        """All versions of one record, oldest first."""
        found = [e for e in self.by_fingerprint.values() if e.name == name]
        return sorted(found, key=lambda e: e.version)


def _load_current(avro_dir: Path) -> tuple[list[SchemaEntry], dict[str, Schema]]:
    entries: list[SchemaEntry] = []
    named: dict[str, Schema] = {}
    for path in sorted(avro_dir.glob("*.avsc")):
        raw = _read_json(path)
        name = full_name(raw)
        if path.name != f"{name}.avsc":
            raise SchemaDefinitionError(f"{path} defines {name!r}; rename it to {name}.avsc.")
        try:
            parsed = _record_or_enum(load_schema(str(path)), path)
        except (SchemaParseException, UnknownType, ValueError) as exc:
            raise SchemaDefinitionError(f"{path}: invalid Avro schema: {exc}") from exc
        named[name] = parsed
        if is_top_level(raw):
            version = _version_of(raw, path)
            fp = schema_fingerprint(parsed)
            entries.append(SchemaEntry(name, version, fp, parsed, path, current=True))
    return entries, named


def _load_history(history_dir: Path, current: dict[str, SchemaEntry]) -> list[SchemaEntry]:
    entries: list[SchemaEntry] = []
    for path in sorted(history_dir.glob("*.avsc")):
        match = _HISTORY_FILE.match(path.name)
        if match is None:
            raise SchemaDefinitionError(f"{path}: history files are named <FullName>.v<N>.avsc.")
        raw = _read_json(path)
        name, version = full_name(raw), int(match["version"])
        if name != match["name"] or _version_of(raw, path) != version:
            raise SchemaDefinitionError(f"{path}: file name does not match {name} v{version}.")
        if name not in current or version >= current[name].version:
            raise SchemaDefinitionError(
                f"{path}: history needs a current {name} with a version above {version}."
            )
        try:
            parsed = _record_or_enum(parse_schema(raw), path)
        except (SchemaParseException, UnknownType, ValueError) as exc:
            raise SchemaDefinitionError(
                f"{path}: invalid or not self-contained Avro schema (history files inline every "
                f"named type): {exc}"
            ) from exc
        entries.append(SchemaEntry(name, version, schema_fingerprint(parsed), parsed, path, False))
    return entries


def load_registry(avro_dir: Path = AVRO_DIR) -> SchemaRegistry:
    """Load and cross-check current and historical schemas under ``avro_dir``."""
    current_entries, named = _load_current(avro_dir)
    current = {e.name: e for e in current_entries}
    by_fingerprint: dict[bytes, SchemaEntry] = {}
    seen_versions: set[tuple[str, int]] = set()
    for entry in current_entries + _load_history(avro_dir / "history", current):
        other = by_fingerprint.get(entry.fingerprint)
        if other is not None:
            raise SchemaDefinitionError(
                f"{entry.path} and {other.path} have the same canonical form; a new version must "
                "change the wire schema (doc and default changes do not need a version)."
            )
        if (entry.name, entry.version) in seen_versions:
            raise SchemaDefinitionError(f"{entry.name} v{entry.version} is defined twice.")
        seen_versions.add((entry.name, entry.version))
        by_fingerprint[entry.fingerprint] = entry
    return SchemaRegistry(by_fingerprint=by_fingerprint, current=current, named=named)


@cache
def default_registry() -> SchemaRegistry:
    """The registry of the packaged schemas, checked against the generated models once."""
    registry = load_registry()
    from schemas.models import MODELS

    for name, entry in registry.current.items():
        model = MODELS.get(name)
        if model is None or entry.version != model.SCHEMA_VERSION:
            raise SchemaDefinitionError(
                f"schemas/models.py is stale for {name} v{entry.version}: run "
                "`python -m schemas.codegen`."
            )
    return registry
