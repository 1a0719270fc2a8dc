"""The pure parts of mutating a running run: the API's pre-publish checks, the CLI body."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.errors import RequestInvalidError
from api.models.graph import MutationCreate
from api.run_graph import check_mutation, params_issues
from reflux.client import ClientError, graph_text, mutation_body
from schemas.models import GraphMutated, GraphMutationType
from workflows.node_catalog import StaticNodeCatalog
from workflows.validation import build_definition

CATALOG = StaticNodeCatalog({"transform": ["1.0.0"], "http.request": ["1.0.0", "1.2.0"]})
GRAPH = build_definition(
    {
        "id": "g",
        "defaults": {"retry": {"max_attempts": 3}},
        "steps": [
            {"id": "a", "node": "transform@^1", "params": {"expression": "v", "data": {}}},
            {"id": "b", "node": "http.request@^1", "needs": ["a"], "params": {"url": "x"}},
        ],
    }
)
SCHEMA = {
    "type": "object",
    "properties": {"url": {"type": "string"}, "headers": {"type": "object"}},
    "required": ["url"],
    "additionalProperties": False,
}


def _schemas(name: str, constraint: str) -> dict[str, Any] | None:
    return SCHEMA if name == "http.request" else None


def check(**body: Any) -> Any:
    return check_mutation(MutationCreate(**body), GRAPH, CATALOG, _schemas)


def issues_of(**body: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(RequestInvalidError) as caught:
        check(**body)
    return [(tuple(d["loc"]), d["msg"]) for d in caught.value.detail]


def test_valid_mutations_become_the_graph_mutation() -> None:
    added = check(type="add_step", step_id="c", data={"node": "transform@^1", "needs": ["b"]})
    assert added.type is GraphMutationType.ADD_STEP and added.data["needs"] == ["b"]
    assert check(type="remove_step", step_id="b").data == {}
    assert check(type="update_params", step_id="b", data={"url": "{{ inputs.u }}"}).step_id == "b"
    replaced = check(
        type="replace_node", step_id="b", data={"node": "http.request", "node_version": "~1.2"}
    )
    assert replaced.data == {"node": "http.request", "node_version": "~1.2"}


def test_state_dependent_rules_are_left_to_the_scheduler() -> None:
    # A missing dependency, an existing id, an unknown step: the scheduler answers (409).
    check(type="add_step", step_id="c", data={"node": "transform@^1", "needs": ["ghost"]})
    check(type="add_step", step_id="a", data={"node": "transform@^1"})
    check(type="update_params", step_id="nope", data={})


def test_unknown_nodes_and_versions_name_the_field() -> None:
    [(loc, msg)] = issues_of(type="add_step", step_id="c", data={"node": "transfrom@^1"})
    assert loc == ("body", "data", "node") and "did you mean 'transform'" in msg
    [(loc, msg)] = issues_of(
        type="replace_node", step_id="b", data={"node": "http.request", "node_version": "^3"}
    )
    assert loc == ("body", "data", "node") and "available: 1.0.0, 1.2.0" in msg
    [(loc, _)] = issues_of(type="replace_node", step_id="b", data={"node": 3})
    assert loc == ("body", "data", "node")
    [(loc, _)] = issues_of(type="replace_node", step_id="b", data={"node": "x", "extra": 1})
    assert loc == ("body", "data", "extra")


def test_malformed_steps_name_the_field() -> None:
    [(loc, _)] = issues_of(
        type="add_step", step_id="c", data={"node": "transform@^1", "retry": {"max_attempts": 0}}
    )
    assert loc == ("body", "data", "retry", "max_attempts")
    [(loc, msg)] = issues_of(type="add_step", step_id="c", data={"id": "d", "node": "transform"})
    assert loc == ("body", "data", "id") and "expected 'c'" in msg
    [(loc, _)] = issues_of(type="remove_step", step_id="b", data={"x": 1})
    assert loc == ("body", "data")


def test_params_are_checked_against_the_node_input_schema() -> None:
    found = issues_of(type="update_params", step_id="b", data={"headers": "x", "bogus": 1})
    assert [loc for loc, _ in found] == [
        ("body", "data", "headers"),
        ("body", "data", "url"),
        ("body", "data", "bogus"),
    ]
    added = issues_of(
        type="add_step",
        step_id="c",
        data={"node": "http.request@^1", "params": {"url": ["not", "a", "string"]}},
    )
    assert [loc for loc, _ in added] == [("body", "data", "params", "url")]


def test_params_are_validated_as_json_schema_with_templates_passing() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 1},
            "o": {"type": "object"},
            "codes": {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "null"}]},
            "mode": {"enum": ["a", "b"]},
            "inner": {"$ref": "#/$defs/Inner"},
        },
        "required": ["n", "mode"],
        "$defs": {"Inner": {"type": "object", "properties": {"k": {"type": "string"}}}},
    }
    templated = {
        "n": "{{ inputs.n }}",  # an integer once rendered: not checked now
        "o": "{{ steps.a.output }}",
        "codes": [200, "{{ inputs.code }}"],  # the anyOf branch with a template passes
        "mode": "{{ inputs.mode }}",
        "inner": {"k": "{{ inputs.k }}"},
    }
    assert params_issues(schema, templated, "data", "x") == []
    assert params_issues(schema, "{{ inputs.all }}", "data", "x") == []
    found = params_issues(
        schema, {"n": "5", "codes": [1, "a"], "inner": {"k": 3}, "o": []}, "data.params", "x"
    )
    assert [(i.path, i.type) for i in found] == [
        ("data.params.n", "param_type"),  # "5" is not an integer: the schema is the contract
        ("data.params.o", "param_type"),
        ("data.params.codes[1]", "param_type"),  # the array branch's complaint
        ("data.params.inner.k", "param_type"),  # through $ref
        ("data.params.mode", "missing_param"),
    ]
    assert "(the input schema of x)" in found[0].message
    (low,) = params_issues(schema, {"n": 0, "mode": "c"}, "data", "x")[:1]
    assert (low.path, low.type) == ("data.n", "param_minimum")


def test_a_parameter_may_be_given_by_its_python_field_name() -> None:
    from node_workers.nodes.http_request import HttpRequestNode

    schema = HttpRequestNode().manifest()["input_schema"]
    assert schema["properties"]["json"]["x-reflux-field-name"] == "json_body"
    assert params_issues(schema, {"url": "u", "json_body": {"a": 1}}, "data", "h") == []
    assert params_issues(schema, {"url": "u", "json": {"a": 1}}, "data", "h") == []
    (unknown,) = params_issues(schema, {"url": "u", "jsn": 1}, "data", "h")
    assert (unknown.path, unknown.type) == ("data.jsn", "unknown_param")
    (wrong,) = params_issues(schema, {"url": "u", "body": 3}, "data", "h")
    assert (wrong.path, wrong.type) == ("data.body", "param_type")
    assert wrong.message.startswith("3 is not of type 'string' or 'null'")


def test_a_list_is_checked_element_by_element_with_indexed_paths() -> None:
    from api.models.graph import MutationBatchCreate
    from api.run_graph import check_mutations

    def batch(*operations: dict[str, Any]) -> Any:
        body = MutationBatchCreate.model_validate({"mutations": list(operations)})
        return check_mutations(body, GRAPH, CATALOG, _schemas)

    ok = batch(
        {"type": "add_step", "step_id": "c", "data": {"node": "http.request@^1", "needs": ["b"],
                                                      "params": {"url": "u"}}},
        {"type": "update_params", "step_id": "c", "data": {"url": "{{ steps.b.output }}"}},
    )  # fmt: skip
    assert [m.step_id for m in ok] == ["c", "c"]
    with pytest.raises(RequestInvalidError) as caught:
        batch(
            {"type": "update_params", "step_id": "b", "data": {"url": "v"}},
            {"type": "add_step", "step_id": "c", "data": {"node": "http.request@^1",
                                                          "params": {"url": 5}}},
            # c is the step the list added: its node's schema applies to the update
            {"type": "update_params", "step_id": "c", "data": {"headers": "h"}},
            {"type": "replace_node", "step_id": "a", "data": {"node": "nope"}},
        )  # fmt: skip
    assert [tuple(d["loc"]) for d in caught.value.detail] == [
        ("body", "mutations", 1, "data", "params", "url"),
        ("body", "mutations", 2, "data", "headers"),
        ("body", "mutations", 2, "data", "url"),
        ("body", "mutations", 3, "data", "node"),
    ]


def test_without_a_projected_graph_only_the_body_is_checked() -> None:
    body = MutationCreate(type="update_params", step_id="b", data={"bogus": 1})
    assert check_mutation(body, None, CATALOG, _schemas).step_id == "b"


def _args(**values: Any) -> argparse.Namespace:
    base = {
        "op": None,
        "step": None,
        "data": None,
        "node": None,
        "version": None,
        "reason": None,
        "by": None,
        "file": None,
    }
    return argparse.Namespace(**{**base, **values})


def test_cli_mutation_body() -> None:
    body = mutation_body(
        _args(op="update_params", step="b", data='{"url": "u"}', reason="r", by="me")
    )
    assert body == {
        "type": "update_params",
        "step_id": "b",
        "data": {"url": "u"},
        "reason": "r",
        "requested_by": "me",
    }
    replace = mutation_body(_args(op="replace_node", step="b", node="http.request", version="^1"))
    assert replace["data"] == {"node": "http.request", "node_version": "^1"}
    with pytest.raises(ClientError, match="--data to be JSON"):
        mutation_body(_args(op="add_step", step="c", data="{nope"))
    with pytest.raises(ClientError, match="--node goes with --op replace_node"):
        mutation_body(_args(op="add_step", step="c", node="x"))


def test_cli_mutations_file_is_one_atomic_list(tmp_path: Path) -> None:
    ops = [
        {"type": "add_step", "step_id": "c", "data": {"node": "transform@^1", "needs": ["b"]}},
        {"type": "update_params", "step_id": "b", "data": {"url": "u"}},
    ]
    listed = tmp_path / "ops.json"
    listed.write_text(json.dumps(ops))
    assert mutation_body(_args(file=str(listed), by="me")) == {
        "mutations": ops,
        "requested_by": "me",
    }
    wrapped = tmp_path / "ops.yaml"
    wrapped.write_text(yaml.safe_dump({"mutations": ops, "reason": "from the file"}))
    body = mutation_body(_args(file=str(wrapped)))
    assert body == {"mutations": ops, "reason": "from the file"}
    assert mutation_body(_args(file=str(wrapped), reason="flag"))["reason"] == "flag"
    with pytest.raises(ClientError, match="--file carries the operations: drop --op, --step"):
        mutation_body(_args(file=str(listed), op="add_step", step="c"))
    with pytest.raises(ClientError, match="Expected --op and --step"):
        mutation_body(_args())
    (tmp_path / "bad.json").write_text('{"type": "add_step"}')
    with pytest.raises(ClientError, match="a list of operations"):
        mutation_body(_args(file=str(tmp_path / "bad.json")))
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ClientError, match="at least one operation"):
        mutation_body(_args(file=str(tmp_path / "empty.json")))
    with pytest.raises(ClientError, match="to be readable"):
        mutation_body(_args(file=str(tmp_path / "missing.json")))


def test_cli_graph_text_shows_who_and_why() -> None:
    text = graph_text(
        {
            "run_id": "r",
            "status": "running",
            "last_seq": 4,
            "steps": [
                {"step_id": "c", "status": "pending", "node": "transform@^1", "needs": ["b"]}
            ],
            "mutations": [
                {
                    "seq": 3,
                    "type": "add_step",
                    "step_id": "c",
                    "requested_by": "alice",
                    "reason": "more",
                    "data": {},
                }
            ],
        }
    )
    assert "c                pending    transform@^1 needs b" in text
    assert "#3    add_step       c                by alice: more" in text


def test_scheduler_checks_only_the_mutated_step_against_its_catalog() -> None:
    from tests.support.scheduler_simulation import Simulation

    nodes = {"transform": ["1.0.0"], "legacy.node": ["1.0.0"]}

    class Catalog:
        def versions(self, name: str) -> list[str]:
            return nodes.get(name, [])

        def names(self) -> list[str]:
            return sorted(nodes)

    catalog = Catalog()
    sim = Simulation(
        """
