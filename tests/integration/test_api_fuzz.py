"""schemathesis over the live API on the real engine (issue 12, "accepted means applied").

The app runs on its own topic prefix and Postgres schema (the ``harness`` fixture), so what the
fuzzer registers, promotes or deprecates cannot reach another test's catalog. Every operation of
the OpenAPI document gets generated requests (a fixed seed); the test fails on any 5xx, any
answer the document does not describe (status, content type, body schema, headers), a 405
without a correct ``Allow``, any accepted write that never shows up in the read model, and any
dead letter the projector wrote meanwhile.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from schemas.models import DeadLetter
from streams.consumer import Consumer
from tests.integration.engine_fixtures import Harness, api_client
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(300)

EXAMPLES_PER_OPERATION = 24
"""With ~60 operations: ~1,500 generated requests (plus one wrong-method probe per path)."""

WAIT_MS_CAP = 50
"""Generated ``wait_ms`` is capped: the fuzzer's 30 s waits would only measure the clock."""

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture
def api_headers() -> dict[str, str]:
    """Headers every fuzzed request carries (authentication adds its admin key here)."""
    return {"X-Reflux-User": "fuzzer"}


@pytest.fixture
def client(harness: Harness) -> Iterator[TestClient]:
    with api_client(harness) as api:
        yield api


@dataclass
class Tally:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    accepted: list[tuple[str, str]] = field(default_factory=list)
    """(what, read-model URL) of every 2xx write, checked for visibility at the end."""

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


def _cap_wait(case: Any) -> None:
    if isinstance(case.query, dict) and isinstance(case.query.get("wait_ms"), int):
        case.query["wait_ms"] = min(max(case.query["wait_ms"], 0), WAIT_MS_CAP)
    if isinstance(case.body, dict) and isinstance(case.body.get("wait_ms"), int):
        case.body["wait_ms"] = min(max(case.body["wait_ms"], 0), WAIT_MS_CAP)


def _send(client: TestClient, case: Any, headers: dict[str, str]) -> Any:
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
    data = kwargs.pop("data", None)
    if data is not None:
        if isinstance(data, (bytes, str)):
            kwargs["content"] = data
        else:
            kwargs["data"] = data
    kwargs.pop("timeout", None)
    kwargs.pop("verify", None)
    kwargs.pop("allow_redirects", None)
    return client.request(**kwargs)


def _applied_url(method: str, path: str, response: Any) -> str | None:
    """Where the read model shows what a 2xx write did (None: nothing to look at)."""
    if method == "GET" or response.status_code >= 300:
        return None
    body = response.json() if response.headers.get("content-type", "").startswith("app") else {}
    location = response.headers.get("location")
    if location:
        return str(location)
    if path == "/v1/runs" and body.get("run_id"):
        return f"/v1/runs/{body['run_id']}"
    if path == "/v1/mutations" and body.get("mutation_id"):
        return f"/v1/mutations/{body['mutation_id']}"
    if path == "/v1/replays" and body.get("replay_id"):
        return f"/v1/replays/{body['replay_id']}"
    if path.startswith("/v1/nodes/") and body.get("event_id"):
        return f"/v1/nodes/{body['name']}/versions/{body['version']}"
    return None


SEED_WORKFLOW: dict[str, Any] = {
    "id": "fuzzed",
    "steps": [{"id": "say", "node": "transform@^1", "params": {"expression": "`1`", "data": {}}}],
}


@dataclass(frozen=True)
class Seeds:
    """Things that exist, so generated requests also reach past the 404s: a third of each
    operation's cases name them instead of random ids."""

    workflow_id: str
    run_id: str
    mutation_id: str
    node: str
    node_version: str

    def path_parameters(self, path: str) -> dict[str, Any]:
        known: dict[str, Any] = {
            "workflow_id": self.workflow_id,
            "run_id": self.run_id,
            "run_a": self.run_id,
            "run_b": self.run_id,
            "step_id": "say",
            "mutation_id": self.mutation_id,
            "name": self.node,
            "version": self.node_version if path.startswith("/v1/nodes") else 1,
        }
        return {name: value for name, value in known.items() if "{" + name + "}" in path}

    def into_body(self, case: Any) -> Any:
        if isinstance(case.body, dict) and "workflow_id" in case.body:
            case.body["workflow_id"] = self.workflow_id
        return case


def _seed(client: TestClient, headers: dict[str, str]) -> Seeds:
    assert client.post("/v1/workflows", json=SEED_WORKFLOW, headers=headers).status_code == 201
    eventually(
        lambda: client.get("/v1/workflows/fuzzed", headers=headers).status_code,
        20,
        "the seed workflow in the read model",
        until=lambda status: status == 200,
    )
    run = client.post(
        "/v1/runs", json={"workflow_id": "fuzzed", "wait_ms": 20_000}, headers=headers
    )
    assert run.status_code == 200, run.text
    node = client.post(
        "/v1/nodes",
        json={"name": "fuzz.seed", "version": "1.0.0"},
        params={"wait_ms": 20_000},
        headers=headers,
    )
    assert node.status_code == 202 and node.json()["applied"], node.text
    proposal = client.post(
        "/v1/mutations",
        json={
            "workflow_id": "fuzzed",
            "changes": [{"type": "update_params", "step_id": "say", "data": {"data": {"x": 1}}}],
            "rationale": "seed",
        },
        headers=headers,
    )
    assert proposal.status_code in (200, 202), proposal.text
    return Seeds(
        "fuzzed", run.json()["run_id"], proposal.json()["mutation_id"], "fuzz.seed", "1.0.0"
    )


