"""Workflow definitions: parsing, every validation error with its path, canonical form."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.models import GraphMutation, GraphMutationType
from workflows import (
    FieldError,
    StaticNodeCatalog,
    Version,
    VersionConstraint,
    WorkflowDefinition,
    WorkflowValidationError,
    apply_mutation,
    invoke_major,
    parse_duration,
    parse_node_ref,
    parse_workflow,
    validate_inputs,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CATALOG = StaticNodeCatalog(
    {
        "http.request": ["1.0.0", "1.4.2", "2.0.0"],
        "transform": ["1.0.0", "1.2.0"],
        "condition": ["1.0.0"],
    }
)

VALID = """
id: demo
inputs:
  url: {type: string, required: true}
  count: {type: integer, default: 3}
defaults:
  retry: {max_attempts: 3, initial_backoff: 100ms}
  timeout: 10s
steps:
  - id: fetch
    node: http.request@^1
    params: {url: "{{ inputs.url }}", n: "{{ inputs.count }}"}
  - id: parse
    node: transform@1.2.0
    needs: [fetch]
    when: "steps.fetch.output.status == `200`"
    params: {body: "{{ steps.fetch.output.body }}"}
    retry: {max_attempts: 5}
    timeout: 2s
  - id: check
    node: condition
    needs: [parse]
outputs:
  result: "{{ steps.parse.output }}"
