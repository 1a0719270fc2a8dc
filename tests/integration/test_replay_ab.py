"""A/B replay end to end on the real services: the API (POST/GET/list/SSE), the runner in the
engine, the shadow engine, the report and its verdict; the CLI with its progress bar; mutation
proposals validated and rejected by replay (issue 10, ADR 0030; only a better or cheaper
replay validates since issue 11, ADR 0033)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from foundation import settings as settings_module
from reflux.cli import main
from reflux.credentials import auth_headers
from tests.integration.engine_fixtures import Harness, transform
from tests.integration.test_cli_client import api_url  # noqa: F401  the fixture
from tests.support.waiting import eventually

RUNS = 6
BROKEN = "value.[x"  # an invalid JMESPath: passes the static checks, fails when it runs


# The API wants a key (ADR 0046): the one the api_url fixture wrote (REFLUX_API_KEY_FILE).
def _get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, headers=auth_headers(), **kwargs)


def _post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, headers=auth_headers(), **kwargs)


def _stream(method: str, url: str, **kwargs: Any) -> Any:
    return httpx.stream(method, url, headers=auth_headers(), **kwargs)


def flow(workflow_id: str, expression: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "inputs": {"n": {"type": "integer", "required": True}},
        "steps": [transform("shape", expression, {"value": "{{ inputs.n }}"})],
        "outputs": {"result": "{{ steps.shape.output.result }}"},
    }


def projected(api: str, workflow_id: str, version: int) -> None:
    url = f"{api}/v1/workflows/{workflow_id}/versions/{version}"
    eventually(lambda: _get(url).status_code == 200, 20, f"{url} projected")


def record_runs(harness: Harness, workflow_id: str, status: str) -> list[str]:
    runs = [harness.start(workflow_id, {"n": n}) for n in range(RUNS)]
    for run_id in runs:
        assert harness.wait(run_id, timeout=60).status == status
    return runs


def finished(api: str, replay_id: str, timeout: float = 180) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = _get(f"{api}/v1/replays/{replay_id}").json()
        return body if body["status"] in {"completed", "failed"} else None

    result: dict[str, Any] | None = eventually(done, timeout, f"replay {replay_id} to finish")
    assert result is not None
    return result


def start(api: str, workflow_id: str, **candidate: Any) -> str:
    response = _post(
        f"{api}/v1/replays",
        json={
            "workflow_id": workflow_id,
            "selection": {"workflow_version": 1, "sample_size": RUNS},
            "candidate": candidate,
        },
    )
    assert response.status_code == 202, response.text
    replay_id: str = response.json()["replay_id"]
    return replay_id


def sse(api: str, replay_id: str) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    with _stream("GET", f"{api}/v1/replays/{replay_id}/events", timeout=180) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.removeprefix("data:"))))
    return events


def test_a_breaking_candidate_is_worse_with_progress_and_a_per_run_report(
    harness: Harness,
    api_url: str,  # noqa: F811
) -> None:
    harness.register(flow("abbreak", "value"), version=1)
    originals = record_runs(harness, "abbreak", "succeeded")
    harness.register(flow("abbreak", BROKEN), version=2)
    projected(api_url, "abbreak", 2)
    replay_id = start(api_url, "abbreak", workflow_version=2)
    events = sse(api_url, replay_id)
    names = [name for name, _ in events]
    assert names[-1] == "completed" and "progress" in names
    assert events[-1][1]["done"] == RUNS and events[-1][1]["total"] == RUNS

    replay = finished(api_url, replay_id)
    report = replay["report"]
    assert replay["status"] == "completed" and replay["verdict"] == "worse"
    assert report["outcomes"] == {"both_succeeded": 0, "fixed": 0, "broke": RUNS, "both_failed": 0}
    success = report["comparison"]["success"]
    assert (success["original_rate"], success["candidate_rate"]) == (1.0, 0.0)
    assert success["fisher_p"] < 0.05 and success["ci_high"] < 0
    assert report["comparison"]["confidence"] == 0.95
    runs = replay["runs"]
    assert sorted(r["original"]["run_id"] for r in runs) == sorted(originals)
    for run in runs:
        assert run["outcome"] == "broke"
        assert run["candidate"]["error_class"] == "TransformError"
        assert run["output_equal"] is False
        assert run["steps"][0]["step_id"] == "shape"
        assert run["steps"][0]["original"]["duration_ms"] is not None
    listed = _get(f"{api_url}/v1/replays", params={"workflow_id": "abbreak"}).json()
    assert [r["replay_id"] for r in listed["data"]] == [replay_id]
    assert listed["data"][0]["verdict"] == "worse"


@pytest.fixture
def forced_progress(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Progress bars drawn though stderr is not a terminal (REFLUX_PROGRESS=always)."""
    monkeypatch.setenv("REFLUX_PROGRESS", "always")
    settings_module.get_settings.cache_clear()
    yield
    monkeypatch.delenv("REFLUX_PROGRESS")
    settings_module.get_settings.cache_clear()


