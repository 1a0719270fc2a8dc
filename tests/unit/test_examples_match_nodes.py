"""Every example workflow calls real nodes with params their input models accept.

Templated values are only known at run time, so this checks names: no param a node would
reject as unknown, and every required param present.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node_workers.nodes import builtin_nodes
from workflows import parse_workflow

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
NODES = {node.name: node for node in builtin_nodes()}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_steps_fit_their_nodes(path: Path) -> None:
    definition = parse_workflow(path.read_text())
    for step in definition.steps:
        assert step.node_name in NODES, f"{path.name}: step {step.id} uses {step.node_name}"
        fields = {
            (field.alias or name): field
            for name, field in NODES[step.node_name].Input.model_fields.items()
        }
        params = step.params if isinstance(step.params, dict) else {}
        unknown = sorted(set(params) - set(fields))
        missing = sorted(k for k, f in fields.items() if f.is_required() and k not in params)
        assert not unknown and not missing, (path.name, step.id, unknown, missing)


def test_every_example_is_checked() -> None:
    assert len(EXAMPLES) >= 10
