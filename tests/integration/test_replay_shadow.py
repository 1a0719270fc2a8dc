"""The A/B replay engine on the real services (processors/replay/shadow.py, ADR 0029).

The "production" is a test engine (its own prefix and schema); the replay runs a shadow engine
next to it. A local HTTP service counts the side-effecting calls: none may happen during a
replay, and the production topics, read models and cache keys must be the same before and after.
"""

from __future__ import annotations

import itertools
from typing import Any

import psycopg
import pytest
import redis

from node_workers.node import Node, NodeContext, NodeModel
from node_workers.nodes import builtin_nodes
from node_workers.registry import NodeRegistry
from processors.replay.determinism import check_determinism, first_divergence, normalize
from processors.replay.recorded import REPLAY_NO_RECORD
from processors.replay.report import build_report
from processors.replay.shadow import (
    Candidate,
    EffectPolicy,
    ReplayError,
    Selection,
    ShadowReplay,
)
from projections.postgres import queries
from schemas import serde
from streams.admin import admin_client
from streams.topics import TopicCatalog
from tests.integration.engine_fixtures import Harness, HarnessFactory, transform
from tests.integration.http_fixtures import HttpTestServer
from tests.support.kafka_log import read_log
from tests.support.waiting import eventually


def order_flow(url: str, expression: str) -> dict[str, Any]:
    """POST the order (a side effect), shape the answer (``expression``), POST a notification."""
    return {
        "id": "orders",
        "inputs": {"order": {"type": "string", "required": True}},
        "steps": [
            {
                "id": "post",
                "node": "http.request@^1",
                "params": {
                    "url": f"{url}/echo",
                    "method": "POST",
                    "json": {"order": "{{ inputs.order }}"},
                },
            },
            transform("shape", expression, "{{ steps.post.output.body }}", needs=["post"]),
            {
                "id": "notify",
                "node": "http.request@^1",
                "params": {
                    "url": f"{url}/echo",
                    "method": "POST",
                    "json": {"shaped": "{{ steps.shape.output.result }}"},
                },
                "needs": ["shape"],
            },
        ],
        "outputs": {"shaped": "{{ steps.shape.output.result }}"},
    }


def production_state(harness: Harness) -> dict[str, Any]:
    """What a replay must not touch: the production topics, read-model rows, cache keys."""
    prefix = harness.settings.topic_prefix
    topics = sorted(
        t
        for t in admin_client(harness.settings).list_topics(timeout=10).topics
        if t.startswith(prefix + ".")
    )
    counts = {}
    with harness.conn() as conn:
        for name in ("runs", "steps", "run_events", "workflows"):
            row = conn.execute(f'SELECT count(*) FROM "{harness.schema}".{name}').fetchone()
            counts[name] = row[0] if row else None
    keys = {}
    for url in (harness.settings.redis_url, harness.settings.ledger_redis_url):
        client = redis.Redis.from_url(url)
        keys[url] = sorted(client.scan_iter(match=f"{prefix}:*", count=1000))
        client.close()
    return {"topics": topics, "rows": counts, "keys": keys}


def shadow_leftovers(harness: Harness, replay: ShadowReplay) -> dict[str, Any]:
    root = replay.prefix_root
    admin = admin_client(harness.settings)
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(root)]
    groups = [
        g.group_id
        for g in admin.list_consumer_groups().result(timeout=10).valid
        if g.group_id.startswith(root)
    ]
    with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
        schemas = [
            r[0]
            for r in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                (replay.schema_root + "%",),
            ).fetchall()
        ]
    keys = []
    for url in (harness.settings.redis_url, harness.settings.ledger_redis_url):
        client = redis.Redis.from_url(url)
        keys += list(client.scan_iter(match=f"{root}*", count=1000))
        client.close()
    return {"topics": topics, "groups": groups, "schemas": schemas, "keys": keys}