def _fuzz_operation(
    client: TestClient, operation: Any, headers: dict[str, str], tally: Tally, seeds: Seeds
) -> None:
    label = f"{operation.method.upper()} {operation.path}"
    known = seeds.path_parameters(operation.path)
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        operation.as_strategy(
            generation_mode=GenerationMode.POSITIVE, path_parameters=known or None
        ).map(seeds.into_body),
    )

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,  # a fixed seed: the same requests every run
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        _cap_wait(case)
        response = _send(client, case, headers)
        tally.statuses[(label, response.status_code)] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except Exception as exc:
            tally.failures.append(f"{label} -> {response.status_code}: {exc}"[:1500])
            return
        where = _applied_url(operation.method.upper(), operation.path, response)
        if where is not None:
            tally.accepted.append((f"{label} -> {response.status_code}", where))

    run()


def _wrong_method(client: TestClient, path: str, allowed: set[str], tally: Tally) -> None:
    """One method the path does not serve: 405 and an ``Allow`` naming exactly what it does."""
    concrete = path.replace("{", "").replace("}", "")
    wrong = next(m for m in ("PATCH", "DELETE", "PUT", "POST") if m not in allowed)
    response = client.request(wrong, concrete)
    tally.statuses[(f"{wrong} {path} (wrong method)", response.status_code)] += 1
    allow = {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()}
    if response.status_code != 405 or not allowed <= allow:
        tally.failures.append(
            f"{wrong} {concrete}: expected 405 with Allow ⊇ {sorted(allowed)}, got "
            f"{response.status_code} Allow={sorted(allow)}"
        )


def _visible(client: TestClient, url: str, headers: dict[str, str]) -> Callable[[], bool]:
    # A write the projector refused never shows up here (and leaves a dead letter).
    return lambda: client.get(url, headers=headers).status_code == 200


def _dead_letters(harness: Harness) -> list[DeadLetter]:
    catalog = harness.engine.catalog
    consumer = Consumer(
        [catalog.dlq.topic], f"fuzz-dlq-{uuid.uuid4().hex[:6]}", harness.settings, catalog=catalog
    )
    letters: list[DeadLetter] = []
    try:
        deadline = time.monotonic() + 3.0  # the projector has applied everything by now
        while time.monotonic() < deadline:
            for record in consumer.poll_batch(timeout=0.3):
                if isinstance(record.value, DeadLetter):
                    letters.append(record.value)
    finally:
        consumer.close()
    return letters


def test_fuzz_the_live_api(
    harness: Harness, client: TestClient, api_headers: dict[str, str]
) -> None:
    document = client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    tally = Tally()
    seeds = _seed(client, api_headers)
    started = time.monotonic()
    methods_by_path: dict[str, set[str]] = {}
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            tally.failures.append(f"an operation schemathesis cannot read: {result.err()}")
            continue
        operation = result.ok()
        methods_by_path.setdefault(operation.path, set()).add(operation.method.upper())
        _fuzz_operation(client, operation, api_headers, tally, seeds)
    for path, methods in methods_by_path.items():
        _wrong_method(client, path, methods, tally)
    fuzz_s = time.monotonic() - started

    unapplied: list[str] = []
    for what, url in tally.accepted:
        try:
            eventually(_visible(client, url, api_headers), 20, f"{what}: {url}", until=bool)
        except AssertionError:
            unapplied.append(f"{what}: {url} never became visible")
    letters = _dead_letters(harness)

    per_operation: Counter[str] = Counter()
    for (label, _status), count in tally.statuses.items():
        per_operation[label] += count
    print(
        f"\nfuzzed {tally.requests} requests over {len(per_operation)} operations in {fuzz_s:.1f} s"
    )
    for label in sorted(per_operation):
        statuses = {s: c for (lbl, s), c in sorted(tally.statuses.items()) if lbl == label}
        print(f"  {label}: {per_operation[label]} {statuses}")
    five_xx = sum(c for (_l, s), c in tally.statuses.items() if s >= 500)
    print(
        f"5xx: {five_xx}, schema violations: {len(tally.failures)}, accepted writes: "
        f"{len(tally.accepted)}, unapplied: {len(unapplied)}, dead letters: {len(letters)}"
    )
    assert tally.requests >= 1000
    assert not tally.failures, "\n".join(tally.failures[:20])
    assert five_xx == 0
    assert not unapplied, "\n".join(unapplied[:20])
    assert not letters, [(d.original_topic, d.error_class, d.reason) for d in letters[:10]]
