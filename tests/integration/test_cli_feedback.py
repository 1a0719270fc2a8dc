"""``reflux runs feedback`` against a real API and engine (the trace side: test_traces.py)."""

from __future__ import annotations

import pytest

from reflux.cli import main
from tests.integration.engine_fixtures import Harness, transform
from tests.integration.test_cli_client import api_url  # noqa: F401  (the fixture)

ONE = {"id": "cli-feedback", "steps": [transform("a", "[n]", {"n": 1})]}


def test_feedback_is_accepted_and_bad_input_names_the_field(
    harness: Harness,
    api_url: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    harness.register(ONE)
    run_id = harness.start("cli-feedback")
    assert harness.wait(run_id).status == "succeeded"

    post = ["runs", "feedback", run_id, "--score", "0.75", "--label", "ok", "--step", "a"]
    code = main([*post, "--api", api_url])
    out = capsys.readouterr().out
    assert code == 0 and f"on run {run_id}: score 0.75" in out, out

    assert main(["runs", "feedback", run_id, "--score", "2", "--api", api_url]) == 2
    assert "score: Input should be less than or equal to 1" in capsys.readouterr().err
    assert main(["runs", "feedback", run_id, "--score", "1", "--step", "zz", "--api", api_url]) == 2
    assert "step_id: run" in capsys.readouterr().err
    assert main(["runs", "feedback", "nope", "--score", "1", "--api", api_url]) == 2
    assert "404" in capsys.readouterr().err
