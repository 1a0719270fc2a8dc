"""``reflux bandit``: run the optimizer's bandit experiments as their own process (ADR 0037).

They read the read models (``--schema``, the projector's) and the ``traces`` topic, and write
``reweight`` / ``keep`` / ``rollback`` requests for ``model_choice`` proposals (evidence
``bandit``) on ``reflux.mutations``; run it under ``reflux supervise --`` like the other
components. ``--once`` looks once, prints each open experiment and exits (a request found is
sent, as the loop would).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from typing import Any

from foundation.settings import get_settings

__all__ = ["add_bandit_commands"]


def add_bandit_commands(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bandit",
        help="run the optimizer's bandit experiments: reweight, keep or roll back model_choice "
        "canaries from their live runs",
    )
    parser.add_argument("--schema", default="reflux", help="read-model schema (default reflux)")
    parser.add_argument(
        "--interval", type=float, default=0.2, help="seconds between rounds (default 0.2)"
    )
    parser.add_argument("--once", action="store_true", help="look once, print, and exit")
    parser.set_defaults(handler=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    # Imported here: river's bandits (and scipy) cost ~1.5 s of every `reflux` start otherwise.
    from processors.optimizer.experiment_runtime import BanditExperiments

    runner = BanditExperiments(get_settings(), schema=args.schema, interval_s=args.interval)
    try:
        if args.once:
            sent = runner.tick()
            for mutation_id, running in sorted(runner.running.items()):
                print(json.dumps({"mutation_id": mutation_id, **running.experiment.snapshot()}))
            for request in sent:
                print(
                    json.dumps(
                        {
                            "sent": request.action.value,
                            "mutation_id": request.mutation_id,
                            "canary_weight": request.canary_weight,
                        }
                    )
                )
            return 0
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        runner.run(stop)
    finally:
        runner.close()
    return 0
