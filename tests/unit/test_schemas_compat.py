"""Schema evolution: golden fixtures, history resolution, registry checks, stale codegen."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer

from schemas import decode, encode, models
from schemas.codegen import ENVELOPES, MODELS_PATH, generate, main
from schemas.errors import SchemaDefinitionError
from schemas.fixtures import FIXTURES_DIR, fixture_path
from schemas.models import MODELS
from schemas.registry import AVRO_DIR, SchemaEntry, default_registry, full_name, load_registry
from schemas.samples import sample_datum

ENTRIES = sorted(default_registry().by_fingerprint.values(), key=lambda e: (e.name, e.version))
HISTORICAL = [e for e in ENTRIES if not e.current]


def _id(entry: SchemaEntry) -> str:
    return f"{entry.name}.v{entry.version}"


def test_there_is_history_to_check() -> None:
    assert HISTORICAL, "expected at least one historical schema version"


@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
def test_every_schema_version_has_a_golden_fixture(entry: SchemaEntry) -> None:
    path = fixture_path(entry.name, entry.version)
    assert path.exists(), f"missing {path}: run `python -m schemas.fixtures`"
    written_with = path.read_bytes()[2:10]
    assert written_with == entry.fingerprint, (
        f"{entry.path.name} changed its wire schema without a new version. Restore it, run "
        f"`python -m schemas.fixtures snapshot {entry.name}`, then edit, bump reflux.version "
        "and the schema_version default, and run `python -m schemas.codegen` and "
        "`python -m schemas.fixtures`."
    )


@pytest.mark.parametrize("path", sorted(FIXTURES_DIR.glob("*.bin")), ids=lambda p: p.name)
def test_every_fixture_decodes_with_current_readers(path: Path) -> None:
    record = decode(path.read_bytes())
    name, version = path.name.removesuffix(".bin").rsplit(".v", 1)
    assert name == record.AVRO_NAME
    assert getattr(record, "schema_version") == int(version)  # noqa: B009
    again = decode(encode(record))
    assert again == record.model_copy(update={"schema_version": record.SCHEMA_VERSION})


@pytest.mark.parametrize("old", HISTORICAL, ids=_id)
def test_current_schema_reads_every_historical_version(old: SchemaEntry) -> None:
    import io

    buffer = io.BytesIO()
    schemaless_writer(buffer, old.schema, sample_datum(old.schema))
    buffer.seek(0)
    current = default_registry().current[old.name]
    datum = schemaless_reader(buffer, old.schema, current.schema)
    assert isinstance(datum, dict)
    MODELS[old.name].from_avro(datum)


def test_models_py_is_generated_not_hand_edited() -> None:
    assert MODELS_PATH.read_text(encoding="utf-8") == generate(), (
        "schemas/models.py is stale: run `python -m schemas.codegen`"
    )
    assert main(["--check"]) == 0


def test_model_fields_follow_the_avro_field_order() -> None:
    # JSON dumps (the traces topic, the projections' event rows) follow the model's field order;
    # envelope base classes hold a record's leading fields, so the two orders stay the same.
    for path in sorted(AVRO_DIR.glob("*.avsc")):
        raw = json.loads(path.read_text())
        if raw["type"] == "record":
            expected = [f["name"] for f in raw["fields"]]
            assert list(MODELS[full_name(raw)].model_fields) == expected, full_name(raw)


def test_envelope_members_inherit_the_envelope_fields() -> None:
    for envelope in ENVELOPES:
        base = getattr(models, envelope.class_name)
        assert tuple(base.model_fields) == envelope.fields
        members = [
            m for m in MODELS.values() if m.AVRO_NAME.rsplit(".", 1)[0] in envelope.namespaces
        ]
        assert members, envelope.class_name
        for model in members:
            assert issubclass(model, base), model.AVRO_NAME
            redeclared = set(envelope.fields) & set(vars(model).get("__annotations__", {}))
            # The one exception: a member at another version than the base re-declares
            # schema_version, with its own version as the default and nothing else changed.
            if redeclared:
                assert redeclared == {"schema_version"}, (model.AVRO_NAME, redeclared)
                own = model.model_fields["schema_version"]
                inherited = base.model_fields["schema_version"]
                assert own.default == model.SCHEMA_VERSION != inherited.default, model.AVRO_NAME
                assert own.description == inherited.description, model.AVRO_NAME
            assert list(model.model_fields)[: len(envelope.fields)] == list(envelope.fields)


def test_every_model_defaults_schema_version_to_its_own_version() -> None:
    for model in MODELS.values():
        if model.AVRO_NAME.startswith("reflux.common."):
            continue  # building blocks, not versioned records
        field = model.model_fields.get("schema_version")
        assert field is not None and field.default == model.SCHEMA_VERSION, model.AVRO_NAME


def _edit_schema(avro: Path, name: str, edit: Any) -> None:
    path = avro / f"{name}.avsc"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def test_codegen_rejects_an_envelope_field_defined_differently(tmp_path: Path) -> None:
    avro = _copy_avro(tmp_path)

    def redoc(raw: dict[str, Any]) -> None:
        next(f for f in raw["fields"] if f["name"] == "causation_id")["doc"] = "Something else."

    _edit_schema(avro, "reflux.events.StepSkipped", redoc)
    with pytest.raises(SchemaDefinitionError, match="'causation_id' to be defined alike"):
        generate(avro)


def test_codegen_rejects_a_member_without_the_envelope_fields(tmp_path: Path) -> None:
    avro = _copy_avro(tmp_path)

    def reorder(raw: dict[str, Any]) -> None:
        raw["fields"].insert(0, raw["fields"].pop(5))  # command_id first

    _edit_schema(avro, "reflux.commands.PauseRun", reorder)
    with pytest.raises(SchemaDefinitionError, match="to start with the RunCommandEnvelope fields"):
        generate(avro)


def _copy_avro(tmp_path: Path) -> Path:
    target = tmp_path / "avro"
    shutil.copytree(AVRO_DIR, target)
    return target


def _trace_v1(avro: Path) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((avro / "history" / "reflux.traces.Trace.v1.avsc").read_text())
    return raw


def test_registry_rejects_a_version_that_does_not_change_the_wire_schema(tmp_path: Path) -> None:
    avro = _copy_avro(tmp_path)
    current = json.loads((avro / "reflux.commands.CancelRun.avsc").read_text())
    current["reflux.version"] = 2
    for fld in current["fields"]:
        if fld["name"] == "schema_version":
            fld["default"] = 2
    (avro / "reflux.commands.CancelRun.avsc").write_text(json.dumps(current))
    old = dict(current, **{"reflux.version": 1})
    old["fields"] = [
        dict(f, default=1) if f["name"] == "schema_version" else f for f in current["fields"]
    ]
    (avro / "history" / "reflux.commands.CancelRun.v1.avsc").write_text(json.dumps(old))
    with pytest.raises(SchemaDefinitionError, match="same canonical form"):
        load_registry(avro)


def test_registry_rejects_history_at_or_above_the_current_version(tmp_path: Path) -> None:
    avro = _copy_avro(tmp_path)
    (avro / "history" / "reflux.traces.Trace.v1.avsc").rename(
        avro / "history" / "reflux.traces.Trace.v2.avsc"
    )
    with pytest.raises(SchemaDefinitionError, match="does not match"):
        load_registry(avro)


def test_registry_rejects_history_of_an_unknown_record(tmp_path: Path) -> None:
    avro = _copy_avro(tmp_path)
    raw = _trace_v1(avro)
    raw["name"] = "reflux.traces.Gone"
    (avro / "history" / "reflux.traces.Gone.v1.avsc").write_text(json.dumps(raw))
    with pytest.raises(SchemaDefinitionError, match=r"needs a current reflux.traces.Gone"):
        load_registry(avro)


def test_registry_rejects_a_misnamed_schema_file(tmp_path: Path) -> None:
    avro = _copy_avro(tmp_path)
    (avro / "reflux.commands.CancelRun.avsc").rename(avro / "CancelRun.avsc")
    with pytest.raises(SchemaDefinitionError, match="rename it"):
        load_registry(avro)