def test_a_fixing_candidate_turns_failures_into_successes_without_side_effects(
    harness: Harness, http: HttpTestServer
) -> None:
    harness.register(order_flow(http.url, "json.[order"), version=1)  # invalid JMESPath
    runs = [harness.start("orders", {"order": f"o-{n}"}) for n in range(3)]
    for run_id in runs:
        assert harness.wait(run_id).status == "failed"
    harness.register(order_flow(http.url, "json.order"), version=2)  # the fix
    assert len(http.requests_to("/echo")) == 3  # the originals' POSTs; notify never ran
    # The "before" picture includes version 2's row: projected asynchronously after the send.
    eventually(
        lambda: production_state(harness)["rows"]["workflows"],
        20,
        "the projection to hold both workflow versions",
        until=lambda n: n == 2,
    )
    before = production_state(harness)
    http.reset()
    seen: list[tuple[int, int]] = []

    with ShadowReplay(
        harness.settings, "fix", schema=harness.schema, progress=lambda d, t: seen.append((d, t))
    ) as replay:
        selected = replay.select(Selection(workflow_id="orders", status="failed", sample_size=10))
        assert sorted(selected) == sorted(runs)
        # Filters: inputs (JMESPath), version, sample size (newest first, deterministic).
        assert replay.select(Selection(workflow_id="orders", inputs_filter="order == 'o-1'")) == [
            runs[1]
        ]
        assert replay.select(Selection(workflow_id="orders", workflow_version=2)) == []
        newest = replay.select(Selection(workflow_id="orders", sample_size=2))
        assert newest == selected[:2] == replay.select(Selection("orders", sample_size=2))
        with pytest.raises(ReplayError, match=r"selection\.inputs_filter"):
            replay.select(Selection(workflow_id="orders", inputs_filter="order =="))
        with pytest.raises(ReplayError, match=r"candidate\.node_pins\.http\.request"):
            replay.run(selected, Candidate(workflow_version=2, node_pins={"http.request": "9.9.9"}))
        # notify never ran in the originals: no record -> a declared stub answers it.
        pairs = replay.run(
            selected,
            Candidate(workflow_version=2),
            EffectPolicy(
                per_node={"http.request": "stub"}, stubs={"http.request": {"status": 202}}
            ),
        )
        during = production_state(harness)
    after = production_state(harness)
    leftovers = shadow_leftovers(harness, replay)

    assert http.requests_to("/echo") == []  # no side effect repeated, none called
    by_run = {p.original.run_id: p for p in pairs}
    for n, run_id in enumerate(runs):
        pair = by_run[run_id]
        assert (pair.original.status, pair.original.error_class) == ("failed", "TransformError")
        assert pair.candidate.status == "succeeded"
        assert pair.candidate.outputs == {"shaped": f"o-{n}"}
        steps = pair.candidate.steps
        assert steps["post"].served == "record" and steps["post"].calls == 0
        assert steps["post"].output == pair.original.steps["post"].output
        assert steps["shape"].served == "executed" and steps["shape"].status == "succeeded"
        assert steps["notify"].served == "stub" and steps["notify"].output == {"status": 202}
    assert seen[-1] == (3, 3)
    assert before == during == after
    assert leftovers == {"topics": [], "groups": [], "schemas": [], "keys": []}


def test_a_changed_side_effect_without_a_policy_fails_with_replay_no_record(
    harness: Harness, http: HttpTestServer
) -> None:
    flow = order_flow(http.url, "json.order")
    harness.register(flow, version=1)
    run_id = harness.start("orders", {"order": "x"})
    assert harness.wait(run_id).status == "succeeded"
    changed = order_flow(http.url + "/", "json.order")  # other params for both POSTs
    http.reset()
    with ShadowReplay(harness.settings, "norecord", schema=harness.schema) as replay:
        with pytest.raises(ReplayError, match=r"run_ids: run 'nope' has no recorded log"):
            replay.run(["nope"], Candidate(workflow_version=1))
        [pair] = replay.run([run_id], Candidate(definition=changed))
        # A second round in the same replay: the same version with http.request pinned.
        [pinned] = replay.run(
            [run_id], Candidate(workflow_version=1, node_pins={"http.request": "1.0.0"})
        )
    assert shadow_leftovers(harness, replay) == {
        "topics": [],
        "groups": [],
        "schemas": [],
        "keys": [],
    }
    assert http.log == []
    assert pinned.candidate.status == "succeeded"
    assert pinned.candidate.outputs == pinned.original.outputs == {"shaped": "x"}
    assert pinned.candidate.steps["notify"].served == "record"
    assert pair.original.status == "succeeded"
    assert (pair.candidate.status, pair.candidate.error_class) == ("failed", REPLAY_NO_RECORD)
    assert pair.candidate.steps["post"].status == "failed"


