"""JSON Schemas (draft 2020-12) of REFLUX's public records: what systems that do not import this
repository read from and write to Kafka (ADR 0054).

Avro stays the internal wire format; the public contract is JSON, described by the files in
``schemas/json/`` (one ``<name>.schema.json`` per record) and served by the API at
``GET /v1/schemas`` and ``GET /v1/schemas/{name}``. This module is their source: the files are
generated from it (``python -m schemas.json_schemas``; ``--check`` fails when a file is stale,
like ``schemas.codegen --check``), and each file is self-contained (its ``$ref`` only point into
its own ``$defs``), so any validator reads one file without a registry.

The schemas:

- ``outcome``: the CloudEvent on ``<prefix>.run-outcomes`` (envelope, with each ``type``'s data);
- ``outcome.run.started`` ... ``outcome.step.failed``: the ``data`` of each outcome type alone;
- ``trigger``: a plain JSON trigger on ``<prefix>.triggers`` (the Trigger record's fields);
- ``trigger.cloudevent``: a structured-mode CloudEvent on ``<prefix>.triggers``.

Compatibility: a schema of a given name only ever gains optional fields; a consumer ignores
fields it does not know (the outcome schemas are closed, ``additionalProperties: false``, so a
validator flags a field the schema does not name yet: fetch the current schema from the API).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DIALECT",
    "JSON_DIR",
    "SCHEMAS",
    "check",
    "load_schema",
    "main",
    "render",
    "schema_names",
    "write",
]

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
JSON_DIR: Final = Path(__file__).parent / "json"
SUFFIX: Final = ".schema.json"
ID_PREFIX: Final = "urn:reflux:schema:"

_NON_EMPTY: Final = {"type": "string", "minLength": 1}
# The pattern too: validators check "format" only with optional packages (jsonschema needs
# rfc3339-validator), and a timestamp a consumer cannot parse must not pass silently.
_RFC3339: Final = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$",
}

_ERROR: Final = {
    "type": "object",
    "description": "An error as the run log records it.",
    "required": ["error_class", "message", "retryable"],
    "additionalProperties": False,
    "properties": {
        "error_class": {
            "type": "string",
            "description": "Stable machine-readable class, e.g. 'HttpTimeout'.",
        },
        "message": {"type": "string", "description": "Human-readable message."},
        "retryable": {"type": "boolean", "description": "Whether another attempt may succeed."},
    },
}

_PAYLOAD_REF: Final = {
    "type": "object",
    "description": (
        "Claim check: outputs too large to inline, stored in the object store (S3 API). Read "
        "the object at `uri` and check `size_bytes` and `sha256`."
    ),
    "required": ["uri", "size_bytes", "sha256", "content_type"],
    "additionalProperties": False,
    "properties": {
        "uri": {
            "type": "string",
            "description": "Object URI, e.g. 's3://reflux/outputs/<sha256>'.",
        },
        "size_bytes": {"type": "integer", "minimum": 0},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "content_type": {"type": "string"},
    },
}


def _data(
    title: str, description: str, status: list[str], extra: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    """The ``data`` of one outcome type: the fields every outcome has, plus ``extra``."""
    return {
        "title": title,
        "description": description,
        "type": "object",
        "required": [
            "run_id",
            "seq",
            "workflow_id",
            "workflow_version",
            "tenant",
            "status",
            *required,
        ],
        "additionalProperties": False,
        "properties": {
            "run_id": {**_NON_EMPTY, "description": "The run (also the CloudEvent subject)."},
            "seq": {
                "type": "integer",
                "minimum": 0,
                "description": "Position of the run event in the run's log (gap-free per run).",
            },
            "workflow_id": {"type": "string"},
            "workflow_version": {"type": "integer", "minimum": 0},
            "tenant": {"type": "string"},
            "status": {
                "enum": status,
                "description": "The run's status after the event (step.failed: the attempt's).",
            },
            **extra,
        },
    }


_STEP_ID: Final = {"type": "string", "description": "The step."}

OUTCOME_DATA: Final[dict[str, dict[str, Any]]] = {
    "reflux.run.started": _data(
        "reflux.run.started data",
        "A run started (RunStarted).",
        ["running"],
        {
            "started_by": {
                "type": "object",
                "description": "What started the run: 'api', 'trigger:<source>', 'replay', ...",
                "required": ["source", "source_key", "idempotency_key"],
                "additionalProperties": False,
                "properties": {
                    "source": {"type": "string"},
                    "source_key": {"type": ["string", "null"]},
                    "idempotency_key": {"type": ["string", "null"]},
                },
            },
            "parent_run_id": {
                "type": ["string", "null"],
                "description": "The parent run of a child run (meta.workflow, meta.map).",
            },
        },
        ["started_by", "parent_run_id"],
    ),
    "reflux.run.succeeded": {
        **_data(
            "reflux.run.succeeded data",
            "A run succeeded (RunSucceeded): its outputs inline, or claim-checked.",
            ["succeeded"],
            {
                "duration_ms": {"type": "integer", "minimum": 0},
                "outputs": {"description": "The run's outputs (any JSON)."},
                "outputs_ref": {"$ref": "#/$defs/PayloadRef"},
            },
            ["duration_ms"],
        ),
        "oneOf": [{"required": ["outputs"]}, {"required": ["outputs_ref"]}],
    },
    "reflux.run.failed": _data(
        "reflux.run.failed data",
        "A run failed (RunFailed).",
        ["failed"],
        {
            "error": {"$ref": "#/$defs/Error"},
            "step_id": {
                "type": ["string", "null"],
                "description": "The step that failed the run; null for a run deadline or an "
                "outputs template.",
            },
        },
        ["error", "step_id"],
    ),
    "reflux.run.cancelled": _data(
        "reflux.run.cancelled data",
        "A run was cancelled (RunCancelled); error.error_class is 'RunCancelled'.",
        ["cancelled"],
        {
            "error": {"$ref": "#/$defs/Error"},
            "reason": {"type": ["string", "null"]},
            "requested_by": {"type": ["string", "null"]},
        },
        ["error", "reason", "requested_by"],
    ),
    "reflux.step.failed": _data(
        "reflux.step.failed data",
        "An attempt of a step failed (StepFailed) or timed out (StepTimedOut).",
        ["failed", "timed_out"],
        {
            "error": {"$ref": "#/$defs/Error"},
            "step_id": _STEP_ID,
            "node": {"type": "string", "description": "The step's node, e.g. 'http.request'."},
            "attempt": {"type": "integer", "minimum": 1},
            "retrying": {
                "type": "boolean",
                "description": "Another attempt was scheduled (false: the run fails, unless it "
                "was already finishing).",
            },
        },
        ["error", "step_id", "node", "attempt", "retrying"],
    ),
}

_DEFS: Final = {"Error": _ERROR, "PayloadRef": _PAYLOAD_REF}


def _uses(schema: Any, name: str) -> bool:
    return f'"#/$defs/{name}"' in json.dumps(schema)


def _with_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with the shared ``$defs`` it references (so the file is self-contained)."""
    defs = {name: copy.deepcopy(d) for name, d in _DEFS.items() if _uses(schema, name)}
    return {**schema, "$defs": defs} if defs else schema


