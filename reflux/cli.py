"""The ``reflux`` command line: one entry point, one sub-command per component."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from reflux.errors import RefluxError
from streams.cli import add_topics_commands


def _demo(args: argparse.Namespace) -> int:
    from reflux.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reflux", description="REFLUX: self-improving workflows, event-sourced on Kafka."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub: Any = parser.add_subparsers(dest="command", required=True)
    add_topics_commands(sub)
    demo = sub.add_parser("demo", help="run the demo against the local services")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except RefluxError as exc:
        print(f"reflux: error [{exc.error_class}]: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
