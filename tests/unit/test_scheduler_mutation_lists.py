"""``MutateGraph`` with a ``mutations`` list (v2, ADR 0022 addendum): all or nothing, in order,
one ``GraphMutated`` per operation, or one ``CommandRejected`` naming ``mutations[i]``."""

from __future__ import annotations

from typing import Any

from processors.scheduler import fold
from schemas.models import (
    CommandRejected,
    GraphMutated,
    GraphMutation,
    GraphMutationType,
    MutateGraph,
)
from schemas.run_log import schedules_step
from tests.support.scheduler_simulation import Simulation
from workflows import StaticNodeCatalog

THREE = """
id: m
steps:
  - {id: a, node: transform@^1}
  - {id: b, node: transform@^1, needs: [a]}
  - {id: c, node: transform@^1, needs: [b], params: {v: "{{ steps.b.output }}"}}
outputs: {v: "{{ steps.c.output }}"}
"""


def _sim() -> Simulation:
    sim = Simulation(
        THREE,
        node_catalog=StaticNodeCatalog({"transform": ["1.0.0"], "http.request": ["1.0.0"]}),
    )
    sim.start()
    return sim


def test_a_list_applies_in_order_each_operation_seeing_the_previous_ones() -> None:
    sim = _sim()
    before = sim.run.last_seq
    # Insert `b2` between b and c: add it, then rewire c onto it (c's needs change only by
    # removing and re-adding it; the outputs reference c, so only the final graph is valid).
    d = sim.mutate_all(
        [
            ("add_step", "b2", {"node": "transform@^1", "needs": ["b"], "params": {"x": 1}}),
            ("remove_step", "c", {}),
            (
                "add_step",
                "c",
                {"node": "transform@^1", "needs": ["b2"], "params": {"v": "{{ steps.b2.output }}"}},
            ),
        ],
        requested_by="alice",
        reason="insert b2",
    )
    assert d.rejection is None
    mutated = [e for e in d.events if isinstance(e, GraphMutated)]
    assert [(e.mutation.type, e.mutation.step_id) for e in mutated] == [
        (GraphMutationType.ADD_STEP, "b2"),
        (GraphMutationType.REMOVE_STEP, "c"),
        (GraphMutationType.ADD_STEP, "c"),
    ]
    assert [e.seq for e in d.events] == list(range(before + 1, before + 1 + len(d.events)))
    assert all(e.requested_by == "alice" and e.reason == "insert b2" for e in mutated)
    assert all(e.causation_id == mutated[0].causation_id for e in mutated)
    assert sim.run.step_definition("c").needs == ("b2",)
    assert sim.run.step_definition("c").params == {"v": "{{ steps.b2.output }}"}
    assert fold(sim.log) == sim.run  # replay equality


def test_the_same_change_one_mutation_at_a_time_is_refused() -> None:
    sim = _sim()
    sim.mutate("add_step", "b2", {"node": "transform@^1", "needs": ["b"]})
    d = sim.mutate("remove_step", "c", {})
    assert d.rejection == (
        "Expected a valid graph after the mutation, but outputs.v: unknown step 'c' "
        "(known: a, b, b2)"
    )


def test_an_illegal_operation_rejects_the_whole_list_and_names_its_index() -> None:
    sim = _sim()
    graph, last_seq = sim.run.graph, sim.run.last_seq
    d = sim.mutate_all(
        [
            ("add_step", "z", {"node": "transform@^1", "needs": ["c"]}),
            ("remove_step", "a", {}),  # dispatched: not pending
            ("update_params", "b", {"n": 2}),
        ]
    )
    assert d.rejection == "mutations[1]: Expected step 'a' to be pending, but it is dispatched"
    (event,) = d.events
    assert isinstance(event, CommandRejected) and event.seq == last_seq + 1
    assert sim.run.graph == graph  # the valid first operation was not applied either
    assert "z" not in sim.run.steps
    assert fold(sim.log) == sim.run


