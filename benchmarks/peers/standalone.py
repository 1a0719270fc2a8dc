"""``python -m benchmarks.peer_<name> [--quick] [--out F]``: one peer measured alone.

Every peer's parent module runs the same way on its own: parse the two options, describe the
peer, measure, print the metrics, write ``{"metrics": ..., "meta": ...}``. The machine's load
at the start and the end goes in ``meta`` beside the wall time: others may share the machine,
and a high load explains a noisy result.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Measured = tuple[dict[str, float], dict[str, Any]]
"""The metrics and what the measurement reported beside them (meta)."""


def print_table(metrics: dict[str, float]) -> None:
    width = max(len(name) for name in metrics)
    print(f"{'metric':<{width}}  value")
    for name, value in metrics.items():
        print(f"{name:<{width}}  {value:10.2f}")


def run_alone(
    argv: list[str] | None,
    *,
    prog: str,
    description: str | None,
    out_file: Path,
    describe: Callable[[bool], dict[str, Any]],
    measure: Callable[[bool], Measured],
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help="fewer runs (smoke check)")
    parser.add_argument("--out", type=Path, default=out_file, help="JSON result file")
    args = parser.parse_args(argv)
    began = time.monotonic()
    load_at_start = round(os.getloadavg()[0], 2)
    metrics, details = measure(args.quick)
    meta = {
        # Described after measuring: a first run installs what it then describes.
        **describe(args.quick),
        **details,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": load_at_start,
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "wall_s": round(time.monotonic() - began, 1),
    }
    print_table(metrics)
    print(
        f"load average (1 min): {meta['loadavg_1m_at_start']} at start, "
        f"{meta['loadavg_1m_at_end']} at end; wall {meta['wall_s']}s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"metrics": metrics, "meta": meta}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0
