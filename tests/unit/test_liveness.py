"""foundation.liveness: the heartbeat file of components without an HTTP port, and the probe
that fails when it is stale or missing (what Kubernetes' exec liveness probe runs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from foundation.liveness import Heartbeat, age_of, main


def test_beats_touch_the_file_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "run" / "alive"
    heartbeat = Heartbeat(path, every=3600)
    heartbeat.beat()
    assert path.exists()
    os.utime(path, (1, 1))  # pretend the last beat was long ago
    heartbeat.beat()  # within the interval: not touched again
    assert path.stat().st_mtime == 1
    Heartbeat(path, every=0).beat()
    assert (age_of(path) or 0) < 60


def test_no_file_configured_means_no_heartbeat(tmp_path: Path) -> None:
    Heartbeat(None).beat()  # nothing to touch, nothing raised
    assert list(tmp_path.iterdir()) == []


def test_the_probe_passes_on_a_fresh_heartbeat_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "alive"
    assert main(["--file", str(path)]) == 1
    assert "no heartbeat yet" in capsys.readouterr().err
    path.touch()
    assert main(["--file", str(path), "--max-age", "60"]) == 0
    stale = time.time() - 600
    os.utime(path, (stale, stale))
    assert main(["--file", str(path), "--max-age", "60"]) == 1
    assert "last heartbeat 600s ago (> 60s)" in capsys.readouterr().err


def test_the_probe_reads_the_file_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foundation import settings as settings_module

    path = tmp_path / "alive"
    path.touch()
    monkeypatch.setenv("REFLUX_LIVENESS_FILE", str(path))
    settings_module.get_settings.cache_clear()
    try:
        assert main([]) == 0
        monkeypatch.delenv("REFLUX_LIVENESS_FILE")
        settings_module.get_settings.cache_clear()
        assert main([]) == 1
    finally:
        settings_module.get_settings.cache_clear()
