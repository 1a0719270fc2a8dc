"""Token-bucket arithmetic, limits per tenant and the quota's day (ADR 0049); the Lua twin of
:func:`api.ratelimit.bucket.take` is checked against it on a real Redis in
tests/integration/test_rate_limits.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from api.config import ApiSettings, TenantRateLimits
from api.ratelimit.bucket import MICRO, BucketLimit, BucketState, retry_after_s, take
from api.ratelimit.policy import day_window, limits_for, quota_for, request_charge
from api.responses import COMMON_RESPONSES
from foundation.settings import Settings


def test_a_new_bucket_is_full_and_each_request_takes_one_token() -> None:
    limit = BucketLimit(burst=3, per_s=1)
    state: BucketState | None = None
    for left in (2, 1, 0):
        taken = take([state], [limit], now_ms=1_000)
        assert taken.allowed and taken.remaining == (left,)
        state = taken.states[0]
    refused = take([state], [limit], now_ms=1_000)
    assert not refused.allowed and refused.limiting == 0
    assert refused.wait_ms == 1000 and retry_after_s(refused.wait_ms) == 1
    # A refusal takes nothing: the same state, the same answer a little later, less to wait.
    assert refused.states == (state,)
    later = take([state], [limit], now_ms=1_400)
    assert not later.allowed and later.wait_ms == 600
    assert take([state], [limit], now_ms=2_000).allowed


def test_refill_is_exact_between_calls_and_capped_at_the_burst() -> None:
    limit = BucketLimit(burst=10, per_s=0.3)  # 300 milli-tokens/s = 300 micro-tokens/ms
    assert limit.rate == 300
    empty = BucketState(level=0, at_ms=0)
    # Ten calls 1 ms apart refill exactly what one call 10 ms later does: nothing is rounded.
    state = empty
    for now in range(1, 11):
        state = BucketState(take([state], [limit], now, cost=0).states[0].level, now)
    assert state.level == take([empty], [limit], 10, cost=0).states[0].level == 3000
    # 0.3/s: a token after 3334 ms (ceil), not 3333.
    refused = take([empty], [limit], now_ms=0)
    assert refused.wait_ms == 3334 and retry_after_s(refused.wait_ms) == 4
    assert take([empty], [limit], now_ms=3333).allowed is False
    assert take([empty], [limit], now_ms=3334).allowed
    full = take([empty], [limit], now_ms=10**9, cost=0)
    assert full.remaining == (10,) and full.states[0].level == 10 * MICRO
    assert full.full_ms == (0,)


def test_a_clock_stepping_back_refills_nothing() -> None:
    limit = BucketLimit(burst=5, per_s=100)
    state = BucketState(level=2 * MICRO, at_ms=10_000)
    assert take([state], [limit], now_ms=9_000, cost=0).states[0].level == 2 * MICRO


def test_all_or_nothing_across_buckets_and_the_longest_wait_names_the_bucket() -> None:
    tenant, principal = BucketLimit(100, 10), BucketLimit(2, 1)
    states: list[BucketState | None] = [None, None]
    for _ in range(2):
        taken = take(states, [tenant, principal], now_ms=0)
        assert taken.allowed
        states = list(taken.states)
    refused = take(states, [tenant, principal], now_ms=0)
    assert not refused.allowed and refused.limiting == 1 and refused.wait_ms == 1000
    assert refused.remaining == (98, 0)  # the tenant's token was not taken either


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    assert [retry_after_s(ms) for ms in (0, 1, 999, 1000, 1001, 2500)] == [1, 1, 1, 1, 2, 3]


def test_bucket_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="burst"):
        BucketLimit(0, 1)
    with pytest.raises(ValueError, match="per_s"):
        BucketLimit(1, 0)
    assert BucketLimit(600, 10).window_s == 60


def test_tenant_overrides_apply_field_by_field() -> None:
    api = ApiSettings(
        rate_write_burst=100,
        rate_write_per_s=10,
        rate_starts_per_day=50,
        rate_tenants={
            "acme": TenantRateLimits(write_burst=5, principal_share=0.5),
            "big": TenantRateLimits(starts_per_day=None),
        },
    )
    acme, big, other = (limits_for(api, t) for t in ("acme", "big", "other"))
    assert acme.write == BucketLimit(5, 10) and acme.starts_per_day == 50
    assert acme.principal_share == 0.5 and other.principal_share is None
    assert big.starts_per_day is None and other.starts_per_day == 50


def test_overrides_from_the_environment_name_a_bad_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFLUX_API_RATE_TENANTS", '{"acme": {"write_brust": 5}}')
    with pytest.raises(ValidationError) as info:
        ApiSettings()
    assert ("rate_tenants", "acme", "write_brust") in [e["loc"] for e in info.value.errors()]
    monkeypatch.setenv("REFLUX_API_RATE_TENANTS", '{"acme": {"write_burst": 5}}')
    monkeypatch.setenv("REFLUX_API_RATE_FAIL_CLOSED", '["starts", "reads"]')
    with pytest.raises(ValidationError, match="reads"):
        ApiSettings()


def test_what_a_request_is_charged() -> None:
    api = ApiSettings(rate_principal_share=0.25, rate_write_burst=8, rate_write_per_s=4)
    kw = {"params": {}, "tenant": "acme", "principal": "api_key:k1"}
    write = request_charge(api, "p", method="POST", template="/v1/runs", **kw)  # type: ignore[arg-type]
    assert write is not None and write.name == "write"
    assert write.keys == ("p:ratelimit:{acme}:write", "p:ratelimit:{acme}:write:api_key:k1")
    assert write.limits == (BucketLimit(8, 4), BucketLimit(2, 1))
    read = request_charge(api, "p", method="GET", template=None, **kw)  # type: ignore[arg-type]
    assert read is not None and read.name == "read" and read.keys[0] == "p:ratelimit:{acme}:read"
    # Webhooks are keyed by what they address, whoever sends them.
    hook = request_charge(
        api,
        "p",
        method="POST",
        template="/v1/hooks/{workflow_id}",
        params={"workflow_id": "w{1}"},
        tenant=None,
        principal=None,
    )
    assert hook is not None and hook.name == "hook" and hook.scope == "workflow 'w{1}'"
    assert hook.keys == ("p:ratelimit:hook:{workflow:w%7B1%7D}",)
    callback = request_charge(
        api,
        "p",
        method="POST",
        template="/v1/hooks/runs/{run_id}/steps/{step_id}",
        params={"run_id": "r", "step_id": "s"},
        tenant=None,
        principal=None,
    )
    assert callback is not None and callback.keys == ("p:ratelimit:hook:{run:r}",)
    # Anonymous elsewhere: already answered 401; nothing to charge.
    assert (
        request_charge(
            api, "p", method="GET", template=None, params={}, tenant=None, principal=None
        )
        is None
    )


def test_the_quota_day_ends_at_midnight_utc() -> None:
    day, midnight, left = day_window(datetime(2026, 12, 6, 23, 59, 58, 500_000, tzinfo=UTC))
    assert day == "2026-12-06" and left == 2
    assert midnight == int(datetime(2026, 12, 7, tzinfo=UTC).timestamp())
    api = ApiSettings(rate_starts_per_day=7)
    quota = quota_for(api, "p", "acme", datetime(2026, 12, 6, 12, tzinfo=UTC))
    assert quota is not None and quota.limit == 7 and quota.reset_s == 12 * 3600
    assert quota.key == "p:ratelimit:{acme}:starts:2026-12-06"
    assert quota.expire_at == midnight + 3600  # the same next midnight, plus an hour
    assert quota_for(ApiSettings(rate_starts_per_day=None), "p", "acme", datetime.now(UTC)) is None


def test_429_is_a_common_answer_of_every_v1_operation() -> None:
    assert 429 in {c.status for c in COMMON_RESPONSES}
    from api.app import create_app

    spec = create_app(Settings()).openapi()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                assert "429" in operation["responses"], (method, path)
