"""``make bench``: ``python -m benchmarks.run [--quick] [--skip-peers|--skip-traces|--skip-map]``.

Runs, one after the other (never at the same time: they share the machine's two cores), the
engine benchmark (:mod:`benchmarks.engine_bench`), the scheduler's restart time against history
size (:mod:`benchmarks.recovery_bench`), one worker's attempts in flight and per second against
a 200 ms HTTP service (:mod:`benchmarks.worker_io_bench`), a ``meta.map`` of 10,000 items
(:mod:`benchmarks.map_bench`), graph mutations of running runs
(:mod:`benchmarks.mutation_bench`: accepted -> visible in the run's graph), A/B replay of
recorded runs with side effects from the record (:mod:`benchmarks.replay_bench`), the node
forge (:mod:`benchmarks.forge_bench`), the floor of the architecture (:mod:`benchmarks.floor_bench`:
a step's Kafka traffic with no application work), the peers on the same workload
(``benchmarks.peer_<name>`` for each of :data:`PEERS`: Temporal, Restate, LittleHorse, Hatchet;
docs/decisions/0072-strongest-peers.md) and, when present, the traces benchmark
(``benchmarks.traces_bench``). Writes ``benchmarks/out/results.json``: one flat object of
metrics (ours, ``floor_*``, ``peer_<name>_*``, ``peer_<name>_*_ratio``, the traces keys) plus
``meta`` (date, commit, machine, errors). A sub-benchmark that fails is recorded in
``meta.errors`` and the others still run; the exit status is 1 then.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.report import (
    evaluate_goals,
    floor_fractions,
    format_side_by_side,
    format_table,
    peer_ratios,
)
from foundation.settings import PROJECT_ROOT, Settings, get_settings
from reflux.progress import progress_bar

OUT_FILE = PROJECT_ROOT / "benchmarks" / "out" / "results.json"
TRACES_MODULE = "benchmarks.traces_bench"
# Traces per traces-benchmark run (its own module decides what it does with them).
TRACES_N = {True: 20_000, False: 200_000}
# The peer engines, in the order they run: each is ``benchmarks.peer_<name>`` with
# ``run_<name>_benchmark(quick) -> dict`` (it installs, starts and stops its own server).
PEERS = ("temporal", "restate", "littlehorse", "hatchet")


def _progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib(meminfo: str) -> float | None:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def kafka_version(libs: Path) -> str:
    """From the broker's jar name (``kafka-server-3.9.1.jar``) in the local install."""
    for jar in sorted(libs.glob("kafka-server-[0-9]*.jar")):
        return jar.stem.removeprefix("kafka-server-")
    return "unknown"


def describe_machine(settings: Settings) -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "memory_gib": memory_gib(_read("/proc/meminfo")),
        "cpu_model": cpu_model(_read("/proc/cpuinfo")),
        "python": platform.python_version(),
        "kafka_version": kafka_version(settings.data_dir / "kafka" / "libs"),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def _attempt(
    name: str, errors: dict[str, str], timings: dict[str, float], fn: Callable[[], dict[str, float]]
) -> dict[str, float]:
    _progress(f"{name}: starting")
    began = time.monotonic()
    try:
        metrics = fn()
    except Exception as exc:
        errors[name] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        _progress(f"{name}: FAILED ({errors[name][:200]})")
        return {}
    finally:
        timings[name] = round(time.monotonic() - began, 1)
    _progress(f"{name}: done in {timings[name]:.0f}s")
    return metrics


