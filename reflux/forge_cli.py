"""``reflux forge ...``: new nodes, tested in the sandbox and registered as drafts (ADR 0071).

One parser for the family; each way of forging lives in its own module (``openapi``:
:mod:`reflux.forge_openapi_cli`; ``new``: :mod:`reflux.forge_new_cli`).
"""

from __future__ import annotations

from typing import Any

from reflux.forge_new_cli import add_new_command
from reflux.forge_openapi_cli import add_forge_openapi_command

__all__ = ["add_forge_commands"]


def add_forge_commands(subparsers: Any, default_api: str) -> None:
    forge = subparsers.add_parser(
        "forge", help="generate a node, test it in the sandbox, register it as a draft"
    )
    actions = forge.add_subparsers(dest="forge_action", required=True)
    add_forge_openapi_command(actions, default_api)
    add_new_command(actions)
