"""``reflux mutations propose|list|show|approve|keep|reject|rollback|policy`` against a real
API and engine (validating on the static checks: a fresh workflow has no runs a replay could
show the proposal better on, and such a proposal is rejected since ADR 0033)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from reflux.cli import main
from reflux.credentials import auth_headers
from tests.integration.engine_fixtures import Harness, HarnessFactory, transform
from tests.integration.test_cli_client import api_url  # noqa: F401  the fixture
from tests.support.waiting import eventually


# The API wants a key (ADR 0046): the one the api_url fixture wrote (REFLUX_API_KEY_FILE).
def _get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, headers=auth_headers(), **kwargs)


def _post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, headers=auth_headers(), **kwargs)


@pytest.fixture
def harness(engine_harness: HarnessFactory) -> Harness:
    return engine_harness(proposal_replay=None)


def test_the_mutations_cli_takes_a_proposal_to_kept(
    api_url: str,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    workflow = {"id": "clied", "steps": [transform("say", "w", {"w": "one"})]}
    assert _post(f"{api_url}/v1/workflows", json=workflow).status_code == 201
    eventually(lambda: _get(f"{api_url}/v1/workflows/clied").status_code == 200, 15, "registered")
    proposal = tmp_path / "proposal.yaml"
    proposal.write_text(
        json.dumps(
            {
                "workflow_id": "clied",
                "mutation_id": "clied-1",
                "rationale": "say two",
                "changes": [
                    {
                        "type": "update_params",
                        "step_id": "say",
                        "data": {"expression": "w", "data": {"w": "two"}},
                    }
                ],
            }
        )
    )
    assert main(["mutations", "propose", str(proposal), "--api", api_url]) == 0
    out = capsys.readouterr().out
    assert "status=validated" in out and "check definition  ok" in out
    # No replay validation configured: the report says it did not run.
    assert "not run: replay" in out
    assert main(["mutations", "list", "--workflow", "clied", "--api", api_url]) == 0
    assert "clied-1  clied@1  validated" in capsys.readouterr().out
    # --json: the API's body as one JSON document, nothing else on stdout.
    assert main(["mutations", "list", "--workflow", "clied", "--json", "--api", api_url]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["mutation_id"], m["status"]) for m in listed["data"]] == [("clied-1", "validated")]
    assert main(["mutations", "show", "clied-1", "--json", "--api", api_url]) == 0
    assert json.loads(capsys.readouterr().out)["mutation_id"] == "clied-1"
    assert main(["mutations", "keep", "clied-1", "--api", api_url]) == 2
    assert "409: Cannot keep mutation 'clied-1': it is validated" in capsys.readouterr().err
    approve = ["mutations", "approve", "clied-1", "--canary-weight", "0.4", "--api", api_url]
    assert main(approve) == 0
    out = capsys.readouterr().out
    assert "clied@1 -> v2  status=applied" in out and "canary weight: 0.4" in out
    assert main(["mutations", "keep", "clied-1", "--reason", "fine", "--api", api_url]) == 0
    assert "status=kept" in capsys.readouterr().out
    assert main(["mutations", "show", "clied-1", "--api", api_url]) == 0
    shown = capsys.readouterr().out
    history = re.findall(r"^  \d\d:\d\d:\d\d\.\d{3}  (\w+)", shown, re.MULTILINE)
    assert history == ["proposed", "validating", "validated", "approved", "applied", "kept"]
    assert "v1: " in shown and "v2: " in shown  # the measured effect per version
    assert main(["mutations", "policy", "clied", "off", "--api", api_url]) == 0
    assert "improvement policy off" in capsys.readouterr().out
    assert main(["mutations", "show", "nope", "--api", api_url]) == 2