def test_a_later_operation_is_checked_against_the_earlier_ones() -> None:
    sim = _sim()
    # The second add collides with the first; the third needs a step the list removed.
    d = sim.mutate_all(
        [
            ("add_step", "z", {"node": "transform@^1", "needs": ["c"]}),
            ("add_step", "z", {"node": "transform@^1"}),
        ]
    )
    assert d.rejection == "mutations[1]: Expected step 'z' not to exist, but it is pending"
    d = sim.mutate_all(
        [
            ("add_step", "z", {"node": "transform@^1", "needs": ["c"]}),
            ("remove_step", "z", {}),
            ("add_step", "y", {"node": "transform@^1", "needs": ["z"]}),
        ]
    )
    assert d.rejection == (
        "mutations[2]: Expected a valid graph after the mutation, but steps[3].needs[0]: "
        "unknown step 'z' (known: a, b, c, y)"
    )
    assert set(sim.run.steps) == {"a", "b", "c"}


def test_the_catalog_check_applies_to_every_operation() -> None:
    sim = _sim()
    d = sim.mutate_all(
        [
            ("update_params", "b", {"n": 1}),
            ("replace_node", "c", {"node": "http.request", "node_version": "^9"}),
        ]
    )
    assert d.rejection is not None
    assert d.rejection.startswith("mutations[1]: Expected a valid graph after the mutation")
    assert "'^9'" in d.rejection


def test_added_steps_are_scheduled_once_after_the_whole_list() -> None:
    sim = _sim()
    sim.succeed("a", {"n": 1})
    d = sim.mutate_all(
        [
            ("add_step", "p", {"node": "transform@^1", "needs": ["a"]}),
            ("add_step", "q", {"node": "transform@^1", "needs": ["p"]}),
        ]
    )
    assert d.rejection is None
    kinds = [type(e) for e in d.events]
    # Both GraphMutated first (one transaction), then what the new graph makes ready.
    assert kinds[:2] == [GraphMutated, GraphMutated]
    scheduled = [e.step.step_id for e in d.events if schedules_step(e)]
    assert scheduled == ["p"]


def test_both_or_neither_forms_are_rejected() -> None:
    sim = _sim()
    one = GraphMutation(type=GraphMutationType.UPDATE_PARAMS, step_id="b", data={"n": 1})
    fields: dict[str, Any] = {"run_id": sim.run.run_id}
    d = sim.send(MutateGraph(**fields, mutation=one, mutations=[one]))
    assert d.rejection == "Expected either mutation or mutations, but the command has both"
    d = sim.send(MutateGraph(**fields))
    assert d.rejection == (
        "Expected a mutation or a non-empty mutations list, but the command has none"
    )


def test_a_single_mutation_keeps_its_unprefixed_reason() -> None:
    sim = _sim()
    d = sim.mutate("remove_step", "a", {})
    assert d.rejection == "Expected step 'a' to be pending, but it is dispatched"
    d = sim.mutate_all([("remove_step", "a", {})])
    assert d.rejection == "mutations[0]: Expected step 'a' to be pending, but it is dispatched"


def test_a_problem_of_the_final_graph_names_the_operation_that_introduced_it() -> None:
    sim = _sim()
    d = sim.mutate_all(
        [
            ("update_params", "b", {"n": 1}),
            ("add_step", "y", {"node": "transform@^1", "needs": ["nope"]}),
            ("update_params", "c", {"v": 2}),
        ]
    )
    assert d.rejection == (
        "mutations[1]: Expected a valid graph after the mutation, but steps[3].needs[0]: "
        "unknown step 'nope' (known: a, b, c, y)"
    )
    assert sim.run.step_definition("b").params == {}


def test_a_v1_command_still_decodes_as_one_mutation_and_applies() -> None:
    from schemas import decode
    from schemas.fixtures import fixture_path

    old = decode(fixture_path("reflux.commands.MutateGraph", 1).read_bytes(), MutateGraph)
    assert old.schema_version == 1
    assert old.mutation is not None and old.mutations == []
    sim = _sim()
    one = GraphMutation(type=GraphMutationType.UPDATE_PARAMS, step_id="b", data={"n": 7})
    d = sim.send(old.model_copy(update={"run_id": sim.run.run_id, "mutation": one}))
    assert d.rejection is None
    assert sim.run.step_definition("b").params == {"n": 7}
