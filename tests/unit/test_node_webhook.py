"""webhook.trigger's pure parts: mailbox keys, stored deliveries, signatures, params, refusals."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from api.signatures import SIGNATURE_HEADER as API_SIGNATURE_HEADER
from api.signatures import callback_path, sign, sign_callback
from node_workers.node import NonRetryableNodeError, validate_params
from node_workers.nodes import builtin_nodes
from node_workers.nodes.webhook_trigger import (
    DEFAULT_WAIT_S,
    MAX_WAIT_S,
    WebhookTriggerInput,
    WebhookTriggerNode,
    refusal,
)
from node_workers.webhooks import (
    SIGNATURE_HEADER,
    Delivery,
    check_ids,
    mailbox_keys,
    passed_headers,
    signature_problem,
)
from workflows import parse_workflow
from workflows.node_catalog import StaticNodeCatalog

RUN = "0b6e5c1e-3f7a-4a55-9a0e-5d2f3c9b1a01"
SECRET = "whsec-unit"


# -- keys -----------------------------------------------------------------------------------------


def test_mailbox_keys_are_namespaced_per_prefix_run_and_step() -> None:
    keys = mailbox_keys("reflux", RUN, "approve")
    assert keys.mailbox == f"reflux:webhook:{{{RUN}/approve}}"
    assert keys.inflight == keys.mailbox + ":inflight"
    assert keys.seen("delivery-1").startswith(keys.mailbox + ":seen:")
    assert keys.seen("delivery-1") == keys.seen("delivery-1") != keys.seen("delivery-2")
    others = {
        mailbox_keys("staging", RUN, "approve").mailbox,
        mailbox_keys("reflux", RUN, "approve_2").mailbox,
        mailbox_keys("reflux", RUN.replace("0b6e", "0b6f"), "approve").mailbox,
    }
    assert keys.mailbox not in others and len(others) == 3


@pytest.mark.parametrize(
    ("run_id", "step_id", "message"),
    [
        ("", "approve", "run id"),
        ("a:b", "approve", "run id"),
        ("a b", "approve", "run id"),
        ("x" * 201, "approve", "run id"),
        (RUN, "Approve", "step id"),
        (RUN, "1st", "step id"),
        (RUN, "a/b", "step id"),
        (RUN, "a" * 64, "step id"),
    ],
)
def test_unsafe_ids_are_refused(run_id: str, step_id: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_ids(run_id, step_id)
    with pytest.raises(ValueError, match=message):
        mailbox_keys("reflux", run_id, step_id)


def test_step_ids_follow_the_workflow_rule() -> None:
    # Every step id a workflow accepts has a mailbox.
    for step_id in ("a", "_x", "approve_2", "a" * 63):
        definition = {"id": "w", "steps": [{"id": step_id, "node": "transform@^1"}]}
        parse_workflow(definition, node_catalog=StaticNodeCatalog({"transform": ["1.0.0"]}))
        check_ids("run.1_a-b", step_id)


# -- deliveries and headers -----------------------------------------------------------------------


def test_delivery_round_trips_the_exact_bytes() -> None:
    body = b'{"b": 1,   "a": "\\u00e9"}'  # odd spacing and escapes: the HMAC covers these bytes
    at = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    delivery = Delivery(body, "t=1,v1=ab", {"user-agent": "t"}, at, "d-1", "POST", "/v1/x")
    back = Delivery.decode(delivery.encode())
    assert back == delivery
    # A version 1 record (stored before the path was kept) still decodes, without a path.
    old = json.loads(delivery.encode())
    del old["method"], old["path"]
    old["v"] = 1
    assert Delivery.decode(json.dumps(old).encode()).path is None
    assert back.payload() == {"b": 1, "a": "é"}
    assert Delivery(b"x").delivery_id != Delivery(b"x").delivery_id


@pytest.mark.parametrize(
    "raw",
    [b"junk", b"[]", b'{"v": 3}', b'{"v": 1, "headers": {}}', json.dumps({"v": 2}).encode()],
)
def test_foreign_records_do_not_decode(raw: bytes) -> None:
    with pytest.raises(ValueError, match="Expected a stored webhook delivery"):
        Delivery.decode(raw)


def test_only_harmless_headers_are_kept() -> None:
    kept = passed_headers(
        {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/1",
            "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": "72d3162e",
            "Idempotency-Key": "k1",
            "X-Request-Id": "r" * 5000,
            "Authorization": "Bearer t",
            "Cookie": "s=1",
            "X-Api-Key": "k",
            "X-Reflux-Signature": "sha256=00",
            "Stripe-Signature": "t=1,v1=00",
        }
    )
    assert kept == {
        "content-type": "application/json",
        "user-agent": "GitHub-Hookshot/1",
        "x-github-event": "pull_request",
        "x-github-delivery": "72d3162e",
        "idempotency-key": "k1",
        "x-request-id": "r" * 1024,
    }


# -- signatures -----------------------------------------------------------------------------------


STEP = "approve"
PATH = callback_path(RUN, STEP)


def _delivery(body: bytes, signature: str | None, path: str | None = PATH) -> Delivery:
    return Delivery(body, signature, path=path)


def test_signature_scheme_is_the_api_one() -> None:
    body = b'{"approved": true}'
    assert SIGNATURE_HEADER == API_SIGNATURE_HEADER == "Reflux-Signature"
    assert (
        signature_problem(
            SECRET, RUN, STEP, _delivery(body, sign_callback(SECRET, RUN, STEP, body))
        )
        is None
    )
    # Rotation: the step's secret is one of the two the sender signed with.
    rotated = sign_callback(["next", SECRET], RUN, STEP, body)
    assert signature_problem(SECRET, RUN, STEP, _delivery(body, rotated)) is None


@pytest.mark.parametrize(
    ("signature", "path", "why"),
    [
        (None, PATH, "missing"),
        ("  ", PATH, "missing"),
        ("sha256=" + "0" * 64, PATH, "malformed"),
        (sign_callback("other", RUN, STEP, b"{}"), PATH, "wrong"),
        # Signed with the secret itself instead of the run/step callback key.
        (sign(SECRET, "POST", PATH, b"{}"), PATH, "wrong"),
        # Valid for another run's step, stored (somehow) under this one.
        (
            sign_callback(SECRET, "other-run", STEP, b"{}"),
            callback_path("other-run", STEP),
            "addressed",
        ),
        (sign_callback(SECRET, RUN, STEP, b"{}"), None, "addressed"),
    ],
    # Fixed ids: signatures carry the time, and xdist workers must collect the same names.
    ids=["none", "blank", "malformed", "other-secret", "the-secret", "other-run", "no-path"],
)
def test_bad_signatures_say_why(signature: str | None, path: str | None, why: str) -> None:
    problem = signature_problem(SECRET, RUN, STEP, _delivery(b"{}", signature, path))
    assert problem is not None and why in problem and SECRET not in problem


def test_a_signature_covers_the_body_not_its_json_value() -> None:
    signed = sign_callback(SECRET, RUN, STEP, b'{"a":1}')
    assert signature_problem(SECRET, RUN, STEP, _delivery(b'{"a": 1}', signed)) is not None


def test_the_time_is_checked_against_when_the_api_received_it() -> None:
    body = b"{}"
    at = datetime(2025, 1, 2, tzinfo=UTC)
    old = sign_callback(SECRET, RUN, STEP, body, timestamp=int(at.timestamp()) - 10)
    kept = Delivery(body, old, received_at=at, path=PATH)
    assert signature_problem(SECRET, RUN, STEP, kept) is None  # waited in the mailbox: fine
    stale = sign_callback(SECRET, RUN, STEP, body, timestamp=int(at.timestamp()) - 3600)
    problem = signature_problem(SECRET, RUN, STEP, Delivery(body, stale, received_at=at, path=PATH))
    assert problem is not None and "too_old" in problem


# -- params ---------------------------------------------------------------------------------------


def test_params_defaults_and_bounds() -> None:
    node = WebhookTriggerNode()
    params = validate_params(node, {})
    assert (params.timeout_s, params.secret, params.expect) == (DEFAULT_WAIT_S, None, None)
    full = {"timeout_s": 5, "secret": "s", "expect": "approved == `true`"}
    assert validate_params(node, full) == WebhookTriggerInput.model_validate(full)
    for bad, path in [
        ({"timeout_s": 0}, "params.timeout_s"),
        ({"timeout_s": MAX_WAIT_S + 1}, "params.timeout_s"),
        ({"secret": ""}, "params.secret"),
        ({"expect": "approved =="}, "params.expect"),
        ({"expect": ""}, "params.expect"),
        ({"timeout": 5}, "params.timeout"),
    ]:
        with pytest.raises(NonRetryableNodeError, match=path) as info:
            validate_params(node, bad)
        assert info.value.error_class == "ValidationError"


def test_flags_and_manifest() -> None:
    node = next(n for n in builtin_nodes() if n.name == "webhook.trigger")
    assert isinstance(node, WebhookTriggerNode)
    assert (node.key, node.cacheable, node.side_effects, node.major) == (
        "webhook.trigger@1.0.0",
        False,
        True,
        1,
    )
    manifest = node.manifest()
    assert set(manifest["input_schema"]["properties"]) == {"timeout_s", "secret", "expect"}
    assert {"payload", "received_at", "headers", "delivery_id", "verified"} <= set(
        manifest["output_schema"]["properties"]
    )


# -- which deliveries resume the step -------------------------------------------------------------


def _params(**kw: object) -> WebhookTriggerInput:
    return WebhookTriggerInput.model_validate(kw)


def _signed(body: bytes, secret: str = SECRET) -> Delivery:
    return Delivery(body, sign_callback(secret, RUN, STEP, body), path=PATH)


def _refusal(params: WebhookTriggerInput, delivery: Delivery) -> tuple[str | None, object]:
    return refusal(params, delivery, RUN, STEP)


def test_without_secret_or_condition_any_json_resumes() -> None:
    assert _refusal(_params(), Delivery(b'"yes"')) == (None, "yes")
    assert _refusal(_params(), Delivery(b"null")) == (None, None)
    reason, _ = _refusal(_params(), Delivery(b"not json"))
    assert reason is not None and "not JSON" in reason


def test_secret_requires_a_matching_signature() -> None:
    body = b'{"approved": true}'
    assert _refusal(_params(secret=SECRET), _signed(body)) == (None, {"approved": True})
    for delivery in (_delivery(body, None), _signed(body, "wrong"), _delivery(body, "t=1,v1=00")):
        reason, payload = _refusal(_params(secret=SECRET), delivery)
        assert reason is not None and payload is None


def test_expect_filters_with_jmespath_truthiness() -> None:
    params = _params(expect="decision")
    assert _refusal(params, Delivery(b'{"decision": 0}')) == (None, {"decision": 0})  # 0 is true
    for body in (b'{"decision": ""}', b'{"decision": []}', b"{}", b'{"decision": false}'):
        reason, _ = _refusal(params, Delivery(body))
        assert reason is not None and "is false" in reason
    typed = _params(expect="abs(decision) > `1`")
    reason, _ = _refusal(typed, Delivery(b'{"decision": "x"}'))
    assert reason is not None and "failed on the payload" in reason


def test_signature_is_checked_before_the_condition() -> None:
    params = _params(secret=SECRET, expect="approved")
    reason, _ = _refusal(params, _delivery(b'{"approved": false}', None))
    assert reason is not None and "missing" in reason
    reason, _ = _refusal(params, _signed(b'{"approved": false}'))
    assert reason is not None and "is false" in reason
