"""``reflux critic``: run the critic (traces in, diagnoses out) as its own process.

One per deployment (processors/critic/runtime.py says why). ``reflux dev`` can run it inside
the engine instead (``DevEngine(critic=True)``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType
from typing import Any

from foundation.settings import get_settings
from processors.critic.config import ENGINES

__all__ = ["add_critic_commands", "handle_critic"]

log = logging.getLogger(__name__)


def add_critic_commands(subparsers: Any) -> argparse.ArgumentParser:
    critic: argparse.ArgumentParser = subparsers.add_parser(
        "critic",
        help="read the traces topic and publish diagnoses (drifts, anomalies, error clusters, "
        "bottlenecks, cache and parallelism candidates, cost) until stopped",
    )
    critic.add_argument(
        "--engine",
        choices=sorted(ENGINES),
        default="kafka",
        help="kafka: confluent-kafka loop (default, ~7x cheaper per trace); faust: faust-streaming",
    )
    critic.add_argument(
        "--schema", default="reflux", help="read model schema with the workflow definitions"
    )
    critic.set_defaults(handler=handle_critic)
    return critic


def handle_critic(args: argparse.Namespace) -> int:
    settings = get_settings()
    # Imported here: the detectors (river, scipy) cost ~2 s of every `reflux` start otherwise.
    from processors.critic.runtime import CriticProcessor

    processor = CriticProcessor(settings, engine=args.engine, schema=args.schema)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        processor.interrupt()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    log.info(
        "critic: %s -> %s (group %s)",
        processor.catalog.traces.topic,
        processor.catalog.diagnoses.topic,
        processor.app_id,
    )
    processor.run(stop)
    log.info("critic stopped: %s", processor.stats)
    return 0