def run_all(
    quick: bool,
    peers: Sequence[str],
    skip_traces: bool,
    *,
    skip_engine: bool = False,
    skip_recovery: bool = False,
    skip_worker_io: bool = False,
    skip_map: bool = False,
    skip_mutation: bool = False,
    skip_replay: bool = False,
    skip_forge: bool = False,
    skip_floor: bool = False,
    cluster: bool = False,
) -> dict[str, Any]:
    settings = get_settings()
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    skipped: list[str] = []
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "quick": quick,
        "machine": describe_machine(settings),
        "ratio_direction": "peer_<name>_*_ratio > 1 means REFLUX is better: peer/ours for "
        "latencies, ours/peer for throughput (see benchmarks/README.md)",
    }
    results: dict[str, Any] = {}

    # The engine's sub-benchmarks, in order: (name, skipped?, module, function(settings, quick)).
    # Imported only when they run (each pulls in its own dependencies).
    engine_parts = (
        ("engine", skip_engine, "benchmarks.engine_bench", "run_engine_benchmark"),
        ("recovery", skip_recovery, "benchmarks.recovery_bench", "run_recovery_benchmark"),
        ("worker_io", skip_worker_io, "benchmarks.worker_io_bench", "run_worker_io_benchmark"),
        ("map", skip_map, "benchmarks.map_bench", "run_map_benchmark"),
        ("mutation", skip_mutation, "benchmarks.mutation_bench", "run_mutation_benchmark"),
        ("replay", skip_replay, "benchmarks.replay_bench", "run_replay_benchmark"),
        ("forge", skip_forge, "benchmarks.forge_bench", "run_forge_benchmark"),
        ("floor", skip_floor, "benchmarks.floor_bench", "run_floor_benchmark"),
        # Scale-out (issue 15): its own three-broker cluster beside the local broker; minutes
        # long, so only with --cluster.
        ("scaling", not cluster, "benchmarks.scaling_bench", "run_scaling_benchmark"),
    )
    traces_present = importlib.util.find_spec(TRACES_MODULE) is not None
    present = [p for p in peers if importlib.util.find_spec(f"benchmarks.peer_{p}") is not None]
    planned = sum(not skip for _, skip, _, _ in engine_parts) + len(present)
    planned += not skip_traces and traces_present
    # One bar over the benchmarks (reflux/progress.py: stderr, on a terminal); the [bench]
    # lines stay on stdout, the record of what ran.
    with progress_bar("benchmarks", planned) as bar:
        for name, skip, module_name, function in engine_parts:
            if skip:
                skipped.append(name)
                continue
            run = getattr(importlib.import_module(module_name), function)
            results |= _attempt(name, errors, timings, functools.partial(run, settings, quick))
            bar.advance()
        for name in PEERS:
            if name not in peers:
                skipped.append(f"peer_{name}")
            elif name not in present:
                skipped.append(f"peer_{name} (benchmarks/peer_{name}.py not present)")
            else:
                run_peer = getattr(
                    importlib.import_module(f"benchmarks.peer_{name}"), f"run_{name}_benchmark"
                )
                results |= _attempt(
                    f"peer_{name}", errors, timings, functools.partial(run_peer, quick)
                )
                bar.advance()
        if skip_traces:
            skipped.append("traces")
        elif not traces_present:
            skipped.append("traces (benchmarks/traces_bench.py not present)")
        else:
            module = importlib.import_module(TRACES_MODULE)
            n = TRACES_N[quick]
            results |= _attempt(
                "traces", errors, timings, lambda: module.run_traces_benchmark(settings, n)
            )
            bar.advance()
    results |= peer_ratios(results) | floor_fractions(results)
    meta |= {"errors": errors, "skipped": skipped, "wall_s": timings}
    return {**results, "meta": meta}


# Sub-benchmark names for --only; each also has a --skip-<name> flag ("scaling": --cluster).
PARTS = (
    "engine",
    "recovery",
    "worker_io",
    "map",
    "mutation",
    "replay",
    "forge",
    "floor",
    "peers",
    "traces",
    "scaling",
)


