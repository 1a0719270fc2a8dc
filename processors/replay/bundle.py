"""A run bundle: one file holding everything another REFLUX needs to replay a run identically
(``reflux runs export RUN -o run.reflux``, ``reflux runs import run.reflux``; ADR 0028).

Format ``reflux.run-bundle`` version 1: gzip'd JSON lines, the first one the manifest.

- ``{"kind": "manifest", "format", "format_version", "run_id", "runs", "exported_at",
  "counts", "sha256"}``: ``runs`` the run ids in the bundle (the run, then its child runs when
  exported ``--with-children``), ``sha256`` the digest of every line after the manifest (each
  with its newline), so a damaged or edited file is refused as a whole.
- ``{"kind": "workflow", "workflow_id", "version", "definition"}``: the registered versions the
  runs used (``RunStarted``/``RunRebound``/child requests name them; the definition as
  registered).
- ``{"kind": "event", "run_id", "seq", "type", "schema_version", "event"}``: the run log, one
  record per event, ``type`` the Avro full name and ``event`` the record in its JSON form
  (``model_dump(mode="json")``), which the generated models read back losslessly; the
  ``schema_version`` says which version of the record's Avro schema wrote it.
- ``{"kind": "payload", "uri", "sha256", "size_bytes", "content_type", "data"}``: each
  claim-checked payload the events reference (``PayloadRef``), base64; its digest is checked.

Pure: bytes in, bytes out (the edges read runs, definitions and blobs and write them).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from foundation.errors import NonRetryableError
from processors.replay.explain import UnknownEventError, event_from_json
from processors.scheduler.evolve import EvolveError, fold
from schemas.models import (
    ChildRunRequested,
    MapChildEnded,
    MapStarted,
    PayloadRef,
    RunRebound,
    RunStarted,
)
from schemas.run_log import RunEvent

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "Bundle",
    "BundleError",
    "BundlePayload",
    "BundleWorkflow",
    "child_run_ids",
    "payload_refs",
    "read_bundle",
    "workflows_used",
    "write_bundle",
]

BUNDLE_FORMAT: Final = "reflux.run-bundle"
BUNDLE_VERSION: Final = 1


class BundleError(NonRetryableError):
    """A bundle that cannot be read: the message names the line and field."""

    error_class = "BundleError"


@dataclass(frozen=True, slots=True)
class BundleWorkflow:
    workflow_id: str
    version: int
    definition: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BundlePayload:
    uri: str
    sha256: str
    size_bytes: int
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Bundle:
    run_id: str
    events: Mapping[str, Sequence[RunEvent]]
    """Per run id (the run first, then children), in seq order."""
    workflows: Sequence[BundleWorkflow] = ()
    payloads: Sequence[BundlePayload] = ()
    exported_at: datetime | None = None
    manifest: Mapping[str, Any] = field(default_factory=dict)

    @property
    def runs(self) -> list[str]:
        return list(self.events)


def write_bundle(bundle: Bundle) -> bytes:
    """The bundle as one gzip'd JSON-lines file (deterministic for the same content)."""
    lines: list[bytes] = []
    for wf in sorted(bundle.workflows, key=lambda w: (w.workflow_id, w.version)):
        lines.append(
            _line(
                {
                    "kind": "workflow",
                    "workflow_id": wf.workflow_id,
                    "version": wf.version,
                    "definition": wf.definition,
                }
            )
        )
    for run_id, events in bundle.events.items():
        for event in events:
            lines.append(
                _line(
                    {
                        "kind": "event",
                        "run_id": run_id,
                        "seq": event.seq,
                        "type": event.AVRO_NAME,
                        "schema_version": event.schema_version,
                        "event": event.model_dump(mode="json"),
                    }
                )
            )
    for p in sorted(bundle.payloads, key=lambda p: p.uri):
        lines.append(
            _line(
                {
                    "kind": "payload",
                    "uri": p.uri,
                    "sha256": p.sha256,
                    "size_bytes": p.size_bytes,
                    "content_type": p.content_type,
                    "data": base64.b64encode(p.data).decode("ascii"),
                }
            )
        )
    body = b"".join(lines)
    manifest = {
        "kind": "manifest",
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "run_id": bundle.run_id,
        "runs": bundle.runs,
        "exported_at": bundle.exported_at.isoformat() if bundle.exported_at else None,
        "counts": {
            "events": sum(len(e) for e in bundle.events.values()),
            "workflows": len(bundle.workflows),
            "payloads": len(bundle.payloads),
        },
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    return gzip.compress(_line(manifest) + body, mtime=0)


def read_bundle(data: bytes) -> Bundle:
    """Parse and verify a bundle (format, checksums, each run's log folds)."""
    try:
        text = gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise BundleError(f"Expected a gzip'd {BUNDLE_FORMAT} file, but: {exc}") from exc
    head, _, body = text.partition(b"\n")
    manifest = _json(head, 1)
    if manifest.get("kind") != "manifest" or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"line 1: Expected a {BUNDLE_FORMAT} manifest, but got kind "
            f"{manifest.get('kind')!r} format {manifest.get('format')!r}"
        )
    if manifest.get("format_version") != BUNDLE_VERSION:
        raise BundleError(
            f"manifest.format_version: Expected {BUNDLE_VERSION}, but got "
            f"{manifest.get('format_version')!r}"
        )
    digest = hashlib.sha256(body).hexdigest()
    if digest != manifest.get("sha256"):
        raise BundleError(
            f"manifest.sha256: Expected the records to have sha256 {manifest.get('sha256')}, "
            f"but they have {digest} (the file is damaged or was edited)"
        )
    events: dict[str, list[RunEvent]] = {rid: [] for rid in manifest.get("runs") or []}
    workflows: list[BundleWorkflow] = []
    payloads: list[BundlePayload] = []
    for number, record in _records(body):
        kind = record.get("kind")
        try:
            if kind == "event":
                event = event_from_json(record["type"], record["event"])
                events.setdefault(event.run_id, []).append(event)
            elif kind == "workflow":
                workflows.append(
                    BundleWorkflow(
                        str(record["workflow_id"]), int(record["version"]), record["definition"]
                    )
                )
            elif kind == "payload":
                payloads.append(_payload(record))
            else:
                raise BundleError(
                    f"line {number}: kind: Expected event, workflow or payload, but got {kind!r}"
                )
        except (KeyError, TypeError, ValueError, UnknownEventError) as exc:
            raise BundleError(f"line {number}: {exc}") from exc
    for run_id, log in events.items():
        try:
            if fold(log) is None:
                raise BundleError(f"runs.{run_id}: Expected events, but the bundle has none")
        except EvolveError as exc:
            raise BundleError(f"runs.{run_id}: the log does not fold: {exc}") from exc
    exported = manifest.get("exported_at")
    return Bundle(
        run_id=str(manifest.get("run_id")),
        events=events,
        workflows=workflows,
        payloads=payloads,
        exported_at=datetime.fromisoformat(exported) if exported else None,
        manifest=manifest,
    )


