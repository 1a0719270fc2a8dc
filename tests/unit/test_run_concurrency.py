"""Concurrent-run limits per workflow, the pure parts (ADR 0052): the definition field, which
limit holds, which admitted run ids no longer count, the key and the message. The Redis and
read-model side is tested in tests/integration/test_run_concurrency.py."""

from __future__ import annotations

from typing import Any

import pytest

from api.config import ApiSettings, TenantRateLimits
from api.ratelimit.concurrency import (
    ceiling_for,
    concurrency_key,
    effective_limit,
    refusal_message,
    stale_members,
)
from workflows.model import WorkflowDefinition
from workflows.validation import WorkflowValidationError, parse_workflow

BASE: dict[str, Any] = {
    "id": "w",
    "steps": [{"id": "a", "node": "transform@^1", "params": {"expression": "@"}}],
}


def test_a_workflow_may_declare_max_concurrent_runs() -> None:
    definition = parse_workflow({**BASE, "max_concurrent_runs": 2})
    assert definition.max_concurrent_runs == 2
    assert definition.to_json_dict()["max_concurrent_runs"] == 2
    again = WorkflowDefinition.from_json_dict(definition.to_json_dict())
    assert again.max_concurrent_runs == 2


def test_without_a_limit_the_canonical_form_is_unchanged() -> None:
    definition = parse_workflow(BASE)
    assert definition.max_concurrent_runs is None
    # Definitions (and their hashes, RunStarted.definition) registered before the field exist.
    assert "max_concurrent_runs" not in definition.to_json_dict()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "expected 1..100000 (or leave it out for no limit), but got 0"),
        (-3, "but got -3"),
        (100_001, "but got 100001"),
        (True, "expected an integer in 1..100000 (or leave it out for no limit), but got True"),
        ("2", "expected an integer in 1..100000"),
        (1.5, "but got 1.5"),
        ([2], "but got [2]"),
    ],
)
def test_a_bad_limit_is_a_field_error_at_its_path(value: object, expected: str) -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow({**BASE, "max_concurrent_runs": value})
    errors = caught.value.errors
    assert [error.path for error in errors] == ["max_concurrent_runs"]
    assert expected in errors[0].message


def test_the_bounds_are_accepted() -> None:
    assert parse_workflow({**BASE, "max_concurrent_runs": 1}).max_concurrent_runs == 1
    assert parse_workflow({**BASE, "max_concurrent_runs": 100_000}).max_concurrent_runs == 100_000


def test_the_lower_of_the_workflow_limit_and_the_ceiling_holds() -> None:
    assert effective_limit(None, None) is None
    assert effective_limit(3, None) == 3
    assert effective_limit(None, 7) == 7
    assert effective_limit(3, 7) == 3
    assert effective_limit(9, 7) == 7


def test_the_ceiling_is_the_default_or_the_tenants_override() -> None:
    api = ApiSettings(
        rate_max_concurrent_runs=50,
        rate_tenants={
            "small": TenantRateLimits(max_concurrent_runs=2),
            "free": TenantRateLimits.model_validate({"max_concurrent_runs": None}),
            "other": TenantRateLimits(write_burst=10),
        },
    )
    assert ceiling_for(api, "default") == 50
    assert ceiling_for(api, "small") == 2
    assert ceiling_for(api, "free") is None  # null given explicitly: no ceiling
    assert ceiling_for(api, "other") == 50  # left out: the default
    assert ceiling_for(ApiSettings(), "default") is None


def test_a_tenant_ceiling_out_of_range_is_refused_with_its_path() -> None:
    with pytest.raises(ValueError, match=r"acme\.max_concurrent_runs"):
        ApiSettings.model_validate({"rate_tenants": {"acme": {"max_concurrent_runs": 0}}})


def test_finished_runs_and_runs_never_seen_after_the_grace_period_stop_counting() -> None:
    now, grace = 1_000_000, 600_000
    members = [
        ("running", "10"),
        ("paused", "10"),
        ("succeeded", "999999"),
        ("failed", "999999"),
        ("cancelled", "999999"),
        ("young-ghost", str(now - grace + 1)),
        ("old-ghost", str(now - grace)),
    ]
    statuses = {
        "running": "running",
        "paused": "paused",
        "succeeded": "succeeded",
        "failed": "failed",
        "cancelled": "cancelled",
    }
    stale = stale_members(members, statuses, now, grace)
    assert stale == [
        ("succeeded", "999999"),
        ("failed", "999999"),
        ("cancelled", "999999"),
        ("old-ghost", str(now - grace)),
    ]


def test_scores_as_redis_prints_them_are_read() -> None:
    # Redis may answer a score as "1.7e+12"-style text for large values in some versions.
    assert stale_members([("x", "1.7e+12")], {}, 1_700_000_600_000, 600_000) == [("x", "1.7e+12")]


def test_the_key_keeps_the_workflow_in_one_hash_tag() -> None:
    assert concurrency_key("p", "orders") == "p:ratelimit:concurrency:{orders}"
    assert concurrency_key("p", "a{b}") == "p:ratelimit:concurrency:{a%7Bb%7D}"


def test_the_refusal_names_the_workflow_its_limit_and_the_runs_in_flight() -> None:
    message = refusal_message("orders", 2, 2, 5)
    assert "workflow 'orders' allows 2 runs in flight at once and has 2" in message
    assert "Retry in 5 s (Retry-After)" in message
    assert "allows 1 run in flight" in refusal_message("orders", 1, 1, 5)
