"""The Hatchet peer's worker process: ``python -m benchmarks.peers.hatchet_worker NAME``.

Runs in the peer's virtualenv, started and stopped by ``benchmarks.peers.hatchet_driver``.
A process of its own because the SDK's ``Worker.start`` owns its event loop and the process's
signal handlers (it refuses to start inside a running loop), so it cannot share the driver's.
"""

from __future__ import annotations

import argparse

from hatchet_sdk import Hatchet

from benchmarks.peers.hatchet_flow import build_chain
from benchmarks.peers.hatchet_results import WORKER_SLOTS
from benchmarks.peers.timings import STEPS_PER_RUN


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.hatchet_worker")
    parser.add_argument("workflow", help="workflow name (the driver's)")
    parser.add_argument("--worker-name", required=True)
    parser.add_argument("--slots", type=int, default=WORKER_SLOTS)
    args = parser.parse_args(argv)
    hatchet = Hatchet()
    workflow = build_chain(hatchet, args.workflow, STEPS_PER_RUN)
    worker = hatchet.worker(args.worker_name, slots=args.slots, workflows=[workflow])
    worker.start()  # until SIGTERM from the driver


if __name__ == "__main__":
    main()
