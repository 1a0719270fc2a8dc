"""``reflux forge new "description"``: a node written by an LLM, tested in the sandbox,
registered as a draft (:func:`node_workers.forge.llm.forge_new`; docs/forge.md).

Runs here, with this process's settings: the model at ``REFLUX_FORGE_LLM_BASE_URL`` with the
key in the secret ``REFLUX_FORGE_LLM_API_KEY_NAME`` names, the sandbox, the object store and
Kafka. One progress line per round on stderr; the registered node on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from foundation.errors import ConfigurationError
from foundation.settings import get_settings
from foundation.tenancy import DEFAULT_TENANT
from reflux.output import add_json_flag, print_json

__all__ = ["add_new_command", "load_examples"]


def load_examples(path: Path) -> list[dict[str, Any]]:
    """A JSON list of example objects (``{"input": ..., "output": ...}``), or ``{"examples":
    [...]}``."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"--examples {path}: Expected a JSON file, but {exc}") from None
    if isinstance(value, dict) and "examples" in value:
        value = value["examples"]
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise ConfigurationError(f"--examples {path}: Expected a JSON list of objects")
    return value


def _new(args: argparse.Namespace) -> int:
    from node_workers.forge.llm import RoundEvent, forge_new, forge_summary

    def progress(event: RoundEvent) -> None:
        print(
            f"forge: round {event.round}/{event.max_rounds}: {event.outcome} "
            f"(model {event.generate_s:.1f} s, sandbox {event.sandbox_s:.1f} s): "
            f"{event.detail[:300]}",
            file=sys.stderr,
            flush=True,
        )

    result = forge_new(
        get_settings(),
        args.description,
        examples=load_examples(args.examples) if args.examples else (),
        model=args.model,
        max_rounds=args.rounds,
        name=args.name,
        version=args.version,
        tenant=args.tenant,
        on_round=progress,
    )
    summary = forge_summary(result)
    if args.json:
        print_json(summary)
        return 0
    print(f"registered {summary['name']}@{summary['version']} as a draft")
    print(f"  digest    {summary['digest']}")
    print(f"  code      {summary['code_uri']}")
    passed = sum(1 for t in summary["tests"] if t["passed"])
    print(f"  rounds    {summary['rounds']}, {passed} test(s) passed in the sandbox")
    timings = summary["timings"]
    print(
        f"  time      {timings['total_s']:.1f} s (model {timings['generate_s']:.1f} s, "
        f"sandbox {timings['sandbox_s']:.1f} s, register {timings['register_s']:.1f} s)"
    )
    print(
        f"  promote   POST /v1/nodes/{summary['name']}/versions/{summary['version']}/promote",
    )
    return 0


def _rounds(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10:
        raise argparse.ArgumentTypeError(f"expected 1..10 rounds, got {value}")
    return value


def add_new_command(actions: Any) -> None:
    new = actions.add_parser(
        "new",
        help="a node from a description: an LLM writes manifest, code and tests; the tests run "
        "in the sandbox, failures go back to it; registered as a draft",
    )
    new.add_argument("description", help="what the node does, in words")
    new.add_argument(
        "--examples",
        type=Path,
        metavar="FILE",
        help='JSON list of examples, e.g. [{"input": {...}, "output": {...}}]',
    )
    new.add_argument("--model", help="model name (default REFLUX_FORGE_LLM_MODEL)")
    new.add_argument(
        "--rounds",
        type=_rounds,
        metavar="N",
        help="answers asked at most before refusing (default REFLUX_FORGE_LLM_ROUNDS, 3)",
    )
    new.add_argument("--name", help="the node's name (default: the model's choice)")
    new.add_argument(
        "--version",
        help="the node's version (default: the model's), e.g. the next version of a node "
        "the forged one would replace",
    )
    new.add_argument(
        "--tenant", default=DEFAULT_TENANT, help=f"register for this tenant ({DEFAULT_TENANT})"
    )
    add_json_flag(new)
    new.set_defaults(handler=_new)
