"""workflows.data_dependencies: what steps read from each other, and what may run in parallel."""

from __future__ import annotations

from typing import Any

import pytest

from node_workers.nodes import builtin_nodes
from workflows import parse_workflow
from workflows.data_dependencies import (
    BUILTIN_SIDE_EFFECTS,
    CatalogSideEffects,
    can_run_in_parallel,
    data_references,
    dependencies,
    independent_pairs,
    relaxed_needs,
    required_order,
    sequential_chains,
)
from workflows.model import WorkflowDefinition


def _get(url: str) -> dict[str, Any]:
    return {"url": url, "method": "GET"}


def _post(url: str) -> dict[str, Any]:
    return {"url": url, "method": "POST"}


def _wf(steps: list[dict[str, Any]], **extra: Any) -> WorkflowDefinition:
    return parse_workflow({"id": "wf", "steps": steps, **extra})


def _chain_of_gets() -> WorkflowDefinition:
    return _wf(
        [
            {"id": "a", "node": "http.request", "params": _get("http://s/a")},
            {"id": "b", "node": "http.request", "params": _get("http://s/b"), "needs": ["a"]},
            {"id": "c", "node": "http.request", "params": _get("http://s/c"), "needs": ["b"]},
            {"id": "d", "node": "http.request", "params": _get("http://s/d"), "needs": ["c"]},
        ],
        outputs={"all": "{{ [steps.a.output, steps.b.output, steps.c.output, steps.d.output] }}"},
    )


def test_builtin_side_effect_flags_match_the_nodes() -> None:
    flags = {node.name: node.side_effects for node in builtin_nodes()}
    assert flags == dict(BUILTIN_SIDE_EFFECTS)


def test_references_are_read_from_params_and_when() -> None:
    wf = _wf(
        [
            {"id": "a", "node": "transform", "params": {"value": 1}},
            {"id": "b", "node": "transform", "params": {"value": 2}},
            {
                "id": "c",
                "node": "transform",
                "params": {"value": {"x": ["{{ steps.a.output.value }} and text"]}},
                "when": "steps.b.status == 'succeeded'",
                "needs": ["a", "b"],
            },
        ]
    )
    assert data_references(wf.step("c")) == {"a", "b"}
    assert data_references(wf.step("a")) == frozenset()
    assert dependencies(wf)["c"].ordering_only == frozenset()


def test_four_get_calls_in_sequence_are_one_relaxable_chain() -> None:
    wf = _chain_of_gets()
    assert sequential_chains(wf) == [("a", "b", "c", "d")]
    assert relaxed_needs(wf) == {"a": (), "b": (), "c": (), "d": ()}
    assert can_run_in_parallel(wf, "a", "d")
    assert ("a", "b") in independent_pairs(wf)
    assert required_order(wf) == frozenset()


def test_a_data_reference_keeps_the_order() -> None:
    wf = _wf(
        [
            {"id": "a", "node": "http.request", "params": _get("http://s/a")},
            {
                "id": "b",
                "node": "http.request",
                "params": _get("http://s/{{ steps.a.output.body.id }}"),
                "needs": ["a"],
            },
            {"id": "c", "node": "http.request", "params": _get("http://s/c"), "needs": ["b"]},
        ]
    )
    assert relaxed_needs(wf) == {"a": (), "b": ("a",), "c": ()}
    assert not can_run_in_parallel(wf, "a", "b")
    assert can_run_in_parallel(wf, "b", "c")


def test_trap_write_then_read_through_the_outside_world_is_never_parallelised() -> None:
    """The hidden dependency: `read` reads what `write` stored; no template says so."""
    wf = _wf(
        [
            {
                "id": "write",
                "node": "http.request",
                "params": {"url": "http://s/k", "method": "POST"},
            },
            {
                "id": "read",
                "node": "http.request",
                "params": _get("http://s/k"),
                "needs": ["write"],
            },
        ]
    )
    deps = dependencies(wf)
    assert deps["write"].side_effects and not deps["read"].side_effects
    assert deps["read"].ordering_only == {"write"}  # the templates alone would relax it
    assert not can_run_in_parallel(wf, "write", "read")
    assert independent_pairs(wf) == []
    assert sequential_chains(wf) == []
    assert relaxed_needs(wf) == {"write": (), "read": ("write",)}


