"""Generate ``schemas/models.py`` (pydantic v2) from ``schemas/avro/*.avsc``.

The .avsc files are the source of truth; the models are derived, never hand-synced. A unit test
and ``python -m schemas.codegen --check`` fail when models.py is stale.

Mapping: records -> frozen models with ``AVRO_NAME`` / ``SCHEMA_VERSION``; enums -> ``StrEnum``;
``"reflux.json": true`` strings -> ``Json`` (any JSON value); ``timestamp-millis`` -> aware
``datetime``; ``["null", X]`` -> ``X | None = None``. Field ``doc`` becomes the attribute docstring
(pydantic turns it into the field description). ``"reflux.default_factory"`` on a field gives the
Python model a convenience default (``uuid4``, ``now``) that the wire schema cannot express.

Envelopes: records of one kind start with the same fields (every run event with ``event_id``,
``run_id``, ``seq``, ``occurred_at``, ``schema_version``, ``causation_id``). :data:`ENVELOPES`
names those groups; each becomes one base class holding the shared fields, and its records
inherit them instead of repeating them. An envelope's fields must be the first fields of every
member, defined identically (type, default, doc), or generation fails: the base class is then an
exact prefix of each record, so a model's field order stays the Avro field order (JSON dumps,
such as the traces topic and the projections, follow the model's order). The one allowed
difference is the default of ``schema_version`` (a member at version 2 while the others are at
1): such a member re-declares that field with its own default, in place (pydantic keeps an
overridden field at its inherited position).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from schemas.errors import SchemaDefinitionError
from schemas.registry import AVRO_DIR, VERSION_ATTRIBUTE, full_name

MODELS_PATH = Path(__file__).parent / "models.py"
_PRIMITIVES = {
    "string": "str",
    "int": "int",
    "long": "int",
    "boolean": "bool",
    "double": "float",
    "float": "float",
    "bytes": "bytes",
}
_FACTORIES = {"uuid4": "new_id", "now": "utc_now"}
_WIDTH = 100
_VERSION_FIELD = "schema_version"

Raw = dict[str, Any]


@dataclass(frozen=True)
class Envelope:
    """A group of records that start with the same fields, generated as one base class."""

    class_name: str
    doc: str
    namespaces: tuple[str, ...]
    """Every record in these namespaces belongs to the group (and must carry the fields)."""
    fields: tuple[str, ...]
    """The shared leading fields, in Avro order."""


ENVELOPES: Final = (
    Envelope(
        "StandaloneEnvelope",
        "Envelope of a record that belongs to no run (alerts, diagnoses, dead letters, "
        "mutations, node catalog entries, replays, triggers, workflow registrations): no "
        "run_id, and seq stays -1.",
        (
            "reflux.alerts",
            "reflux.diagnoses",
            "reflux.dlq",
            "reflux.mutations",
            "reflux.nodes",
            "reflux.replays",
            "reflux.triggers",
            "reflux.workflows",
        ),
        ("event_id", "seq", "occurred_at", "schema_version"),
    ),
    Envelope(
        "RunCommandEnvelope",
        "Envelope of a command to a run (reflux.commands): not positioned in the run log "
        "(seq -1), deduplicated on command_id, with who asked and why for the audit trail.",
        ("reflux.commands",),
        (
            "event_id",
            "run_id",
            "seq",
            "occurred_at",
            "schema_version",
            "command_id",
            "reason",
            "requested_by",
        ),
    ),
    Envelope(
        "RunEventEnvelope",
        "Envelope of an event in a run log (reflux.events): positioned by seq, and pointing at "
        "the command, invocation or timer that caused it.",
        ("reflux.events",),
        ("event_id", "run_id", "seq", "occurred_at", "schema_version", "causation_id"),
    ),
)
"""The envelope groups. Records outside them (common types, node invocations, node results,
traces) declare every field themselves: their ``seq`` means something different in each, and a
trace's ``schema_version`` defaults to 2."""


