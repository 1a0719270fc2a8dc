"""`--json` for the CLI's read commands: the API's JSON body as is, for scripts and `jq`."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_json_flag", "print_json"]


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the API's JSON instead of text (for scripts)"
    )


def print_json(body: Any) -> None:
    """One JSON document on stdout (indented, keys in the API's order)."""
    print(json.dumps(body, indent=2, ensure_ascii=False))