def _previous(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def merge_partial(previous: dict[str, Any], partial: dict[str, Any]) -> dict[str, Any]:
    """A partial run (``--only``) on top of the last full results: its keys replace the old ones,
    the rest stays, and ``meta.partial_runs`` says which keys came from which run."""
    merged = {k: v for k, v in previous.items() if k != "meta"}
    merged |= {k: v for k, v in partial.items() if k != "meta"}
    meta = dict(previous.get("meta") or partial["meta"])
    runs = list(meta.get("partial_runs") or [])
    runs.append({**partial["meta"], "keys": sorted(k for k in partial if k != "meta")})
    meta["partial_runs"] = runs
    meta["errors"] = partial["meta"]["errors"]
    return {**merged, "meta": meta}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs (a few minutes)")
    parser.add_argument(
        "--skip-peers",
        "--skip-peer",
        dest="skip_peers",
        action="store_true",
        help="do not run any peer engine (the fast path; --skip-peer is the old spelling)",
    )
    parser.add_argument(
        "--peers",
        metavar="NAMES",
        default=",".join(PEERS),
        help=f"comma-separated peers to run (default: all of {', '.join(PEERS)})",
    )
    parser.add_argument("--skip-floor", action="store_true", help="do not run floor_bench")
    parser.add_argument("--skip-traces", action="store_true", help="do not run traces_bench")
    parser.add_argument("--skip-engine", action="store_true", help="do not run engine_bench")
    parser.add_argument("--skip-recovery", action="store_true", help="do not run recovery_bench")
    parser.add_argument("--skip-worker-io", action="store_true", help="do not run worker_io_bench")
    parser.add_argument("--skip-map", action="store_true", help="do not run map_bench")
    parser.add_argument("--skip-mutation", action="store_true", help="do not run mutation_bench")
    parser.add_argument("--skip-replay", action="store_true", help="do not run replay_bench")
    parser.add_argument("--skip-forge", action="store_true", help="do not run forge_bench")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also the scale-out benchmark: 1, 2, 4 processes of each kind on a three-broker "
        "cluster and on one broker (benchmarks/scaling_bench.py)",
    )
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help=f"comma-separated sub-benchmarks to run ({', '.join(PARTS)}); the others are "
        "skipped and their keys kept from the existing results file",
    )
    parser.add_argument("--out", type=Path, default=OUT_FILE, help="results JSON file")
    args = parser.parse_args(argv)
    if args.only:
        only = {name.strip() for name in args.only.split(",") if name.strip()}
        if unknown := only - set(PARTS):
            parser.error(f"unknown sub-benchmarks {sorted(unknown)}; known: {', '.join(PARTS)}")
        for name in PARTS:
            if name not in only and name != "scaling":
                setattr(args, f"skip_{name}", True)
        args.cluster = args.cluster or "scaling" in only
    peers = [name.strip() for name in args.peers.split(",") if name.strip()]
    if unknown_peers := set(peers) - set(PEERS):
        parser.error(f"unknown peers {sorted(unknown_peers)}; known: {', '.join(PEERS)}")
    output = run_all(
        args.quick,
        [] if args.skip_peers else peers,
        args.skip_traces,
        skip_engine=args.skip_engine,
        skip_recovery=args.skip_recovery,
        skip_worker_io=args.skip_worker_io,
        skip_map=args.skip_map,
        skip_mutation=args.skip_mutation,
        skip_replay=args.skip_replay,
        skip_forge=args.skip_forge,
        skip_floor=args.skip_floor,
        cluster=args.cluster,
    )
    if args.only:
        output = merge_partial(_previous(args.out), output)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=2) + "\n")
    print()
    print(format_table(output))
    print()
    print("Side by side (same workload and definitions; ADR 0072):")
    print(format_side_by_side(output))
    print()
    for goal, value, met in evaluate_goals(output):
        verdict = "missing" if met is None else ("met" if met else "MISSED")
        shown = "-" if value is None else f"{value:.2f}"
        print(f"goal {goal.key} {goal}: {shown} -> {verdict}")
    errors = output["meta"]["errors"]
    for name, error in errors.items():
        print(f"ERROR in {name}: {error}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
