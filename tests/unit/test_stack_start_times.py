"""`make up`'s start-time record: merged, written whole, and a broken file does not stop `up`
(every xdist worker calls `up`; one read the file while another wrote it and failed 14 tests)."""

from __future__ import annotations

import json
from pathlib import Path

from infra.stack import _record_start_times


def test_times_merge_and_services_already_running_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "run" / "start-times.json"
    _record_start_times(path, {"kafka": 0.0, "redis": 0.0})
    assert not path.exists()
    _record_start_times(path, {"kafka": 5.5, "redis": 0.0})
    _record_start_times(path, {"postgres": 2.0})
    assert json.loads(path.read_text()) == {"kafka": 5.5, "postgres": 2.0}
    assert [p.name for p in path.parent.iterdir()] == ["start-times.json"]  # no partial left


def test_an_unreadable_record_counts_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "start-times.json"
    path.write_text("")
    _record_start_times(path, {"kafka": 1.0})
    assert json.loads(path.read_text()) == {"kafka": 1.0}