class _Generator:
    def __init__(self, raws: list[Raw]) -> None:
        self.by_name = {full_name(r): r for r in raws}
        self.class_of: dict[str, str] = {}
        for name in self.by_name:
            short = name.rsplit(".", 1)[-1]
            if short in self.class_of.values():
                raise SchemaDefinitionError(f"Two Avro types share the class name {short!r}.")
            self.class_of[name] = short
        self.envelope_of = self._envelope_members()

    def _envelope_members(self) -> dict[str, Envelope]:
        """Which envelope each record belongs to, checked against the schemas."""
        envelope_of: dict[str, Envelope] = {}
        for envelope in ENVELOPES:
            if envelope.class_name in self.class_of.values():
                raise SchemaDefinitionError(
                    f"Envelope {envelope.class_name} has the class name of an Avro type."
                )
            members = [
                name
                for name, raw in self.by_name.items()
                if raw["type"] == "record" and name.rsplit(".", 1)[0] in envelope.namespaces
            ]
            if not members:
                raise SchemaDefinitionError(
                    f"Envelope {envelope.class_name} has no record in {envelope.namespaces}."
                )
            for name in members:
                if name in envelope_of:
                    raise SchemaDefinitionError(
                        f"{name} is in two envelopes: {envelope_of[name].class_name} and "
                        f"{envelope.class_name}."
                    )
                self._check_member(envelope, name, like=members[0])
                envelope_of[name] = envelope
        return envelope_of

    def _check_member(self, envelope: Envelope, name: str, like: str) -> None:
        """``name`` starts with the envelope's fields, defined as in the member ``like``."""
        leading = tuple(f["name"] for f in self.by_name[name]["fields"])
        if leading[: len(envelope.fields)] != envelope.fields:
            raise SchemaDefinitionError(
                f"Expected {name} to start with the {envelope.class_name} fields "
                f"{list(envelope.fields)}, but its fields are {list(leading)}."
            )
        for index, field_name in enumerate(envelope.fields):
            if self.field_source(name, index, versioned=False) != self.field_source(
                like, index, versioned=False
            ):
                raise SchemaDefinitionError(
                    f"Expected field {field_name!r} to be defined alike in every "
                    f"{envelope.class_name} record, but {like} and {name} differ "
                    "(type, default or doc)."
                )

    def field_source(self, record: str, index: int, *, versioned: bool = True) -> list[str]:
        """The class-body lines of a record's ``index``-th field: annotation, default, doc.

        ``versioned=False`` leaves out the default of ``schema_version`` (it is the record's own
        version, so it may differ between the members of one envelope)."""
        namespace = record.rsplit(".", 1)[0]
        fld = self.by_name[record]["fields"][index]
        py_type = self.py_type(fld["type"], namespace, bool(fld.get("reflux.json")))
        default = self.default(fld, py_type, namespace)
        if not versioned and fld["name"] == _VERSION_FIELD:
            default = None
        line = f"    {fld['name']}: {py_type}" + ("" if default is None else f" = {default}")
        return [line] + (_docstring(fld["doc"], "    ") if "doc" in fld else [])

    def resolve(self, ref: str, namespace: str) -> str:
        name = ref if "." in ref else f"{namespace}.{ref}"
        if name not in self.by_name:
            raise SchemaDefinitionError(f"Unknown type {ref!r} (no {AVRO_DIR}/{name}.avsc).")
        return name

    def py_type(self, avro: Any, namespace: str, is_json: bool) -> str:
        if isinstance(avro, list):
            branches = [b for b in avro if b != "null"]
            if len(avro) != 2 or len(branches) != 1:
                raise SchemaDefinitionError(f"Only ['null', X] unions are supported, got {avro}.")
            if is_json:
                return "OptionalJson"
            return f"{self.py_type(branches[0], namespace, is_json)} | None"
        if isinstance(avro, dict):
            kind = avro["type"]
            if avro.get("logicalType") == "timestamp-millis" and kind == "long":
                return "TimestampMillis"
            if "logicalType" in avro:
                raise SchemaDefinitionError(f"Unsupported logical type in {avro}.")
            if kind == "array":
                return f"list[{self.py_type(avro['items'], namespace, False)}]"
            if kind == "map":
                return f"dict[str, {self.py_type(avro['values'], namespace, False)}]"
            if kind in _PRIMITIVES:
                return self.py_type(kind, namespace, is_json)
            raise SchemaDefinitionError(
                f"Define named types in their own file, not inline: {avro.get('name')}."
            )
        if avro == "string" and is_json:
            return "Json"
        if avro in _PRIMITIVES:
            return _PRIMITIVES[avro]
        return self.class_of[self.resolve(avro, namespace)]

    def default(self, fld: Raw, py_type: str, namespace: str) -> str | None:
        factory = fld.get("reflux.default_factory")
        if factory is not None:
            if factory not in _FACTORIES:
                raise SchemaDefinitionError(f"Unknown reflux.default_factory {factory!r}.")
            return f"Field(default_factory={_FACTORIES[factory]})"
        if "default" not in fld:
            return None
        value = fld["default"]
        if value == []:
            return "Field(default_factory=list)"
        if value == {}:
            return "Field(default_factory=dict)"
        if isinstance(value, str) and isinstance(fld["type"], str) and fld["type"] in self.by_name:
            enum_name = self.resolve(fld["type"], namespace)
            return f"{self.class_of[enum_name]}.{value.upper()}"
        if isinstance(value, str):
            return json.dumps(value)
        if value is None or isinstance(value, bool | int | float):
            return repr(value)
        raise SchemaDefinitionError(f"Unsupported default {value!r} for field {fld['name']}.")

    def deps(self, raw: Raw) -> set[str]:
        found: set[str] = set()

        def walk(avro: Any) -> None:
            if isinstance(avro, list):
                for branch in avro:
                    walk(branch)
            elif isinstance(avro, dict):
                walk(avro.get("items"))
                walk(avro.get("values"))
            elif isinstance(avro, str) and avro not in _PRIMITIVES and avro != "null":
                found.add(self.resolve(avro, raw.get("namespace", "")))

        for fld in raw.get("fields", []):
            walk(fld["type"])
        return found

    def ordered(self) -> list[str]:
        """Enums first, then records after everything they reference (stable by name)."""
        done: list[str] = []

        def visit(name: str, stack: tuple[str, ...]) -> None:
            if name in done:
                return
            if name in stack:
                raise SchemaDefinitionError(f"Recursive types are not supported: {stack}.")
            for dep in sorted(self.deps(self.by_name[name])):
                visit(dep, (*stack, name))
            done.append(name)

        enums = sorted(n for n, r in self.by_name.items() if r["type"] == "enum")
        common_first = sorted(self.by_name, key=lambda n: (not n.startswith("reflux.common."), n))
        for name in enums + common_first:
            visit(name, ())
        return done