def test_a_step_after_a_relaxed_one_keeps_its_order_after_an_earlier_side_effect() -> None:
    wf = _wf(
        [
            {"id": "post", "node": "http.request", "params": {"url": "http://s", "method": "POST"}},
            {"id": "g1", "node": "http.request", "params": _get("http://s/1"), "needs": ["post"]},
            {"id": "g2", "node": "http.request", "params": _get("http://s/2"), "needs": ["g1"]},
        ]
    )
    assert relaxed_needs(wf) == {"post": (), "g1": ("post",), "g2": ("post",)}
    assert ("post", "g2") in required_order(wf)
    assert can_run_in_parallel(wf, "g1", "g2")


def test_nothing_is_moved_before_a_side_effect_the_user_ordered_last() -> None:
    wf = _wf(
        [
            {"id": "check", "node": "transform", "params": {"value": 1}},
            {
                "id": "send",
                "node": "email.send",
                "params": {"to": ["a@b.c"], "subject": "s", "body": "b"},
                "needs": ["check"],
            },
        ]
    )
    assert not can_run_in_parallel(wf, "check", "send")
    assert relaxed_needs(wf)["send"] == ("check",)


def test_conditional_steps_keep_everything_after_them() -> None:
    wf = _wf(
        [
            {"id": "a", "node": "transform", "params": {"value": 1}, "when": "`true`"},
            {"id": "b", "node": "transform", "params": {"value": 2}, "needs": ["a"]},
            {"id": "c", "node": "transform", "params": {"value": 3}, "needs": ["b"]},
        ]
    )
    # `a` may be skipped, and skip propagation would skip b and c: both stay after it.
    assert relaxed_needs(wf) == {"a": (), "b": ("a",), "c": ("a",)}
    assert can_run_in_parallel(wf, "b", "c")
    assert not can_run_in_parallel(wf, "a", "c")


@pytest.mark.parametrize(
    ("node", "params", "expected"),
    [
        ("http.request", {"url": "http://x"}, False),  # GET by default
        ("http.request", {"url": "http://x", "method": "HEAD"}, False),
        ("http.request", {"url": "http://x", "method": "PUT"}, True),
        ("http.request", {"url": "http://x", "method": "{{ inputs.m }}"}, True),
        ("database.query", {"dsn": "x", "sql": "select 1"}, False),
        ("database.query", {"dsn": "x", "sql": "delete", "read_only": False}, True),
        ("openai.chat", {}, False),
        ("code.run", {}, True),
        ("vendor.unknown", {}, True),
        ("meta.workflow", {"workflow_id": "w"}, True),
        ("meta.map", {"items": [1], "node": "transform", "params": {}}, False),
        ("meta.map", {"items": [1], "node": "email.send", "params": {}}, True),
        ("meta.map", {"items": [1], "workflow": "w"}, True),
    ],
)
def test_side_effects_per_invocation(node: str, params: dict[str, Any], expected: bool) -> None:
    assert CatalogSideEffects().has_side_effects(node, params) is expected


def test_manifests_override_and_unknown_default() -> None:
    view = CatalogSideEffects.from_manifests(
        [
            {"name": "vendor.pure", "version": "1.0.0", "side_effects": False},
            {"name": "vendor.mixed", "version": "1.0.0", "side_effects": False},
            {"name": "vendor.mixed", "version": "2.0.0", "side_effects": True},
        ]
    )
    assert not view.has_side_effects("vendor.pure", {})
    assert view.has_side_effects("vendor.mixed", {})
    assert view.has_side_effects("vendor.other", {})
    assert not CatalogSideEffects(unknown=False).has_side_effects("vendor.other", {})


def test_switch_targets_are_conditional() -> None:
    wf = _wf(
        [
            {"id": "route", "node": "meta.switch", "params": {"value": "x", "cases": {"x": ["a"]}}},
            {"id": "a", "node": "transform", "params": {"value": 1}, "needs": ["route"]},
            {"id": "b", "node": "transform", "params": {"value": 2}, "needs": ["a"]},
        ]
    )
    deps = dependencies(wf)
    assert deps["route"].conditional and deps["a"].conditional and not deps["b"].conditional
    assert relaxed_needs(wf)["b"] == ("a",)
    assert sequential_chains(wf) == []


def test_relaxed_needs_produce_a_valid_definition_with_the_same_data_order() -> None:
    wf = _chain_of_gets()
    data = wf.to_json_dict()
    relaxed = relaxed_needs(wf)
    for step in data["steps"]:
        step["needs"] = list(relaxed[step["id"]])
    again = parse_workflow(data)
    assert again.topological_order == ("a", "b", "c", "d")
    assert all(not again.step(s).needs for s in again.step_ids)


def test_unknown_step_is_named() -> None:
    with pytest.raises(KeyError, match="unknown step 'zz'"):
        can_run_in_parallel(_chain_of_gets(), "a", "zz")
