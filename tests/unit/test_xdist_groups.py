"""The xdist group table names files that exist: a renamed fault test must not silently drop out
of its group and run beside the others again."""

from __future__ import annotations

from pathlib import Path

from tests.support.xdist_groups import BROKER_FAULTS, GROUP_OF_FILE, scope_of

ROOT = Path(__file__).resolve().parents[2]


def test_every_grouped_file_exists() -> None:
    missing = [path for path in GROUP_OF_FILE if not (ROOT / path).is_file()]
    assert missing == []


def test_a_grouped_file_s_tests_share_the_group_and_others_keep_their_file() -> None:
    assert scope_of("tests/integration/test_chaos.py::test_burst[x]") == BROKER_FAULTS
    assert scope_of("tests/integration/test_cluster_faults.py::test_runs") == BROKER_FAULTS
    assert scope_of("tests/integration/test_api.py::test_x") == "tests/integration/test_api.py"
