"""``reflux canary``: run the canary judge as its own process (ADR 0033).

It reads the read models (``--schema``, the projector's) and the ``traces`` topic, and writes
keep / rollback requests on ``reflux.mutations``; run it under ``reflux supervise --`` like the
other components. ``--once`` judges what has finished now, prints each open canary's state and
exits (a decision found is sent, as the loop would).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from foundation.settings import get_settings
from processors.canary.judge import CanaryConfig
from processors.canary.runtime import CanaryJudge

__all__ = ["add_canary_commands"]


def add_canary_commands(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "canary",
        help="run the canary judge: keep or roll back applied proposals from their live runs",
    )
    defaults = CanaryConfig()
    parser.add_argument("--schema", default="reflux", help="read-model schema (default reflux)")
    parser.add_argument(
        "--alpha",
        type=float,
        default=defaults.alpha,
        help=f"chance of rolling back a change that did nothing (default {defaults.alpha})",
    )
    parser.add_argument(
        "--min-runs",
        type=int,
        default=defaults.min_runs,
        help=f"finished runs per arm before any decision (default {defaults.min_runs})",
    )
    parser.add_argument(
        "--max-runs",
        type=int,
        default=defaults.max_runs,
        help="canary runs after which a canary with no significant regression is kept "
        f"(default {defaults.max_runs})",
    )
    parser.add_argument(
        "--interval", type=float, default=0.2, help="seconds between rounds (default 0.2)"
    )
    parser.add_argument("--no-cost", action="store_true", help="do not read traces for cost")
    parser.add_argument("--once", action="store_true", help="judge once, print, and exit")
    parser.set_defaults(handler=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    try:
        config = CanaryConfig(alpha=args.alpha, min_runs=args.min_runs, max_runs=args.max_runs)
    except ValueError as exc:
        print(f"reflux canary: {exc}", file=sys.stderr)
        return 2
    judge = CanaryJudge(
        get_settings(),
        schema=args.schema,
        config=config,
        interval_s=args.interval,
        costs=not args.no_cost,
    )
    try:
        if args.once:
            sent = judge.tick()
            for mutation_id, watch in sorted(judge.watching.items()):
                verdict = watch.last
                state = "too few runs" if verdict is None else verdict.reason
                print(f"{mutation_id}  {watch.canary.workflow_id}  {state}")
            for request in sent:
                print(
                    json.dumps({"sent": request.action.value, "mutation_id": request.mutation_id})
                )
            return 0
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        judge.run(stop)
    finally:
        judge.close()
    return 0