def _docstring(text: str, indent: str) -> list[str]:
    lines = textwrap.wrap(text, _WIDTH - len(indent) - 6) or [""]
    if len(lines) == 1:
        return [f'{indent}"""{lines[0]}"""']
    return [f'{indent}"""{lines[0]}', *(f"{indent}{line}" for line in lines[1:]), f'{indent}"""']


def _enum_source(gen: _Generator, raw: Raw) -> list[str]:
    out = [f"class {gen.class_of[full_name(raw)]}(StrEnum):"]
    out += _docstring(raw.get("doc", full_name(raw)), "    ")
    out.append("")
    out += [f'    {symbol.upper()} = "{symbol}"' for symbol in raw["symbols"]]
    return out


def _envelope_source(gen: _Generator, envelope: Envelope, first_member: str) -> list[str]:
    out = [f"class {envelope.class_name}(RefluxRecord):"]
    out += _docstring(envelope.doc, "    ")
    for index in range(len(envelope.fields)):
        out += ["", *gen.field_source(first_member, index)]
    return out


def _record_source(gen: _Generator, raw: Raw, base_member: str | None = None) -> list[str]:
    """A record's class; ``base_member`` is the record its envelope base was generated from."""
    name = full_name(raw)
    envelope = gen.envelope_of.get(name)
    base = "RefluxRecord" if envelope is None else envelope.class_name
    out = [f"class {gen.class_of[name]}({base}):"]
    out += _docstring(raw.get("doc", name), "    ")
    out += [
        "",
        f'    AVRO_NAME: ClassVar[str] = "{name}"',
        f"    SCHEMA_VERSION: ClassVar[int] = {raw.get(VERSION_ATTRIBUTE, 1)}",
    ]
    inherited = 0 if envelope is None else len(envelope.fields)
    if envelope is not None and base_member is not None:
        # A member at another version than the base re-declares schema_version's default.
        index = envelope.fields.index(_VERSION_FIELD)
        own = gen.field_source(name, index)
        if own != gen.field_source(base_member, index):
            out += ["", *own]
    for index in range(inherited, len(raw["fields"])):
        out += ["", *gen.field_source(name, index)]
    return out


