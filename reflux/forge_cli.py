"""``reflux forge ...``: the node forge's commands, one module each (docs/forge.md)."""

from __future__ import annotations

from typing import Any

from reflux.forge_new_cli import add_new_command

__all__ = ["add_forge_commands"]


def add_forge_commands(subparsers: Any) -> None:
    forge = subparsers.add_parser(
        "forge", help="make node artifacts, test them in the sandbox, register them as drafts"
    )
    actions = forge.add_subparsers(dest="forge_action", required=True)
    add_new_command(actions)
