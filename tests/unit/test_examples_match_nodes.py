"""Every example workflow calls real nodes with params their input models accept.

Templated values are only known at run time, so this checks names: no param a node would
reject as unknown, and every required param present.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node_workers.nodes import builtin_nodes
from workflows import parse_workflow
from workflows.meta import MAP_NODE, is_meta_node, map_params
from workflows.semver import parse_node_ref

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
NODES = {node.name: node for node in builtin_nodes()}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_steps_fit_their_nodes(path: Path) -> None:
    definition = parse_workflow(path.read_text())
    for step in definition.steps:
        node_name, params = step.node_name, step.params
        if node_name == MAP_NODE:  # the node it runs per item, with its per-item params
            inner = map_params(step.params)
            node_name, params = parse_node_ref(inner.node).name, inner.params
        elif is_meta_node(node_name):
            continue  # run by the scheduler: its params are checked by validation
        assert node_name in NODES, f"{path.name}: step {step.id} uses {node_name}"
        fields = {
            (field.alias or name): field
            for name, field in NODES[node_name].Input.model_fields.items()
        }
        params = params if isinstance(params, dict) else {}
        unknown = sorted(set(params) - set(fields))
        missing = sorted(k for k, f in fields.items() if f.is_required() and k not in params)
        assert not unknown and not missing, (path.name, step.id, unknown, missing)


def test_every_example_is_checked() -> None:
    assert len(EXAMPLES) >= 10
