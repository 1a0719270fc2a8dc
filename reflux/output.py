"""`--json` for the CLI's read commands: the API's JSON body as is, for scripts and `jq`.

:data:`READ_COMMANDS` names every command that only reads (lists, shows, reports). Each of them
takes ``--json``; ``tests/unit/test_cli_tree.py`` walks the whole command tree and fails on a
read command without it, and on a command that is in neither list (a new command must be
classified here).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["OTHER_COMMANDS", "READ_COMMANDS", "add_json_flag", "print_json"]

READ_COMMANDS = frozenset(
    {
        "runs list",
        "runs show",
        "runs graph",
        "runs diff",
        "workflows list",
        "workflows show",
        "nodes list",
        "nodes show",
        "replay",
        "metrics nodes",
        "metrics workflows",
        "metrics failures",
        "metrics reliability",
        "metrics retries",
        "metrics quality",
        "metrics ingest",
        "metrics alerts",
        "mutations list",
        "mutations show",
        "diagnoses list",
        "diagnoses show",
        "diagnoses similar",
        "schedules list",
        "schedules show",
        "api-keys list",
        "topics list",
    }
)

# Everything else: commands that write (start, change, create, delete), components that serve
# until stopped, and the tools that print something other than a report (a key, a script).
OTHER_COMMANDS = frozenset(
    {
        # writes
        "run",
        "runs mutate",
        "runs redrive",
        "runs rebind",
        "runs signal",
        "runs feedback",
        "runs export",
        "runs import",
        "replay ab",
        "mutations propose",
        "mutations approve",
        "mutations reject",
        "mutations keep",
        "mutations rollback",
        "mutations policy",
        "schedules create",
        "schedules pause",
        "schedules resume",
        "schedules delete",
        "api-keys create",
        "api-keys revoke",
        "topics create",
        "projections migrate",
        "projections rebuild",
        "traces migrate",
        "secrets generate-key",
        "secrets encrypt",
        "forge openapi",
        "forge new",
        # components (serve until stopped; `--once` modes judge and write, then exit)
        "dev",
        "supervise",
        "scheduler",
        "trigger-router",
        "worker",
        "projector",
        "traces serve",
        "api",
        "mutation-processor",
        "historian",
        "schedules run",
        "replay-runner",
        "alerts serve",
        "critic",
        "optimizer",
        "canary",
        "bandit",
        # tools
        "demo",
        "completion",
    }
)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the API's JSON instead of text (for scripts)"
    )


def print_json(body: Any) -> None:
    """One JSON document on stdout (indented, keys in the API's order)."""
    print(json.dumps(body, indent=2, ensure_ascii=False, default=str))
