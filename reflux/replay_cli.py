"""``reflux replay``: MINIMAL placeholder written by the A/B helper so ``reflux replay ab`` works;
the debugging helper's version (re-fold RUN, --until, --step) replaces this file and keeps the
dispatch of ``ab`` to :func:`reflux.replay_ab_cli.main`."""

from __future__ import annotations

import argparse
from typing import Any


def _dispatch(args: argparse.Namespace) -> int:
    from reflux import replay_ab_cli

    if args.args and args.args[0] == "ab":
        return replay_ab_cli.main(args.args[1:])
    print("reflux replay: only `reflux replay ab ...` is available in this build")
    return 2


def add_replay_commands(subparsers: Any) -> None:
    replay = subparsers.add_parser("replay", help="replay runs (`reflux replay ab ...`: A/B)")
    replay.add_argument("args", nargs=argparse.REMAINDER)
    replay.set_defaults(handler=_dispatch)