class CoinInput(NodeModel):
    seed: str = ""


class CoinOutput(NodeModel):
    value: int


_TOSSES = itertools.count()


class CoinNode(Node[CoinInput, CoinOutput]):
    """Nondeterministic on purpose: a new number at every call, whatever the params."""

    name = "test.coin"
    version = "1.0.0"
    Input = CoinInput
    Output = CoinOutput

    async def execute(self, params: CoinInput, ctx: NodeContext) -> CoinOutput:
        return CoinOutput(value=next(_TOSSES))


def coin_nodes() -> NodeRegistry:
    return NodeRegistry([*builtin_nodes(), CoinNode()])


def test_determinism_is_reported_and_nondeterminism_detected(
    engine_harness: HarnessFactory, http: HttpTestServer
) -> None:
    harness = engine_harness(nodes=coin_nodes())
    harness.register(order_flow(http.url, "json.order"), version=1)
    steady = harness.start("orders", {"order": "s"})
    harness.register(
        {
            "id": "coin",
            "inputs": {"s": {"type": "string", "required": True}},
            "steps": [
                {"id": "toss", "node": "test.coin@^1", "params": {"seed": "{{ inputs.s }}"}},
                transform(
                    "double", "[v, v]", {"v": "{{ steps.toss.output.value }}"}, needs=["toss"]
                ),
            ],
            "outputs": {"pair": "{{ steps.double.output.result }}"},
        }
    )
    tossed = harness.start("coin", {"s": "a"})
    assert harness.wait(steady).status == "succeeded"
    assert harness.wait(tossed).status == "succeeded"
    http.reset()

    report = check_determinism(harness.settings, steady, schema=harness.schema)
    assert (report.deterministic, report.first_divergence) == (True, None), str(report)[:3000]
    assert http.log == []

    report = check_determinism(harness.settings, tossed, schema=harness.schema, nodes=coin_nodes())
    assert report.deterministic is False
    divergence = report.first_divergence
    assert divergence is not None
    assert divergence["step_id"] == "toss"
    assert divergence["expected"]["type"] == divergence["actual"]["type"] == "StepSucceeded"
    assert divergence["expected"]["output"] != divergence["actual"]["output"]
    assert divergence["seq"] is not None


def test_fold_mode_equals_engine_mode_and_writes_the_shadow_run_log(
    harness: Harness, http: HttpTestServer
) -> None:
    """The fold (ADR 0036) against the shadow engine on the same runs: the same outcomes, the
    same served/calls, each run's log on the shadow ``runs`` topic, deterministic against the
    original; folded in two forked processes, whose logs come back as the records they wrote."""
    harness.register(order_flow(http.url, "json.order"), version=1)
    runs = [harness.start("orders", {"order": f"o-{n}"}) for n in range(4)]
    for run_id in runs:
        assert harness.wait(run_id).status == "succeeded"
    http.reset()
    before = production_state(harness)

    with ShadowReplay(harness.settings, "engine", schema=harness.schema, mode="engine") as replay:
        engine_pairs = replay.run(runs, Candidate(workflow_version=1))
        assert replay.last_mode == "engine"
    with ShadowReplay(harness.settings, "fold", schema=harness.schema, processes=2) as replay:
        fold_pairs = replay.run(runs, Candidate(workflow_version=1))
        assert replay.last_mode == "fold"
        shadow = replay.shadow_settings
        assert shadow is not None and shadow.topic_prefix.startswith(replay.prefix_root)
        spec = TopicCatalog.from_settings(shadow).runs
        written = [
            serde.decode(value or b"")
            for _, _, value in read_log(shadow, spec.topic, spec.partitions)
        ]
        for run_id in runs:
            log = replay.candidate_events(run_id)
            assert [e.seq for e in log] == list(range(len(log)))
            on_topic = [e for e in written if getattr(e, "run_id", None) == run_id]
            assert [normalize(e) for e in on_topic] == [normalize(e) for e in log]
            assert first_divergence(replay.original_events(run_id), log) is None
    leftovers = shadow_leftovers(harness, replay)

    def view(pair: Any) -> Any:
        candidate = pair.candidate
        steps = {
            step_id: (s.status, s.served, s.calls, s.attempts, s.output)
            for step_id, s in candidate.steps.items()
        }
        return (candidate.run_id, candidate.status, candidate.outputs, steps)

    assert [view(p) for p in fold_pairs] == [view(p) for p in engine_pairs]
    assert [p.original for p in fold_pairs] == [p.original for p in engine_pairs]
    assert fold_pairs[0].candidate.steps["post"].served == "record"
    assert http.log == []
    assert production_state(harness) == before
    assert leftovers == {"topics": [], "groups": [], "schemas": [], "keys": []}