def _outcome() -> dict[str, Any]:
    defs: dict[str, Any] = {name: copy.deepcopy(d) for name, d in _DEFS.items()}
    branches = []
    for kind, data in OUTCOME_DATA.items():
        ref = kind.replace("reflux.", "").replace(".", "_")
        defs[ref] = copy.deepcopy(data)
        branches.append(
            {
                "if": {"properties": {"type": {"const": kind}}, "required": ["type"]},
                "then": {"properties": {"data": {"$ref": f"#/$defs/{ref}"}}},
            }
        )
    return {
        "title": "REFLUX run outcome (CloudEvents 1.0, structured mode)",
        "description": (
            "A record of <prefix>.run-outcomes: key = run id, value = this JSON, header "
            "content-type: application/cloudevents+json. Written in the scheduler's Kafka "
            "transaction with the run event it describes (read it with "
            "isolation.level=read_committed); id = the run event's event_id (dedupe on it)."
        ),
        "type": "object",
        "required": [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            "data",
        ],
        "additionalProperties": False,
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {**_NON_EMPTY, "description": "The run event's event_id."},
            "source": {
                "type": "string",
                "pattern": "^reflux://[a-zA-Z0-9._-]+$",
                "description": "reflux://<topic prefix> of the deployment.",
            },
            "type": {"enum": list(OUTCOME_DATA)},
            "subject": {**_NON_EMPTY, "description": "The run id (= data.run_id, the key)."},
            "time": {**_RFC3339, "description": "When the run event occurred (UTC)."},
            "datacontenttype": {"const": "application/json"},
            "data": {"type": "object"},
        },
        "allOf": branches,
        "$defs": defs,
    }


# What processors/triggers/formats.py accepts as text (ids, keys, attributes): a non-empty
# string without control characters (they become Kafka keys and run ids).
_TEXT: Final = {"type": "string", "minLength": 1, "pattern": "^[^\\u0000-\\u001F\\u007F]+$"}


