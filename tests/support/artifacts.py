"""Node artifacts for tests (node_workers/artifacts/bundle.py): small, hand-written, varied."""

from __future__ import annotations

from typing import Any

from node_workers.artifacts.bundle import NodeArtifact, parse_artifact

__all__ = ["ECHO_CODE", "ECHO_TESTS", "make_artifact"]

ECHO_CODE = """
def run(input, ctx):
    ctx.log("greeting", input["name"])
    return {"greeting": "hello " + input["name"]}
"""

ECHO_TESTS = """
import node
from reflux_node.testing import fake_context


def test_greets():
    assert node.run({"name": "ada"}, fake_context()) == {"greeting": "hello ada"}
"""

OBJECT_IN = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1}},
    "required": ["name"],
    "additionalProperties": False,
}
OBJECT_OUT = {
    "type": "object",
    "properties": {"greeting": {"type": "string"}},
    "required": ["greeting"],
}


def make_artifact(
    name: str = "acme.greet",
    version: str = "0.1.0",
    *,
    code: str = ECHO_CODE,
    tests: str | None = ECHO_TESTS,
    input_schema: dict[str, Any] | None = None,
    output_schema: dict[str, Any] | None = None,
    **manifest: Any,
) -> NodeArtifact:
    files = {"node.py": code}
    if tests is not None:
        files["test_node.py"] = tests
    return parse_artifact(
        {
            "manifest": {
                "name": name,
                "version": version,
                "description": f"{name} for tests",
                "input_schema": input_schema or OBJECT_IN,
                "output_schema": output_schema or OBJECT_OUT,
                **manifest,
            },
            "tests": "test_node.py" if tests is not None else None,
            "files": files,
        }
    )
