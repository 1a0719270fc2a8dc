"""Write golden binary fixtures: one message per record type and schema version.

``python -m schemas.fixtures`` writes ``tests/fixtures/avro/<FullName>.v<N>.bin`` for every known
writer schema that has no fixture yet. Existing fixtures are never rewritten: they are the bytes
old producers really wrote, and the tests decode them with today's readers.

``python -m schemas.fixtures snapshot <FullName>`` copies the current schema of a record, with
every named type inlined, to ``schemas/avro/history/<FullName>.v<N>.avsc``. Run it *before*
changing a record, then bump ``reflux.version`` and the ``schema_version`` default, regenerate the
models, and run this module again to add the new version's fixture.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastavro.schema import load_schema

from schemas.registry import AVRO_DIR, HISTORY_DIR, default_registry
from schemas.samples import sample_datum
from schemas.serde import encode_datum

FIXTURES_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "avro"


def fixture_path(name: str, version: int, fixtures_dir: Path = FIXTURES_DIR) -> Path:
    """Where the fixture of one record version lives."""
    return fixtures_dir / f"{name}.v{version}.bin"


def write_missing(fixtures_dir: Path = FIXTURES_DIR) -> list[Path]:
    """Write fixtures for schema versions that have none; return the paths written."""
    fixtures_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in sorted(default_registry().by_fingerprint.values(), key=lambda e: e.path):
        path = fixture_path(entry.name, entry.version, fixtures_dir)
        if not path.exists():
            path.write_bytes(encode_datum(entry, sample_datum(entry.schema)))
            written.append(path)
    return written


def snapshot(name: str) -> Path:
    """Freeze the current schema of ``name`` as a self-contained history file."""
    entry = default_registry().entry(name)
    expanded = load_schema(str(AVRO_DIR / f"{name}.avsc"), _write_hint=False)
    path = HISTORY_DIR / f"{name}.v{entry.version}.avsc"
    if path.exists():
        raise SystemExit(f"{path} exists already; bump the version of {name} first.")
    HISTORY_DIR.mkdir(exist_ok=True)
    path.write_text(json.dumps(expanded, indent=2) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI: write missing fixtures, or snapshot a schema into history/."""
    parser = argparse.ArgumentParser(prog="python -m schemas.fixtures", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    snap = sub.add_parser("snapshot", help="copy a current schema into schemas/avro/history/")
    snap.add_argument("name", help="full record name, e.g. reflux.traces.Trace")
    args = parser.parse_args(argv)
    if args.command == "snapshot":
        print(f"wrote {snapshot(args.name)}")
        return 0
    for path in write_missing():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