# -- what a run's log refers to -------------------------------------------------------------


def workflows_used(events: Sequence[RunEvent]) -> set[tuple[str, int]]:
    """(workflow id, version) of every registered version the log names."""
    used: set[tuple[str, int]] = set()
    for event in events:
        if isinstance(event, RunStarted):
            used.add((event.workflow_id, event.workflow_version))
        elif isinstance(event, RunRebound):
            used.add((_workflow_of(events), event.workflow_version))
        elif isinstance(event, ChildRunRequested | MapStarted) and _pinned(event):
            used.add((str(event.workflow_id), int(event.workflow_version or 0)))
    return used


def child_run_ids(events: Sequence[RunEvent]) -> list[str]:
    """Child runs the log started (meta.workflow/meta.loop, map over a sub-workflow)."""
    seen: dict[str, None] = {}
    for event in events:
        if isinstance(event, ChildRunRequested | MapChildEnded) and event.child_run_id:
            seen.setdefault(event.child_run_id, None)
    return list(seen)


def payload_refs(events: Sequence[RunEvent]) -> list[PayloadRef]:
    """Every claim check the events hold (found by shape, so new fields are covered too)."""
    found: dict[str, PayloadRef] = {}
    for event in events:
        for ref in _refs(event.model_dump(mode="json")):
            found.setdefault(ref.uri, ref)
    return list(found.values())


def _refs(value: Any) -> Iterator[PayloadRef]:
    if isinstance(value, dict):
        if set(value) == {"uri", "size_bytes", "sha256", "content_type"}:
            yield PayloadRef.model_validate(value)
            return
        for item in value.values():
            yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def _pinned(event: ChildRunRequested | MapStarted) -> bool:
    return bool(event.workflow_id) and event.workflow_version is not None


def _workflow_of(events: Sequence[RunEvent]) -> str:
    for event in events:
        if isinstance(event, RunStarted):
            return event.workflow_id
    return ""


# -- lines --------------------------------------------------------------------------------------


def _line(record: Mapping[str, Any]) -> bytes:
    return (
        json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
        + b"\n"
    )


def _json(line: bytes, number: int) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise BundleError(f"line {number}: Expected a JSON object, but: {exc}") from exc
    if not isinstance(value, dict):
        raise BundleError(f"line {number}: Expected a JSON object, but got {type(value).__name__}")
    return value


def _records(body: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
    for offset, line in enumerate(body.split(b"\n")):
        if line.strip():
            yield offset + 2, _json(line, offset + 2)


def _payload(record: Mapping[str, Any]) -> BundlePayload:
    data = base64.b64decode(record["data"], validate=True)
    digest = hashlib.sha256(data).hexdigest()
    if digest != record["sha256"] or len(data) != record["size_bytes"]:
        raise BundleError(
            f"payload {record['uri']}: Expected {record['size_bytes']} bytes with sha256 "
            f"{record['sha256']}, but got {len(data)} bytes with sha256 {digest}"
        )
    return BundlePayload(
        uri=str(record["uri"]),
        sha256=digest,
        size_bytes=len(data),
        content_type=str(record["content_type"]),
        data=data,
    )
