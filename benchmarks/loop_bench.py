"""``make bench-loop``: ``python -m benchmarks.loop_bench [--quick] [--only a,b] [--seeds 1,2,3]
[--merge]``.

Runs the learning-loop scenarios of issue 11, one after the other (they share the machine's two
cores), and writes ``benchmarks/out/loop.json``. A scenario is a module under
``benchmarks/loop/`` with a function ``run(seeds: list[int], quick: bool) -> dict[str, Any]``;
every such module that exists runs, the known ones first in the issue's order
(:data:`SCENARIOS`: ``drift``, ``flaky``, ``parallel``, ``models``, ``bad_mutations``), then any
other. Helper modules (``stubs``, ``common``, names starting with ``_``) are not scenarios.

What a scenario returns is its own, with two conventions the harness reads:

- ``per_seed``: ``{"<seed>": {metric: number | {metric: number}}}``; the harness adds
  ``summary``: per metric (nested ones as ``a.b``), ``n``, ``median``, ``p95`` (nearest rank),
  ``min``, ``max`` over the seeds;
- ``goals``: ``[{"name", "target", "value", "met"}]`` (``met`` true, false, or null when not
  measured); printed at the end.

``meta`` says when, on what (machine, like :mod:`benchmarks.run`), at which git commit, with
which seeds, what was skipped or failed and each scenario's wall time. A scenario that raises is
recorded in ``meta.errors`` and the others still run; the exit status is 1 then. ``--merge``
re-runs some scenarios into an existing file, each scenario's own run recorded in ``meta.runs``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchmarks.loop
from benchmarks.loop.common import progress, summarize_per_seed
from benchmarks.run import _git, describe_machine
from foundation.settings import PROJECT_ROOT, get_settings
from reflux.progress import progress_bar

OUT_FILE = PROJECT_ROOT / "benchmarks" / "out" / "loop.json"
SCENARIOS = ("drift", "flaky", "parallel", "models", "bad_mutations")
"""The issue's five scenarios, in its order."""
HELPERS = frozenset({"stubs", "common"})
SEEDS = {True: [1, 2, 3], False: [1, 2, 3, 4, 5]}
"""Default seeds: several per scenario, fixed so two runs are comparable."""


def available_scenarios() -> list[str]:
    """Scenario modules present under ``benchmarks/loop/``, known ones first."""
    found = {
        module.name
        for module in pkgutil.iter_modules(benchmarks.loop.__path__)
        if not module.ispkg and module.name not in HELPERS and not module.name.startswith("_")
    }
    return [name for name in SCENARIOS if name in found] + sorted(found - set(SCENARIOS))


def run_scenarios(names: list[str], seeds: list[int], quick: bool) -> dict[str, Any]:
    errors: dict[str, str] = {}
    wall: dict[str, float] = {}
    skipped: list[str] = []
    scenarios: dict[str, Any] = {}
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "quick": quick,
        "seeds": seeds,
        "machine": describe_machine(get_settings()),
    }
    present = available_scenarios()
    # One bar over the scenarios (reflux/progress.py: stderr, on a terminal).
    with progress_bar("loop scenarios", len(names)) as bar:
        for name in bar.each(names):
            if name not in present:
                skipped.append(f"{name} (benchmarks/loop/{name}.py not present)")
                continue
            module = importlib.import_module(f"benchmarks.loop.{name}")
            run = getattr(module, "run", None)
            if run is None:
                skipped.append(f"{name} (no run(seeds, quick) function)")
                continue
            progress(name, f"starting (seeds {seeds}, quick={quick})")
            began = time.monotonic()
            try:
                result: dict[str, Any] = run(list(seeds), quick)
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
                progress(name, f"FAILED ({errors[name][:200]})")
                continue
            finally:
                wall[name] = round(time.monotonic() - began, 1)
            if isinstance(result.get("per_seed"), dict):
                result["summary"] = summarize_per_seed(result["per_seed"])
            scenarios[name] = result
            progress(name, f"done in {wall[name]:.0f}s")
    meta |= {"errors": errors, "skipped": skipped, "wall_s": wall}
    return {"scenarios": scenarios, "meta": meta}


def merge_into(previous: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """``previous`` with the scenarios of ``fresh`` replaced. Scenarios run at different times
    (or commits) stay honest: ``meta.runs[name]`` records each one's date, commit, dirtiness,
    seeds, mode and wall time; the top-level meta is the newest run's."""
    runs: dict[str, Any] = dict(previous.get("meta", {}).get("runs") or {})
    old_meta = previous.get("meta", {})
    for name in previous.get("scenarios", {}):
        runs.setdefault(name, _run_meta(old_meta, name))
    meta = fresh["meta"]
    for name in fresh["scenarios"]:
        runs[name] = _run_meta(meta, name)
    errors = {**old_meta.get("errors", {}), **meta["errors"]}
    for name in fresh["scenarios"]:
        errors.pop(name, None)
    merged_meta = {
        **meta,
        "errors": errors,
        "wall_s": {**old_meta.get("wall_s", {}), **meta["wall_s"]},
        "runs": runs,
    }
    scenarios = {**previous.get("scenarios", {}), **fresh["scenarios"]}
    return {"scenarios": scenarios, "meta": merged_meta}


def _run_meta(meta: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "date": meta.get("date"),
        "git_commit": meta.get("git_commit"),
        "git_dirty": meta.get("git_dirty"),
        "quick": meta.get("quick"),
        "seeds": meta.get("seeds"),
        "wall_s": (meta.get("wall_s") or {}).get(name),
    }


def format_report(output: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, result in output["scenarios"].items():
        lines.append(f"== {name}")
        for metric, stats in result.get("summary", {}).items():
            lines.append(
                f"  {metric:<48} median {stats['median']:>10.3f}   p95 {stats['p95']:>10.3f}"
                f"   (n={stats['n']})"
            )
        for goal in result.get("goals", []):
            met = goal.get("met")
            verdict = "not measured" if met is None else ("met" if met else "MISSED")
            lines.append(
                f"  goal {goal.get('name')}: {goal.get('target')} -> {goal.get('value')} "
                f"[{verdict}]"
            )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loop_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer seeds and runs")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--seeds", type=_ints, default=None, help="comma-separated seeds")
    parser.add_argument("--out", type=Path, default=OUT_FILE, help="results JSON file")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace only the scenarios run in the existing --out file (each scenario's own "
        "date, commit, seeds and mode are kept in meta.runs)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or available_scenarios()
    seeds = args.seeds or SEEDS[args.quick]
    output = run_scenarios(names, seeds, args.quick)
    if args.merge and args.out.exists():
        output = merge_into(json.loads(args.out.read_text()), output)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=2) + "\n")
    print()
    print(format_report(output))
    for name, error in output["meta"]["errors"].items():
        print(f"ERROR in {name}: {error}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 1 if output["meta"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
