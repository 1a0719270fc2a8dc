"""processors.replay.runner.parse_spec: a spec -> the engine's inputs; bad fields named."""

from __future__ import annotations

from typing import Any

import pytest

from processors.replay.runner import SpecError, parse_spec


def spec(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "selection": {"workflow_id": "wf", "workflow_version": 1, "sample_size": 20},
        "candidate": {"workflow_version": 2},
    }
    body.update(changes)
    return body


def test_a_full_spec_parses() -> None:
    selection, candidate, policy, rules = parse_spec(
        spec(
            selection={
                "workflow_id": "wf",
                "since": "2026-01-01T00:00:00+00:00",
                "status": "failed",
                "inputs_filter": "n > `2`",
            },
            candidate={"definition": {"id": "wf", "steps": []}, "node_pins": {"http": "1.2.0"}},
            policy={"per_node": {"email.send": "stub"}, "stubs": {"email.send": {"ok": True}}},
            confidence=0.9,
        )
    )
    assert selection.workflow_id == "wf" and selection.sample_size == 100
    assert selection.since is not None and selection.since.year == 2026
    assert candidate.definition == {"id": "wf", "steps": []}
    assert candidate.node_pins == {"http": "1.2.0"}
    assert policy.mode("email.send") == "stub" and policy.mode("other") == "record"
    assert rules.confidence == 0.9


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"selection": {}}, "selection.workflow_id"),
        ({"selection": {"workflow_id": "wf", "sample_size": 0}}, "selection.sample_size"),
        ({"selection": {"workflow_id": "wf", "since": "yesterday"}}, "selection.since"),
        ({"candidate": {}}, "candidate"),
        ({"candidate": {"workflow_version": "2"}}, "candidate.workflow_version"),
        ({"policy": {"per_node": {"http": "maybe"}}}, "policy.per_node.http"),
        ({"confidence": 1.5}, "confidence"),
        ({"selection": []}, "selection"),
    ],
)
def test_bad_fields_are_named(changes: dict[str, Any], path: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec(**changes))
    assert caught.value.path == path