id: m
steps:
  - {id: a, node: transform@^1}
  - {id: b, node: legacy.node@^1, needs: [a]}
  - {id: c, node: transform@^1, needs: [b]}
""",
        node_catalog=catalog,
    )
    sim.start()
    del nodes["legacy.node"]  # retired from the catalog after the run started
    # `b` runs a node the catalog no longer lists: an unrelated fix still goes through.
    fixed = sim.mutate("update_params", "c", {"v": 2}, requested_by="alice", reason="typo")
    assert fixed.rejection is None
    (event,) = [e for e in fixed.events if isinstance(e, GraphMutated)]
    assert (event.requested_by, event.reason) == ("alice", "typo")
    unknown = sim.mutate("add_step", "d", {"node": "no.such@^1", "needs": ["c"]})
    assert unknown.rejection is not None and "steps[3].node: unknown node 'no.such'" in (
        unknown.rejection
    )
    replaced = sim.mutate("replace_node", "b", {"node": "transform", "node_version": "^2"})
    assert replaced.rejection is not None and "no version of 'transform' satisfies '^2'" in (
        replaced.rejection
    )


@pytest.mark.parametrize("kind", list(GraphMutationType))
def test_projection_plan_of_graph_mutated(kind: GraphMutationType) -> None:
    from projections.postgres.appliers import plan
    from projections.postgres.statements import RunUpdate, Statement
    from schemas.models import GraphMutation

    event = GraphMutated(
        run_id="r",
        seq=7,
        causation_id="cmd-1",
        mutation=GraphMutation(type=kind, step_id="s", data={}),
        requested_by="alice",
        reason="why not",
    )
    result = plan(event, "s1")
    record, rewrite, *rest = result.updates
    assert isinstance(record, Statement) and record.sql.startswith('INSERT INTO "s1".run_mutations')
    assert record.params[:4] == ("r", 7, kind.value, "s")
    assert record.params[6:9] == ("cmd-1", "alice", "why not")
    assert isinstance(rewrite, Statement)
    assert '"s1".reflux_apply_graph_mutation(definition, %s, %s, %s)' in rewrite.sql
    deletes = [u for u in rest if isinstance(u, Statement)]
    if kind is GraphMutationType.REMOVE_STEP:
        assert [d.sql for d in deletes] == [
            'DELETE FROM "s1".steps WHERE run_id = %s AND step_id = %s'
        ]
    else:
        assert deletes == []
    assert isinstance(rest[-1], RunUpdate) and rest[-1].seq == 7


def test_mutation_body_rejects_unknown_fields_and_long_waits() -> None:
    from pydantic import ValidationError

    from api.config import MAX_WAIT_MS

    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        MutationCreate(type="remove_step", step_id="a", steps=[])  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="wait_ms"):
        MutationCreate(type="remove_step", step_id="a", wait_ms=MAX_WAIT_MS + 1)
    with pytest.raises(ValidationError, match="step_id"):
        MutationCreate(type="remove_step", step_id="")


def test_field_name_marks_stay_out_of_ai_meta_prompts() -> None:
    from processors.scheduler.meta.ai_plan import _strip_titles
    from workflows.params_schema import FIELD_NAME_KEY

    schema = {"title": "T", "properties": {"json": {"title": "Json", FIELD_NAME_KEY: "json_body"}}}
    assert _strip_titles(schema) == {"properties": {"json": {}}}
