"""meta.map and meta.switch in the pure core: validation paths, decide + fold (replay checked on
every decision by the Simulation), chunk bookkeeping, failure policies, per-item retries."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest

from processors.scheduler.decide import DecisionContext
from processors.scheduler.meta.map import MAX_CHUNK_SIZE, SPILL_BYTES, chunking
from processors.scheduler.state import RunState, RunStatus, StepStatus
from schemas.base import canonical_json
from schemas.models import (
    ErrorInfo,
    MapChunkDispatched,
    MapChunkFinished,
    MapStarted,
    NodeInvocation,
    PayloadRef,
    StepSkipped,
)
from tests.support.scheduler_simulation import Simulation
from workflows.node_catalog import StaticNodeCatalog
from workflows.validation import WorkflowValidationError, parse_workflow


def map_workflow(**params: Any) -> dict[str, Any]:
    return {
        "id": "mapper",
        "inputs": {"xs": {"type": "array", "required": True}},
        "steps": [
            {
                "id": "each",
                "node": "meta.map",
                "params": {
                    "items": "{{ inputs.xs }}",
                    "node": "transform@^1",
                    "params": {"expression": "@", "data": {"x": "{{ item }}", "i": "{{ index }}"}},
                    **params,
                },
                "retry": {"max_attempts": 2, "initial_backoff": "100ms"},
            },
            {
                "id": "after",
                "node": "transform@^1",
                "needs": ["each"],
                "params": {"expression": "@", "data": "{{ steps.each.output.succeeded }}"},
            },
        ],
        "outputs": {"results": "{{ steps.each.output.results }}"},
    }


def chunk_worker(fail: dict[int, ErrorInfo] | None = None, load: Any = None) -> Any:
    """Answers chunks as a worker does: one entry per item, in order (``load`` reads
    claim-checked params)."""
    fail = fail or {}

    def work(invocation: NodeInvocation) -> Any:
        if invocation.chunk is None:
            return {"result": invocation.params}
        entries = []
        params_list = invocation.params
        if invocation.params_ref is not None:
            params_list = load(invocation.params_ref)
        for params in params_list:
            index = params["data"]["i"]
            error = fail.get(index)
            if error is not None and (invocation.attempt == 1 or not error.retryable):
                entries.append({"error": error.model_dump(mode="json")})
            else:
                entries.append({"output": {"result": params["data"]}})
        return entries

    return work


def events_of(sim: Simulation, kind: type[Any]) -> list[Any]:
    return [e for e in sim.log if isinstance(e, kind)]


# -- validation -----------------------------------------------------------------------------------


def errors_of(definition: dict[str, Any], **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow(definition, **kwargs)
    return [(e.path, e.message) for e in caught.value.errors]


def test_map_params_errors_name_the_field_path() -> None:
    definition = map_workflow(concurrency=0, bogus=1)
    found = dict(errors_of(definition))
    assert "steps[0].params.concurrency" in found
    assert found["steps[0].params.bogus"] == "unknown field 'bogus'"

    definition = map_workflow(items="{{ item }}", on_failure="sometimes")
    assert any(p == "steps[0].params.on_failure" for p, _ in errors_of(definition))

    definition = map_workflow(items="{{ item }}")
    found = dict(errors_of(definition))
    assert "unknown name 'item'" in found["steps[0].params.items"]

    definition = map_workflow(items=5)
    assert dict(errors_of(definition))["steps[0].params.items"].startswith("expected")

    definition = map_workflow(node="meta.switch")
    assert "meta node" in dict(errors_of(definition))["steps[0].params.node"]

    definition = map_workflow()
    del definition["steps"][0]["params"]["node"]
    assert dict(errors_of(definition))["steps[0].params.node"].startswith("exactly one of")


def test_map_inner_node_is_checked_in_the_catalog_not_the_meta_node() -> None:
    catalog = StaticNodeCatalog({"transform": ["1.0.0"]})
    parse_workflow(map_workflow(), node_catalog=catalog)  # meta.map itself is not looked up
    found = dict(errors_of(map_workflow(node="transfrom@^1"), node_catalog=catalog))
    assert "unknown node 'transfrom'" in found["steps[0].params.node"]


def test_switch_params_errors_name_the_field_path() -> None:
    definition = switch_workflow()
    definition["steps"][1]["params"]["cases"] = {"a": ["nope"], "b": ["join"]}
    definition["steps"][1]["params"]["default"] = ["route"]
    found = errors_of(definition)
    assert (
        "steps[1].params.cases.a[0]",
        "unknown step 'nope' (known: pick, route, left, right, other, join)",
    ) in found
    assert (
        "steps[1].params.cases.b[0]",
        "step 'join' must list 'route' in its needs to be chosen by it",
    ) in found
    assert ("steps[1].params.default[0]", "switch 'route' cannot choose itself") in found
    definition = switch_workflow()
    definition["steps"][1]["params"]["cases"] = {}
    assert any(p == "steps[1].params.cases" for p, _ in errors_of(definition))


# -- map ------------------------------------------------------------------------------------------


def test_chunking_keeps_in_flight_items_under_the_cap() -> None:
    for items, cap in [(10_000, 16), (10_000, 1), (10, 1000), (3, 3), (100_000, 64)]:
        size, in_flight, per_chunk = chunking(items, cap, None)
        assert in_flight * per_chunk <= cap
        assert 1 <= size <= MAX_CHUNK_SIZE


def test_map_runs_every_item_in_chunks_with_outputs_in_order() -> None:
    sim = Simulation(map_workflow(concurrency=8))
    xs = list(range(1000))
    sim.start({"xs": xs})
    (started,) = events_of(sim, MapStarted)
    assert started.item_count == 1000 and started.items == xs
    assert started.max_chunks_in_flight * started.chunk_concurrency <= 8
    # never more chunks out than allowed
    work = chunk_worker()
    peak = 0
    while sim.run.status is RunStatus.RUNNING and sim.outstanding:
        peak = max(peak, len(sim.outstanding))
        invocation = next(iter(sim.outstanding.values()))
        sim._answer(invocation, work(invocation))
    sim.run_workers(work)
    assert peak <= started.max_chunks_in_flight
    assert sim.run.status is RunStatus.SUCCEEDED
    output = sim.run.steps["each"].output
    assert output["results"] == [{"result": {"x": x, "i": x}} for x in xs]
    assert output["errors"] == [] and output["succeeded"] == 1000 and output["failed"] == 0
    assert sim.run.outputs["results"][999] == {"result": {"x": 999, "i": 999}}
    chunks = events_of(sim, MapChunkDispatched)
    assert len(chunks) == len(events_of(sim, MapChunkFinished)) == -(-1000 // started.chunk_size)
    # a few dozen events, not one per item
    assert len(sim.log) < 100
    # chunk invocations carry the items' params and say how many may run at once
    first = sim.sent[0]
    assert first.chunk is not None and first.chunk.concurrency == started.chunk_concurrency
    assert first.step.node == "transform" and first.params[1] == {
        "expression": "@",
        "data": {"x": 1, "i": 1},
    }


def test_map_state_survives_a_snapshot_round_trip() -> None:
    sim = Simulation(map_workflow(concurrency=4, chunk_size=10))
    sim.start({"xs": list(range(50))})
    work = chunk_worker()
    sim._answer(next(iter(sim.outstanding.values())), work(next(iter(sim.outstanding.values()))))
    state = sim.run
    assert state.maps["each"].done == 10
    assert RunState.from_snapshot(state.to_snapshot()) == state


def test_map_with_no_items_succeeds_at_once() -> None:
    sim = Simulation(map_workflow())
    sim.start({"xs": []})
    assert sim.run.steps["each"].output == {
        "results": [],
        "errors": [],
        "succeeded": 0,
        "failed": 0,
    }
    assert [inv.step.step_id for inv in sim.sent] == ["after"]


def test_map_items_that_are_not_an_array_fail_the_step() -> None:
    sim = Simulation(map_workflow())
    sim.start({"xs": []})
    sim = Simulation(map_workflow(items="{{ inputs.xs[0] }}"))
    sim.start({"xs": [1]})
    assert sim.run.status is RunStatus.FAILED
    error = sim.run.steps["each"].error
    assert error is not None and "expected an array of items, got int" in error.message


BOOM = ErrorInfo(error_class="Boom", message="item exploded", retryable=False)


def test_fail_fast_fails_the_step_at_the_first_item_failure() -> None:
    sim = Simulation(map_workflow(concurrency=4, chunk_size=10))
    sim.start({"xs": list(range(100))})
    sim.run_workers(chunk_worker({17: BOOM}))
    assert sim.run.status is RunStatus.FAILED
    step = sim.run.steps["each"]
    assert step.status is StepStatus.FAILED
    assert step.error is not None and step.error.message == "item 17: item exploded"
    assert sim.run.failed_step == "each"
    # the chunks still out were abandoned: no more dispatches after the failure
    assert len(events_of(sim, MapChunkDispatched)) < 10


def test_collect_succeeds_with_per_item_errors() -> None:
    sim = Simulation(map_workflow(concurrency=4, chunk_size=10, on_failure="collect"))
    sim.start({"xs": list(range(30))})
    sim.run_workers(chunk_worker({3: BOOM, 29: BOOM}))
    assert sim.run.status is RunStatus.SUCCEEDED
    output = sim.run.steps["each"].output
    assert output["succeeded"] == 28 and output["failed"] == 2
    assert [e["index"] for e in output["errors"]] == [3, 29]
    assert output["errors"][0]["error"]["error_class"] == "Boom"
    assert output["results"][3] is None and output["results"][4] == {"result": {"x": 4, "i": 4}}


def test_items_are_retried_per_the_step_retry_spec() -> None:
    flaky = ErrorInfo(error_class="Flaky", message="try again", retryable=True)
    sim = Simulation(map_workflow(concurrency=4, chunk_size=10))
    sim.start({"xs": list(range(20))})
    sim.run_workers(chunk_worker({4: flaky, 12: flaky}))
    assert sim.run.status is RunStatus.SUCCEEDED
    retries = [e for e in events_of(sim, MapChunkDispatched) if e.item_attempt == 2]
    assert sorted(i for e in retries for i in e.item_indices) == [4, 12]
    finished = events_of(sim, MapChunkFinished)
    assert any(e.retry_items == [4] and e.retry_at is not None for e in finished)
    assert sim.run.steps["each"].output["results"][4] == {"result": {"x": 4, "i": 4}}


def test_retries_run_out_then_fail_fast() -> None:
    flaky = ErrorInfo(error_class="Flaky", message="again", retryable=True)

    def always(invocation: NodeInvocation) -> Any:
        return [
            {"error": flaky.model_dump(mode="json")}
            if p["data"]["i"] == 2
            else {"output": p["data"]}
            for p in invocation.params
        ]

    sim = Simulation(map_workflow(concurrency=2, chunk_size=5))
    sim.start({"xs": list(range(5))})
    sim.run_workers(always)
    assert sim.run.status is RunStatus.FAILED
    assert sim.run.steps["each"].error is not None
    assert sim.run.steps["each"].error.message == "item 2: again"


def test_late_chunk_results_after_a_failure_are_ignored() -> None:
    sim = Simulation(map_workflow(concurrency=4, chunk_size=5))
    sim.start({"xs": list(range(40))})
    work = chunk_worker({0: BOOM})
    first, *rest = list(sim.outstanding.values())
    sim._answer(first, work(first))
    assert sim.run.status is RunStatus.FAILED
    before = len(sim.log)
    for invocation in rest:
        sim._answer(invocation, work(invocation))
    assert len(sim.log) == before


def test_pause_holds_new_chunks_and_resume_dispatches_them() -> None:
    sim = Simulation(map_workflow(concurrency=4, chunk_size=5))
    sim.start({"xs": list(range(40))})
    sim.pause()
    work = chunk_worker()
    for invocation in list(sim.outstanding.values()):
        sim._answer(invocation, work(invocation))
    assert not sim.outstanding
    sim.resume()
    assert sim.outstanding
    sim.run_workers(work)
    assert sim.run.status is RunStatus.SUCCEEDED


# -- switch ---------------------------------------------------------------------------------------


def switch_workflow() -> dict[str, Any]:
    def t(step_id: str, needs: list[str]) -> dict[str, Any]:
        return {"id": step_id, "node": "transform@^1", "needs": needs, "params": {"v": 1}}

    return {
        "id": "switcher",
        "inputs": {"kind": {"type": "string", "required": True}},
        "steps": [
            t("pick", []),
            {
                "id": "route",
                "node": "meta.switch",
                "needs": ["pick"],
                "params": {
                    "value": "{{ inputs.kind }}",
                    "cases": {"a": ["left"], "b": ["right"]},
                    "default": ["other"],
                },
            },
            t("left", ["route"]),
            t("right", ["route"]),
            t("other", ["route"]),
            t("join", ["left"]),
        ],
    }


@pytest.mark.parametrize(
    ("kind", "ran", "case"),
    [("a", {"left", "join"}, "a"), ("b", {"right"}, "b"), ("zzz", {"other"}, None)],
)
def test_switch_runs_the_chosen_branch_and_skips_the_others(
    kind: str, ran: set[str], case: str | None
) -> None:
    sim = Simulation(switch_workflow())
    sim.start({"kind": kind})
    sim.run_workers(lambda inv: {"ok": inv.step.step_id})
    run = sim.run
    assert run.status is RunStatus.SUCCEEDED
    assert run.steps["route"].output == {"value": kind, "case": case, "default": case is None}
    succeeded = {s for s, st in run.steps.items() if st.status is StepStatus.SUCCEEDED}
    assert succeeded == {"pick", "route"} | ran
    skipped = {e.step.step_id: e.reason for e in events_of(sim, StepSkipped)}
    assert set(skipped) == {"left", "right", "other", "join"} - ran
    if "right" in skipped:
        chose = f"case {case!r}" if case else "no case (default)"
        assert skipped["right"] == f"switch 'route' chose {chose}"
    # the switch never goes to a worker
    assert all(inv.step.step_id != "route" for inv in sim.sent)


def test_switch_on_a_non_string_value_matches_its_json_text() -> None:
    definition = switch_workflow()
    definition["inputs"] = {"kind": {"type": "integer", "required": True}}
    definition["steps"][1]["params"]["cases"] = {"1": ["left"], "2": ["right"]}
    sim = Simulation(definition)
    sim.start({"kind": 2})
    sim.run_workers(lambda inv: {"ok": 1})
    assert sim.run.steps["route"].output["case"] == "2"
    assert sim.run.steps["right"].status is StepStatus.SUCCEEDED
    assert sim.run.steps["left"].status is StepStatus.SKIPPED


# -- claim checks and spills ---------------------------------------------------------------------


class StoringSimulation(Simulation):
    """With an in-memory object store: values over ``threshold`` bytes are claim-checked."""

    def __init__(self, *args: Any, threshold: int = 1000, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threshold = threshold
        self.blobs: dict[str, bytes] = {}

    def store(self, value: Any) -> PayloadRef | None:
        data = canonical_json(value).encode()
        if len(data) <= self.threshold:
            return None
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return PayloadRef(
            uri=f"mem://{digest}",
            size_bytes=len(data),
            sha256=digest,
            content_type="application/json",
        )

    def load(self, ref: PayloadRef) -> Any:
        return json.loads(self.blobs[ref.sha256])

    def context(self) -> DecisionContext:
        return dataclasses.replace(
            super().context(), store_payload=self.store, load_payload=self.load
        )


def test_large_maps_keep_the_run_state_small_by_spilling_results() -> None:
    sim = StoringSimulation(map_workflow(concurrency=4, chunk_size=10, on_failure="collect"))
    xs = [f"{i:04d}" + "x" * 400 for i in range(300)]
    sim.start({"xs": xs})
    (started,) = events_of(sim, MapStarted)
    assert started.items is None and started.items_ref is not None  # 120 kB of items
    sim.run_workers(chunk_worker(load=sim.load))
    assert sim.run.status is RunStatus.SUCCEEDED, sim.run.error
    assert any(inv.params_ref is not None for inv in sim.sent)  # chunk params claim-checked
    progress = sim.run.maps["each"]
    assert progress.spills, "results over the budget must have moved out of the state"
    assert progress.inline_bytes <= SPILL_BYTES
    # items (claim-checked) and results (spilled, output claim-checked) are out of the state:
    # the map's part of it stays within the budget, whatever the items and outputs weigh
    assert len(progress.model_dump_json()) < 2 * SPILL_BYTES
    step = sim.run.steps["each"]
    assert step.output is None and step.output_ref is not None
    output = sim.load(step.output_ref)
    assert output["results"] == [{"result": {"x": x, "i": i}} for i, x in enumerate(xs)]
    finished = events_of(sim, MapChunkFinished)
    assert any(e.spill_ref is not None for e in finished)
    assert RunState.from_snapshot(sim.run.to_snapshot()) == sim.run


def test_a_redriven_map_starts_a_new_attempt_and_ignores_the_old_chunks() -> None:
    sim = Simulation(map_workflow(concurrency=4, chunk_size=5))
    sim.start({"xs": list(range(20))})
    work = chunk_worker({2: BOOM})
    first, *stale = list(sim.outstanding.values())
    sim._answer(first, work(first))
    assert sim.run.status.value == "failed"
    redriven = sim.redrive("each").state
    assert redriven is not None and redriven.status is RunStatus.RUNNING
    assert [e.attempt for e in events_of(sim, MapStarted)] == [1, 2]
    before = len(sim.log)
    for invocation in stale:  # chunks of the first map attempt
        sim._answer(invocation, work(invocation))
    assert len(sim.log) == before
    sim.run_workers(chunk_worker())
    assert sim.run.status is RunStatus.SUCCEEDED
    assert sim.run.steps["each"].attempt == 2


def test_cancel_ends_a_map_and_later_chunk_results_change_nothing() -> None:
    sim = Simulation(map_workflow(concurrency=4, chunk_size=5))
    sim.start({"xs": list(range(20))})
    sim.cancel("enough")
    assert sim.run.steps["each"].status is StepStatus.CANCELLED
    before = len(sim.log)
    work = chunk_worker()
    for invocation in list(sim.outstanding.values()):
        sim._answer(invocation, work(invocation))
    assert len(sim.log) == before


def test_a_switch_whose_value_cannot_render_fails_the_step() -> None:
    definition = switch_workflow()
    definition["steps"][1]["params"]["value"] = "{{ abs(inputs.kind) }}"
    sim = Simulation(definition)
    sim.start({"kind": "a"})
    sim.run_workers(lambda inv: {"ok": 1})
    assert sim.run.status is RunStatus.FAILED
    assert sim.run.failed_step == "route"
    error = sim.run.steps["route"].error
    assert error is not None and error.error_class == "TemplateError"
    assert "steps.route.params.value" in error.message


def test_a_failed_map_step_replaced_by_an_ordinary_node_runs_as_one() -> None:
    definition = map_workflow(concurrency=4, chunk_size=5)
    definition["steps"][0]["params"]["params"] = {"expression": "`1`"}  # valid either way
    sim = Simulation(definition)
    sim.start({"xs": list(range(10))})

    def failing(inv: NodeInvocation) -> Any:
        if inv.chunk is not None:
            return [{"error": BOOM.model_dump(mode="json")} for _ in inv.params]
        return {"result": inv.step.step_id}

    sim.run_workers(failing)
    assert sim.run.steps["each"].status is StepStatus.FAILED
    sim.mutate("replace_node", "each", {"node": "transform", "node_version": "^1"})
    assert not sim.rejections
    sim.redrive("each")
    invocation = sim.invocation("each")
    assert invocation.chunk is None  # an ordinary attempt now, its result taken as usual
    sim.run_workers(failing)
    assert sim.run.status is RunStatus.SUCCEEDED
    assert sim.run.steps["each"].output == {"result": "each"}
