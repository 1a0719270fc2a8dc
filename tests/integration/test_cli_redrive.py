"""``reflux runs redrive --downstream`` and ``reflux runs rebind`` against a real API and engine."""

from __future__ import annotations

import pytest

from reflux.cli import main
from tests.integration.engine_fixtures import Harness, transform
from tests.integration.test_cli_client import api_url  # noqa: F401  (the fixture)
from tests.support.waiting import eventually

CHAIN = {
    "id": "cli-chain",
    "steps": [
        transform("a", "[n]", {"n": 1}),
        transform("b", "[x]", {"x": "{{ steps.a.output.result }}"}, needs=["a"]),
        transform("c", "[y]", {"y": "{{ steps.b.output.result }}"}, needs=["b"]),
    ],
    "outputs": {"c": "{{ steps.c.output.result }}"},
}


def test_redrive_from_a_step_and_a_refused_rebind(
    harness: Harness,
    api_url: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    harness.register(CHAIN)
    run_id = harness.start("cli-chain")
    assert harness.wait(run_id).status == "succeeded"

    code = main(["runs", "redrive", run_id, "b", "--downstream", "--by", "cli", "--api", api_url])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "applied: StepsReset" in out
    eventually(
        lambda: [e.event_type for e in harness.events(run_id)].count("RunSucceeded"),
        30,
        "the re-driven run to succeed again",
        until=lambda n: n == 2,
    )
    assert main(["runs", "show", run_id, "--api", api_url]) == 0
    timeline = capsys.readouterr().out
    assert "StepsReset" in timeline and "steps b, c" in timeline
    assert {s.step_id: s.attempt for s in harness.steps(run_id).values()} == {
        "a": 1,
        "b": 2,
        "c": 2,
    }

    code = main(["runs", "rebind", run_id, "--api", api_url])
    err = capsys.readouterr().err
    assert code == 2
    assert "409" in err
    assert "Expected run to be failed or paused to rebind it, but it is succeeded" in err