def test_the_cli_reports_an_equal_candidate_as_no_difference_and_a_fix_as_better(
    harness: Harness,
    api_url: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    forced_progress: None,
) -> None:
    harness.register(flow("abcli", "value"), version=1)
    record_runs(harness, "abcli", "succeeded")
    harness.register(flow("abcli", "value"), version=2)  # the same computation
    harness.register(flow("abfix", BROKEN), version=1)
    record_runs(harness, "abfix", "failed")
    harness.register(flow("abfix", "value"), version=2)  # the fix
    for workflow_id in ("abcli", "abfix"):
        projected(api_url, workflow_id, 2)

    args = ["--candidate-version", "2", "--version", "1", "--sample", str(RUNS), "--api", api_url]
    assert main(["replay", "ab", "--workflow", "abcli", *args]) == 0
    captured = capsys.readouterr()
    assert "verdict: no_difference at 0.95 confidence" in captured.out
    assert f"both_succeeded={RUNS}" in captured.out and f"outputs equal={RUNS}" in captured.out
    # The progress bar's last state, on stderr (drawn because forced: stderr is captured).
    assert "replaying runs" in captured.err and f"{RUNS}/{RUNS}" in captured.err
    assert "replaying runs" not in captured.out

    assert main(["replay", "ab", "--workflow", "abfix", *args, "--json"]) == 0
    captured = capsys.readouterr()
    assert "replaying runs" not in captured.err  # never a bar with --json
    replay = json.loads(captured.out)
    assert replay["verdict"] == "better"
    assert replay["report"]["outcomes"]["fixed"] == RUNS

    # Bad input: a clear error naming the field.
    assert main(["replay", "ab", "--workflow", "abcli", "--api", api_url]) == 2
    assert "candidate" in capsys.readouterr().err
    missing = _post(
        f"{api_url}/v1/replays",
        json={"workflow_id": "abcli", "candidate": {"workflow_version": 9}},
    )
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "candidate", "workflow_version"]
    slow = _post(
        f"{api_url}/v1/replays",
        json={
            "workflow_id": "abcli",
            "candidate": {"workflow_version": 1},
            "policy": {"pace": "slow"},
        },
    )
    assert slow.status_code == 422
    assert slow.json()["detail"][0]["loc"] == ["body", "policy", "pace"]


def propose(api: str, workflow_id: str, mutation_id: str, expression: str) -> None:
    response = _post(
        f"{api}/v1/mutations",
        json={
            "workflow_id": workflow_id,
            "mutation_id": mutation_id,
            "base_version": 1,
            "rationale": "test",
            "changes": [
                {
                    "type": "update_params",
                    "step_id": "shape",
                    "data": {"expression": expression, "data": {"value": "{{ inputs.n }}"}},
                }
            ],
        },
    )
    assert response.status_code in {200, 202}, response.text


def settled(api: str, mutation_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        response = _get(f"{api}/v1/mutations/{mutation_id}")
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body if body["status"] in {"validated", "rejected"} else None

    result: dict[str, Any] | None = eventually(done, 180, f"proposal {mutation_id} to be judged")
    assert result is not None
    return result


def test_proposals_are_validated_or_rejected_by_replay(
    harness: Harness,
    api_url: str,  # noqa: F811
) -> None:
    harness.register(flow("abprop", "value"), version=1)
    record_runs(harness, "abprop", "succeeded")
    projected(api_url, "abprop", 1)
    propose(api_url, "abprop", "abprop-break", BROKEN)
    rejected = settled(api_url, "abprop-break")
    assert rejected["status"] == "rejected"
    assert "replay verdict worse" in rejected["reason"]
    checks = {c["name"]: c for c in rejected["report"]["checks"]}
    assert checks["definition"]["passed"] is True  # the static checks passed: replay rejected
    assert checks["replay"]["passed"] is False
    assert rejected["report"]["replay"]["verdict"] == "worse"
    assert rejected["report"]["replay"]["outcomes"]["broke"] == RUNS
    history = [e["status"] for e in rejected["history"]]
    assert history == ["proposed", "validating", "rejected"]

    # The same behaviour at the same cost: nothing to gain, rejected (issue 11, ADR 0033).
    propose(api_url, "abprop", "abprop-same", "value")
    same = settled(api_url, "abprop-same")
    assert same["status"] == "rejected"
    assert same["report"]["replay"]["verdict"] == "no_difference"
    assert "no lower cost" in same["reason"] and same["report"]["passed"] is False
    replay_id = same["report"]["replay"]["replay_id"]
    stored = _get(f"{api_url}/v1/replays/{replay_id}").json()
    assert stored["mutation_id"] == "abprop-same" and stored["requested_by"] == "mutation-processor"

    # A fix of a broken base: better, validated.
    harness.register(flow("abfixes", BROKEN), version=1)
    record_runs(harness, "abfixes", "failed")
    projected(api_url, "abfixes", 1)
    propose(api_url, "abfixes", "abfixes-1", "value")
    validated = settled(api_url, "abfixes-1")
    assert validated["status"] == "validated", validated["reason"]
    assert validated["report"]["replay"]["verdict"] == "better"
    assert validated["report"]["passed"] is True
    assert validated["report"]["replay"]["outcomes"]["fixed"] == RUNS

    # No recorded runs of the base version: insufficient data, not shown better: rejected.
    harness.register(flow("abempty", "value"), version=1)
    projected(api_url, "abempty", 1)
    propose(api_url, "abempty", "abempty-1", "value")
    empty = settled(api_url, "abempty-1")
    assert empty["status"] == "rejected"
    assert empty["report"]["replay"]["verdict"] == "insufficient_data"
    assert "not shown to be better" in empty["reason"]