HEADER = '''\
"""REFLUX record models. GENERATED by `python -m schemas.codegen` from schemas/avro/ - do not edit.

Change the .avsc files instead and regenerate; a unit test fails when this file is stale.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from schemas.base import Json, OptionalJson, RefluxRecord, TimestampMillis, new_id, utc_now
'''


def generate(avro_dir: Path = AVRO_DIR) -> str:
    """Return the source of models.py for the schemas in ``avro_dir``."""
    raws = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(avro_dir.glob("*.avsc"))]
    gen = _Generator(raws)
    blocks: list[list[str]] = []
    emitted: set[str] = set()
    base_of: dict[str, str] = {}
    for name in gen.ordered():
        raw = gen.by_name[name]
        envelope = gen.envelope_of.get(name)
        # Right before its first member: by then every type its fields use is defined.
        if envelope is not None and envelope.class_name not in emitted:
            blocks.append(_envelope_source(gen, envelope, name))
            emitted.add(envelope.class_name)
            base_of[envelope.class_name] = name
        if raw["type"] == "enum":
            blocks.append(_enum_source(gen, raw))
        else:
            base = base_of.get(envelope.class_name) if envelope is not None else None
            blocks.append(_record_source(gen, raw, base))
    records = [n for n in gen.ordered() if gen.by_name[n]["type"] == "record"]
    registry = ["MODELS: dict[str, type[RefluxRecord]] = {"]
    registry += [f'    "{n}": {gen.class_of[n]},' for n in records]
    registry += ["}", '"""Every record model by full Avro name (envelopes are not records)."""']
    names = ["MODELS", *sorted([*gen.class_of.values(), *emitted])]
    all_ = ["__all__ = [", *(f'    "{n}",' for n in names), "]"]
    body = "\n\n\n".join("\n".join(b) for b in [*blocks, registry])
    return HEADER + "\n\n" + body + "\n\n" + "\n".join(all_) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rewrite models.py, or with --check report whether it is stale."""
    parser = argparse.ArgumentParser(prog="python -m schemas.codegen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if models.py is stale")
    args = parser.parse_args(argv)
    fresh = generate()
    current = MODELS_PATH.read_text(encoding="utf-8") if MODELS_PATH.exists() else ""
    if args.check:
        if current != fresh:
            print(f"{MODELS_PATH} is stale: run `python -m schemas.codegen`.", file=sys.stderr)
            return 1
        return 0
    if current != fresh:
        MODELS_PATH.write_text(fresh, encoding="utf-8")
        print(f"wrote {MODELS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