def fan_out(url: str, chained: bool) -> dict[str, Any]:
    """Three 150 ms GETs (re-executed by a replay: they have no side effect), one after the
    other (``chained``) or all at once."""
    steps: list[dict[str, Any]] = []
    for i, step_id in enumerate("abc"):
        step: dict[str, Any] = {
            "id": step_id,
            "node": "http.request@^1",
            "params": {"url": f"{url}/slow?ms=150&k={{{{ inputs.k }}}}&s={step_id}"},
        }
        if chained and i:
            step["needs"] = ["abc"[i - 1]]
        steps.append(step)
    return {
        "id": "fan",
        "inputs": {"k": {"type": "integer", "required": True}},
        "steps": steps,
        "outputs": {"slept": "{{ steps.c.output.body.slept_ms }}"},
    }


WAVES = 5


def test_a_parallelised_candidate_replays_better_at_the_recorded_pace(
    harness: Harness, http: HttpTestServer
) -> None:
    """ADR 0038: runs recorded two at a time are replayed two at a time (``pace: recorded``),
    and the latency compared is the wall time of the re-executed steps, so running the three
    calls together is measured as the gain it is (their sum would be unchanged)."""
    harness.register(fan_out(http.url, chained=True), version=1)
    runs: list[str] = []
    # Ten runs: with six, one slow attempt on a loaded machine left the Mann-Whitney test at
    # p=0.04 (no_difference); ten give it room.
    for wave in range(WAVES):
        started = [harness.start("fan", {"k": 2 * wave + n}) for n in range(2)]
        for run_id in started:
            assert harness.wait(run_id).status == "succeeded"
        runs += started
    harness.register(fan_out(http.url, chained=False), version=2)

    def registered() -> bool:
        with harness.conn() as conn:
            return queries.get_workflow(conn, "fan", 2, schema=harness.schema) is not None

    eventually(registered, 30, "version 2 of fan in the read model")
    http.reset()

    with ShadowReplay(harness.settings, "paced", schema=harness.schema) as replay:
        pairs = replay.run(runs, Candidate(workflow_version=2), EffectPolicy(pace="recorded"))
        assert replay.last_mode == "fold"
        assert replay.last_runs_in_flight == 2  # the originals ran in waves of two
    # Two runs at once, each with its three calls together; all runs at once would be 30.
    assert 3 <= http.in_flight_max <= 6
    assert len(http.requests_to("/slow")) == 3 * 2 * WAVES
    aggregate, _ = build_report(pairs)
    assert aggregate["outputs_equal"] == 2 * WAVES
    assert aggregate["verdict"] == "better", aggregate["comparison"]["reason"]
    work = aggregate["executed_steps_ms"]
    assert work["original"]["p50"] >= 450.0  # three 150 ms calls one after the other
    assert work["candidate"]["p50"] < 300.0  # the same three at once
