"""``reflux demo improve``'s pure parts and its flaky dependency (loopback HTTP only)."""

from __future__ import annotations

import httpx

from reflux.cli import build_parser
from reflux.demo_improve import Submitted, loop_workflow, window_table
from reflux.flaky_service import flaky_service
from workflows import parse_workflow


def test_the_demo_command_dispatches_its_stories() -> None:
    parser = build_parser()
    assert parser.parse_args(["demo"]).story == "run"
    args = parser.parse_args(["demo", "improve", "--keep"])
    assert args.story == "improve" and args.keep is True


def test_the_story_workflow_is_valid_and_has_no_retry() -> None:
    parsed = parse_workflow(loop_workflow("http://127.0.0.1:1"))
    fetch = parsed.step("fetch_quote")
    assert fetch.retry.max_attempts == 1  # what the optimizer has to fix
    assert "{{ inputs.item }}" in fetch.params["url"]


def test_window_table_counts_success_and_versions_per_window() -> None:
    runs = [Submitted(i, f"r{i}", "healthy" if i < 3 else "kept") for i in range(5)]
    finished = {
        "r0": ("succeeded", 1),
        "r1": ("failed", 1),
        "r2": ("succeeded", 1),
        "r3": ("succeeded", 2),
        "r4": ("running", 2),
    }
    rows = window_table(runs, finished, 3)
    assert rows[0] == {
        "runs": "1-3",
        "phase": "healthy",
        "finished": 3,
        "success": 2 / 3,
        "versions": {1: 3},
    }
    assert rows[1]["finished"] == 1 and rows[1]["success"] == 1.0
    assert rows[1]["versions"] == {2: 1}


def test_the_flaky_service_degrades_at_the_known_point_and_is_seeded() -> None:
    def statuses(seed: int) -> list[int]:
        with flaky_service(0.0, seed=seed) as service, httpx.Client() as client:
            before = [client.get(f"{service.url}/quote").status_code for _ in range(20)]
            service.degrade(0.5)
            after = [client.get(f"{service.url}/quote").status_code for _ in range(40)]
            assert service.stats().requests == 60
            assert set(before) == {200}
            assert 503 in after and 200 in after
            return after

    assert statuses(3) == statuses(3)
