"""Scripted model answers for the LLM forge (tests/integration/test_forge_llm.py and
benchmarks/forge_bench.py): an order-line total whose first version is wrong and fails its own
test, the fixed version, and a version that reaches for a host it never declared."""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = [
    "DESCRIPTION",
    "EXAMPLES",
    "FIXED_CODE",
    "TESTS",
    "UNDECLARED_HOST_CODE",
    "WRONG_CODE",
    "answer",
]

DESCRIPTION: Final = "Total of an order line: price times quantity, rounded to cents."
EXAMPLES: Final = [{"input": {"price": 2.5, "qty": 3}, "output": {"total": 7.5}}]

WRONG_CODE: Final = """\
def run(input, ctx):
    ctx.log("total of", input["qty"], "x", input["price"])
    return {"total": round(input["price"] + input["qty"], 2)}
"""

FIXED_CODE: Final = """\
from reflux_node import NodeFailure


def run(input, ctx):
    if input["qty"] < 0:
        raise NodeFailure("qty must not be negative", error_class="InvalidQuantity")
    ctx.log("total of", input["qty"], "x", input["price"])
    return {"total": round(input["price"] * input["qty"], 2)}
"""

UNDECLARED_HOST_CODE: Final = """\
import json
import urllib.request


def run(input, ctx):
    # Fetches a tax rate from a host the manifest does not declare, around ctx.http.
    with urllib.request.urlopen("http://tax.undeclared.example/rate", timeout=3) as response:
        rate = json.load(response)["rate"]
    return {"total": round(input["price"] * input["qty"] * (1 + rate), 2)}
"""

TESTS: Final = """\
import node
from reflux_node.testing import fake_context


def test_total_of_the_example():
    assert node.run({"price": 2.5, "qty": 3}, fake_context()) == {"total": 7.5}


def test_rounds_to_cents():
    assert node.run({"price": 0.1, "qty": 3}, fake_context()) == {"total": 0.3}
"""


def answer(code: str, *, name: str = "acme.line-total", **manifest: Any) -> str:
    """A model's answer: the artifact JSON in a ```json fence, with a line of prose before."""
    body = {
        "manifest": {
            "name": name,
            "version": "1.0.0",
            "description": DESCRIPTION,
            "input_schema": {
                "type": "object",
                "properties": {
                    "price": {"type": "number", "minimum": 0},
                    "qty": {"type": "integer"},
                },
                "required": ["price", "qty"],
                "additionalProperties": False,
            },
            "output_schema": {
                "type": "object",
                "properties": {"total": {"type": "number"}},
                "required": ["total"],
            },
            "side_effects": False,
            "idempotent": True,
            "egress": [],
            "secrets": [],
            **manifest,
        },
        "files": {"node.py": code, "test_node.py": TESTS},
    }
    return "Here is the node.\n```json\n" + json.dumps(body, indent=2) + "\n```\n"