def _trigger() -> dict[str, Any]:
    """``processors.triggers.formats.plain_trigger`` (ADR 0053)."""
    return {
        "title": "REFLUX trigger (plain JSON)",
        "description": (
            "A JSON object on <prefix>.triggers with the Trigger record's fields and no "
            "`specversion` (that would make it a CloudEvent): starts `workflow_id` with "
            "`payload` as its inputs (an object becomes the inputs, any other value "
            "inputs.payload); the run's idempotency key is `idempotency_key`."
        ),
        "type": "object",
        "required": ["source", "workflow_id", "idempotency_key"],
        "additionalProperties": False,
        "properties": {
            "source": {**_TEXT, "description": "Source system, e.g. 'erp', 'webhook'."},
            "source_key": {
                "anyOf": [_TEXT, {"type": "null"}],
                "description": "Key within the source; default: the Kafka key, else the "
                "workflow id.",
            },
            "workflow_id": {**_TEXT, "description": "The workflow to start."},
            "workflow_version": {
                "type": ["integer", "null"],
                "minimum": 1,
                "description": "null or absent: the latest version (or the routed one).",
            },
            "payload": {"description": "The external event's payload (any JSON); default {}."},
            "idempotency_key": {
                **_TEXT,
                "description": "e.g. the delivery id; a second trigger with it starts no run.",
            },
        },
    }


def _cloudevent_trigger() -> dict[str, Any]:
    """``processors.triggers.formats.cloud_event_from_json`` (ADR 0053)."""
    optional = {"anyOf": [_TEXT, {"type": "null"}]}
    return {
        "title": "REFLUX trigger (CloudEvents 1.0, structured mode)",
        "description": (
            "A CloudEvent on <prefix>.triggers (header content-type: "
            "application/cloudevents+json, or any JSON object with `specversion`). The "
            "workflow is the one REFLUX_TRIGGER_TYPE_MAP maps `type` to, else `subject`; "
            "`data` (or `data_base64`) is the payload; the idempotency key is `source` + `id`. "
            "Binary mode (ce_* headers, the data as the value) carries the same attributes in "
            "headers and is not described by a JSON Schema."
        ),
        "type": "object",
        "required": ["specversion", "id", "source", "type"],
        # CloudEvents names attributes with lowercase letters and digits (extensions too).
        "propertyNames": {"pattern": "^(data_base64|[a-z0-9]{1,20})$"},
        "properties": {
            "specversion": {"const": "1.0"},
            "id": _TEXT,
            "source": _TEXT,
            "type": _TEXT,
            "subject": {**optional, "description": "The workflow id to start."},
            "time": {"anyOf": [_RFC3339, {"type": "null"}]},
            "datacontenttype": optional,
            "dataschema": optional,
            "data": {"description": "The payload: JSON for a JSON datacontenttype, else text."},
            "data_base64": {"type": "string", "contentEncoding": "base64"},
        },
        "not": {"required": ["data", "data_base64"]},
    }


def _named(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"$schema": DIALECT, "$id": f"{ID_PREFIX}{name}", **schema}


def render() -> dict[str, dict[str, Any]]:
    """Every published schema by name (the file is ``schemas/json/<name>.schema.json``)."""
    out = {"outcome": _named("outcome", _outcome())}
    for kind, data in OUTCOME_DATA.items():
        name = "outcome." + kind.removeprefix("reflux.")
        out[name] = _named(name, _with_defs(copy.deepcopy(data)))
    out["trigger"] = _named("trigger", _trigger())
    out["trigger.cloudevent"] = _named("trigger.cloudevent", _cloudevent_trigger())
    return out


SCHEMAS: Final = render()


def _text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def schema_names() -> list[str]:
    """The published schemas' names, sorted."""
    return sorted(SCHEMAS)


def load_schema(name: str) -> dict[str, Any]:
    """One published schema as the file holds it; ``KeyError`` for an unknown name."""
    if name not in SCHEMAS:
        raise KeyError(name)
    loaded: dict[str, Any] = json.loads((JSON_DIR / f"{name}{SUFFIX}").read_text())
    return loaded


def write(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in SCHEMAS.items():
        path = directory / f"{name}{SUFFIX}"
        path.write_text(_text(schema))
        written.append(path)
    return written


def check(directory: Path = JSON_DIR) -> list[str]:
    """What is stale: files that differ from the source, are missing, or are not generated."""
    problems = []
    for name, schema in SCHEMAS.items():
        path = directory / f"{name}{SUFFIX}"
        if not path.exists():
            problems.append(f"{path} is missing")
        elif path.read_text() != _text(schema):
            problems.append(f"{path} differs from schemas/json_schemas.py")
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        if path.name.removesuffix(SUFFIX) not in SCHEMAS:
            problems.append(f"{path} is not generated by schemas/json_schemas.py")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if a file is stale")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run: python -m schemas.json_schemas", file=sys.stderr)
        return 1 if problems else 0
    for path in write():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
