"""infra/services/credentials.py: generated credentials files are private and read back."""

from __future__ import annotations

import stat
from pathlib import Path

from infra.services.credentials import (
    pgpass_line,
    read_or_create_json,
    read_pgpass_password,
    write_private,
)


def test_private_files_and_folder(tmp_path: Path) -> None:
    target = tmp_path / "credentials" / "x"
    write_private(target, "secret\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert target.read_text() == "secret\n"


def test_pgpass_round_trip_with_separators(tmp_path: Path) -> None:
    path = tmp_path / "pgpass"
    write_private(
        path, pgpass_line(15432, "postgres", "a:b\\c") + pgpass_line(15432, "reflux", "p")
    )
    assert path.read_text().splitlines()[0] == "*:15432:*:postgres:a\\:b\\\\c"
    assert read_pgpass_password(path, "postgres") == "a:b\\c"
    assert read_pgpass_password(path, "reflux") == "p"
    assert read_pgpass_password(path, "other") is None
    assert read_pgpass_password(tmp_path / "missing", "reflux") is None


def test_json_credentials_are_generated_once(tmp_path: Path) -> None:
    path = tmp_path / "s3.json"
    first = read_or_create_json(
        path, ("access_key", "secret_key"), {"access_key": "a", "secret_key": "s"}
    )
    again = read_or_create_json(
        path, ("access_key", "secret_key"), {"access_key": "b", "secret_key": "t"}
    )
    assert first == again == {"access_key": "a", "secret_key": "s"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