"""


def errors_of(source: object, **kwargs: object) -> dict[str, str]:
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(source, **kwargs)  # type: ignore[arg-type]
    assert info.value.errors, "a validation error must list its problems"
    assert all(isinstance(e, FieldError) for e in info.value.errors)
    return {e.path: e.message for e in info.value.errors}


def step(**fields: object) -> dict[str, object]:
    return {"node": "transform@^1", **fields}


def workflow(*steps: dict[str, object], **fields: object) -> dict[str, object]:
    return {"id": "wf", "steps": list(steps), **fields}


# -- parsing and canonical form ------------------------------------------------------------------


def test_valid_yaml_parses_with_defaults_applied() -> None:
    d = parse_workflow(VALID, node_catalog=CATALOG)
    fetch, parse, check = d.steps
    assert fetch.retry.max_attempts == 3 and fetch.retry.initial_backoff == 100
    assert fetch.timeout == 10_000
    # Field-by-field merge: the step's own value wins, the rest comes from defaults.
    assert parse.retry.max_attempts == 5 and parse.retry.initial_backoff == 100
    assert parse.timeout == 2_000
    assert check.node == "condition@*"
    assert (parse.node_name, parse.node_constraint) == ("transform", "1.2.0")
    assert d.topological_order == ("fetch", "parse", "check")
    assert d.upstream("check") == {"fetch", "parse"}


def test_json_and_bytes_and_dict_sources_are_equivalent() -> None:
    d = parse_workflow(VALID)
    as_json = __import__("json").dumps(d.to_json_dict())
    assert parse_workflow(as_json) == d
    assert parse_workflow(as_json.encode()) == d
    assert parse_workflow(d.to_json_dict()) == d


def test_canonical_round_trip_is_stable() -> None:
    d = parse_workflow(VALID)
    data = d.to_json_dict()
    assert data["steps"][0]["timeout"] == 10_000  # durations are ms in canonical form
    again = WorkflowDefinition.from_json_dict(data)
    assert again == d
    assert again.to_json_dict() == data


def test_defaults_do_not_override_explicit_values() -> None:
    d = parse_workflow(
        workflow(
            step(id="a", cache={"enabled": False}),
            defaults={"cache": {"enabled": True, "ttl": "5m"}},
        )
    )
    assert d.steps[0].cache.enabled is False
    assert d.steps[0].cache.ttl == 300_000


# -- each validation error, with its path --------------------------------------------------------


def test_unknown_need_names_known_steps() -> None:
    errors = errors_of(workflow(step(id="fetch"), step(id="parse", needs=["fecth"])))
    assert errors == {"steps[1].needs[0]": "unknown step 'fecth' (known: fetch, parse)"}


def test_duplicate_step_id() -> None:
    errors = errors_of(workflow(step(id="a"), step(id="a")))
    assert errors["steps[1].id"] == "duplicate step id 'a' (first defined at steps[0])"


def test_self_need_and_duplicate_need() -> None:
    errors = errors_of(workflow(step(id="a", needs=["a"]), step(id="b", needs=["a", "a"])))
    assert errors["steps[0].needs[0]"] == "step 'a' cannot need itself"
    assert errors["steps[1].needs[1]"] == "duplicate need 'a'"


def test_cycle_is_named() -> None:
    errors = errors_of(
        workflow(step(id="a", needs=["c"]), step(id="b", needs=["a"]), step(id="c", needs=["b"]))
    )
    assert errors == {"steps[0].needs": "cycle: a -> c -> b -> a"}


def test_two_step_cycle() -> None:
    errors = errors_of(workflow(step(id="a", needs=["b"]), step(id="b", needs=["a"])))
    assert errors == {"steps[0].needs": "cycle: a -> b -> a"}


def test_unknown_node_with_suggestion() -> None:
    errors = errors_of(workflow(step(id="a", node="htp.request@^1")), node_catalog=CATALOG)
    assert errors == {"steps[0].node": "unknown node 'htp.request' (did you mean 'http.request'?)"}


def test_no_version_satisfies_constraint() -> None:
    errors = errors_of(workflow(step(id="a", node="http.request@^3")), node_catalog=CATALOG)
    assert errors == {
        "steps[0].node": "no version of 'http.request' satisfies '^3' "
        "(available: 1.0.0, 1.4.2, 2.0.0)"
    }


def test_catalog_is_only_checked_when_given() -> None:
    parse_workflow(workflow(step(id="a", node="nothing.known@^9")))


def test_unknown_input_in_template() -> None:
    errors = errors_of(
        workflow(
            step(id="a", params={"url": "{{ inputs.nope }}"}), inputs={"x": {"type": "string"}}
        )
    )
    assert errors == {"steps[0].params.url": "unknown input 'nope' (declared: x)"}


def test_step_not_upstream() -> None:
    errors = errors_of(
        workflow(step(id="a"), step(id="b"), step(id="c", params={"v": "{{ steps.b.output }}"}))
    )
    assert errors == {"steps[2].params.v": "step 'b' is not upstream of 'c'; add it to needs"}


def test_transitive_upstream_is_allowed() -> None:
    parse_workflow(
        workflow(
            step(id="a"),
            step(id="b", needs=["a"]),
            step(id="c", needs=["b"], params={"v": "x={{ steps.a.output.v }}"}),
        )
    )


def test_unknown_step_in_when_and_nested_params() -> None:
    errors = errors_of(
        workflow(
            step(id="a"),
            step(
                id="b",
                needs=["a"],
                when="steps.zz.status == 'succeeded'",
                params={"headers": {"X": ["ok", "{{ steps.a.output }}", "{{ steps.q.output }}"]}},
            ),
        )
    )
    assert errors == {
        "steps[1].when": "unknown step 'zz' (known: a, b)",
        "steps[1].params.headers.X[2]": "unknown step 'q' (known: a, b)",
    }


def test_own_output_reference() -> None:
    errors = errors_of(workflow(step(id="a", when="steps.a.output")))
    assert errors == {"steps[0].when": "step 'a' cannot reference its own output or status"}


def test_unknown_root_and_run_field() -> None:
    errors = errors_of(
        workflow(step(id="a", params={"x": "{{ vault.k }}"}), outputs={"o": "{{ run.nope }}"})
    )
    assert errors == {
        "steps[0].params.x": "unknown name 'vault': expressions start with inputs., steps. or run.",
        "outputs.o": "unknown run field 'nope' (known: id, workflow_id, workflow_version)",
    }


def test_expression_syntax_errors() -> None:
    errors = errors_of(
        workflow(step(id="a", params={"x": "{{ a[ }}", "y": "{{ unclosed"}, when="`bad"))
    )
    assert (
        errors["steps[0].when"] == "invalid expression '`bad': unclosed ` delimiter at position 0"
    )
    assert errors["steps[0].params"] == "unclosed '{{' in template (expected '{{ expr }}')"


def test_expression_projection_refs_are_not_root_refs() -> None:
    # `name` and `x` are fields of the array elements, not root names.
    parse_workflow(
        workflow(
            step(id="a", params={"v": "{{ inputs.items[?x > `1`].name | [0] }}"}),
            inputs={"items": {"type": "array"}},
        )
    )


def test_bad_duration_type_and_unknown_field() -> None:
    errors = errors_of(
        workflow(
            step(id="a", timeout="10x", need=["b"]),
            inputs={"count": {"type": "int"}},
        )
    )
    assert errors["steps[0].timeout"].startswith("invalid duration '10x'")
    assert errors["steps[0].need"].startswith("unknown field 'need' (allowed: id, node,")
    assert errors["inputs.count.type"].startswith("Input should be 'string'")


def test_queue_timeout_is_optional_defaulted_and_validated_with_its_path() -> None:
    definition = parse_workflow(
        workflow(
            step(id="a", timeout="2s"),
            step(id="b", queue_timeout="1m30s", needs=["a"]),
            defaults={"queue_timeout": "30s", "timeout": "5s"},
        )
    )
    a, b = definition.steps
    assert (a.timeout, a.queue_timeout) == (2_000, 30_000)
    assert (b.timeout, b.queue_timeout) == (5_000, 90_000)
    assert definition.to_json_dict()["steps"][1]["queue_timeout"] == 90_000
    assert parse_workflow(workflow(step(id="a"))).steps[0].queue_timeout is None  # unset: no bound
    errors = errors_of(workflow(step(id="a", queue_timeout=0), step(id="b", queue_timeout="soon")))
    assert errors["steps[0].queue_timeout"].startswith("queue_timeout must be positive, but got 0")
    assert errors["steps[1].queue_timeout"].startswith("invalid duration 'soon'")
    errors = errors_of(workflow(step(id="a"), defaults={"queue_timeout": "0s"}))
    assert errors == {
        "defaults.queue_timeout": "queue_timeout must be positive, but got 0 ms (leave it out "
        "to wait for a worker as long as it takes)"
    }


def test_missing_fields_and_bad_ids() -> None:
    errors = errors_of({"id": "Bad Id!", "steps": [{"id": "Fetch-1"}]})
    assert errors["id"].startswith("invalid workflow id 'Bad Id!'")
    assert errors["steps[0].id"].startswith("invalid step id 'Fetch-1'")
    assert errors["steps[0].node"] == "required field is missing"


def test_bad_node_reference() -> None:
    errors = errors_of(workflow(step(id="a", node="Http@^x")))
    assert errors["steps[0].node"].startswith("invalid node name 'Http'")
    errors = errors_of(workflow(step(id="a", node="http@^x")))
    assert errors["steps[0].node"].startswith("invalid version constraint '^x'")


def test_retry_ranges() -> None:
    errors = errors_of(
        workflow(step(id="a", retry={"max_attempts": 0, "jitter": 2, "initial_backoff": "1s"}))
    )
    assert "steps[0].retry.max_attempts" in errors
    assert "steps[0].retry.jitter" in errors
    errors = errors_of(workflow(step(id="a", retry={"initial_backoff": "2s", "max_backoff": "1s"})))
    assert errors["steps[0].retry"] == "max_backoff (1000 ms) must be >= initial_backoff (2000 ms)"


def test_invalid_defaults_are_reported_once_under_defaults() -> None:
    errors = errors_of(workflow(step(id="a"), defaults={"retry": {"max_attempts": "many"}}))
    assert list(errors) == ["defaults.retry.max_attempts"]


def test_input_default_problems() -> None:
    errors = errors_of(
        workflow(step(id="a"), inputs={"n": {"type": "integer", "default": "3", "required": True}})
    )
    assert errors["inputs.n.default"] == "expected integer, got string"
    assert errors["inputs.n.required"].startswith("an input with a default is never missing")


def test_empty_steps_and_not_a_mapping() -> None:
    assert errors_of({"id": "wf", "steps": []}) == {"steps": "a workflow needs at least one step"}
    assert errors_of("- just\n- a list\n") == {
        "$": "expected a mapping at the top level, got array"
    }
    assert list(errors_of("id: [unclosed")) == ["$"]


def test_all_errors_reported_at_once() -> None:
    errors = errors_of(
        workflow(step(id="a", needs=["zz"]), step(id="b", params={"u": "{{ inputs.q }}"}))
    )
    assert set(errors) == {"steps[0].needs[0]", "steps[1].params.u"}


# -- inputs -------------------------------------------------------------------------------------


def test_validate_inputs_applies_defaults_and_checks_types() -> None:
    d = parse_workflow(VALID)
    assert validate_inputs(d, {"url": "u"}) == {"url": "u", "count": 3}
    assert validate_inputs(d, {"url": "u", "count": 7}) == {"url": "u", "count": 7}
    with pytest.raises(WorkflowValidationError) as info:
        validate_inputs(d, {"count": "x", "extra": 1})
    assert {e.path: e.message for e in info.value.errors} == {
        "inputs.extra": "unknown input 'extra' (declared: url, count)",
        "inputs.url": "required input is missing",
        "inputs.count": "expected integer, got string",
    }
    with pytest.raises(WorkflowValidationError) as info:
        validate_inputs(d, [1])
    assert info.value.errors == [FieldError("inputs", "expected an object, got array")]


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("string", "s", 1),
        ("number", 1.5, "1"),
        ("number", 2, True),
        ("integer", 2, 2.5),
        ("boolean", False, 0),
        ("object", {"a": 1}, [1]),
        ("array", [1], {"a": 1}),
    ],
)
def test_input_types(kind: str, good: object, bad: object) -> None:
    d = parse_workflow(workflow(step(id="a"), inputs={"v": {"type": kind}}))
    assert validate_inputs(d, {"v": good}) == {"v": good}
    with pytest.raises(WorkflowValidationError):
        validate_inputs(d, {"v": bad})


# -- durations and versions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [("200ms", 200), ("10s", 10_000), ("1m30s", 90_000), ("1h", 3_600_000), (1500, 1500),
     ("250", 250), ("1.5s", 1500), ("2d", 172_800_000)],
)  # fmt: skip
def test_parse_duration(text: object, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("bad", ["10x", "", "s", -1, True, None, "1 hour"])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("constraint", "allowed", "refused"),
    [
        ("1.2.0", ["1.2.0"], ["1.2.1", "1.3.0"]),
        ("^1", ["1.0.0", "1.9.9"], ["2.0.0", "0.9.0"]),
        ("^1.2.3", ["1.2.3", "1.9.0"], ["1.2.2", "2.0.0"]),
        ("^0.3", ["0.3.0", "0.3.9"], ["0.4.0"]),
        ("~1.2", ["1.2.0", "1.2.9"], ["1.3.0"]),
        (">=1.2", ["1.2.0", "5.0.0"], ["1.1.9"]),
        ("*", ["0.1.0", "9.9.9"], ["1.0.0-rc1"]),
        ("1", ["1.0.0", "1.5.0"], ["2.0.0"]),
        ("0.1.0-draft", ["0.1.0-draft"], ["0.1.0"]),
    ],
)
def test_version_constraints(constraint: str, allowed: list[str], refused: list[str]) -> None:
    parsed = VersionConstraint.parse(constraint)
    assert all(parsed.allows(v) for v in allowed)
    assert not any(parsed.allows(v) for v in refused)


def test_best_version_and_majors() -> None:
    assert VersionConstraint.parse("^1").best(["1.0.0", "1.4.2", "2.0.0", "junk"]) == "1.4.2"
    assert VersionConstraint.parse("^3").best(["1.0.0"]) is None
    assert Version.parse("1.0.0-rc1") < Version.parse("1.0.0")
    assert invoke_major("2.1.0") == 2
    assert invoke_major("^1") == 1
    assert invoke_major("*") == 1
    assert str(parse_node_ref("condition")) == "condition@*"


# -- mutations (structural part) -----------------------------------------------------------------


def test_apply_mutation_add_step_applies_defaults() -> None:
    d = parse_workflow(VALID)
    mutated = apply_mutation(
        d,
        GraphMutation(
            type=GraphMutationType.ADD_STEP,
            step_id="extra",
            data={"node": "transform@^1", "needs": ["check"]},
        ),
    )
    assert mutated.step_ids == ["fetch", "parse", "check", "extra"]
    assert mutated.step("extra").retry.max_attempts == 3  # from defaults
    assert mutated.step("extra").timeout == 10_000


def test_apply_mutation_errors() -> None:
    d = parse_workflow(VALID)
    with pytest.raises(WorkflowValidationError, match="step 'fetch' already exists"):
        apply_mutation(
            d, GraphMutation(type=GraphMutationType.ADD_STEP, step_id="fetch", data={"node": "x"})
        )
    with pytest.raises(WorkflowValidationError, match="unknown step 'nope'"):
        apply_mutation(
            d, GraphMutation(type=GraphMutationType.REMOVE_STEP, step_id="nope", data={})
        )
    with pytest.raises(WorkflowValidationError, match="expected"):
        apply_mutation(
            d, GraphMutation(type=GraphMutationType.REPLACE_NODE, step_id="fetch", data={"x": 1})
        )
    with pytest.raises(WorkflowValidationError, match=r"steps\[3\].node"):
        apply_mutation(
            d, GraphMutation(type=GraphMutationType.ADD_STEP, step_id="z", data={"needs": []})
        )


# -- the examples shipped in examples/ -----------------------------------------------------------


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def test_examples_exist() -> None:
    assert len(example_files()) >= 6


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    catalog = StaticNodeCatalog(
        {
            "http.request": ["1.0.0", "1.4.2", "2.0.0"],
            "transform": ["1.0.0", "1.2.0"],
            "condition": ["1.0.0"],
            "llm.summarize": ["0.3.0"],
            "ai.meta": ["1.0.0"],
            "email.send": ["1.0.0"],
            "database.query": ["1.0.0"],
            "openai.chat": ["1.0.0"],
            "code.run": ["1.0.0"],
            "webhook.trigger": ["1.0.0"],
        }
    )
    definition = parse_workflow(path.read_text(), node_catalog=catalog)
    assert definition.steps
