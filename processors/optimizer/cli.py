"""``reflux optimizer``: run the optimizer (diagnoses -> mutation proposals; docs/learning.md)."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import Any

import yaml

from foundation.errors import RefluxError
from foundation.parse_limits import load_yaml
from foundation.settings import get_settings

__all__ = ["add_optimizer_command", "load_config"]


def load_config(path: str | None) -> Any:
    """An :class:`OptimizerConfig` from a YAML/JSON file (every field optional)::

    timeout_margin: 1.5
    max_attempts: 8
    exploration_budget: 0.1
    weights: {"*": {cost: 0.5}, order-quote: {quality: 2, latency: 0.2}}
    fallbacks: {"order-quote/fetch": {node: http.request, params: {url: http://backup}}}
    models: {"answer/ask": [big, small]}   # reference first, then cheaper ones to try
    contexts: {answer: difficulty}          # the input field classifying a run
    experiment_min_runs: 10
    """
    from processors.optimizer.bandit import RewardWeights
    from processors.optimizer.strategies import OptimizerConfig

    if path is None:
        return OptimizerConfig()
    try:
        raw = load_yaml(Path(path).read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise RefluxError(f"--config {path}: {exc}", error_class="Config") from None
    if not isinstance(raw, dict):
        raise RefluxError(f"--config {path}: expected a mapping", error_class="Config")
    known = set(OptimizerConfig.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise RefluxError(
            f"--config {path}: unknown field(s) {sorted(unknown)} (known: {sorted(known)})",
            error_class="Config",
        )
    weights = raw.pop("weights", {}) or {}
    try:
        parsed = {wf: RewardWeights.from_json(w) for wf, w in weights.items()}
        return OptimizerConfig(**raw, weights=parsed)
    except (TypeError, ValueError) as exc:
        raise RefluxError(f"--config {path}: {exc}", error_class="Config") from None


def _run(args: argparse.Namespace) -> int:
    from processors.optimizer.history import NoHistory
    from processors.optimizer.runtime import OptimizerProcessor
    from streams.admin import ensure_topics
    from streams.topics import TopicCatalog

    settings = get_settings()
    config = load_config(args.config)
    ensure_topics(TopicCatalog.from_settings(settings), settings=settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    processor = OptimizerProcessor(
        settings,
        schema=args.schema,
        config=config,
        historian=NoHistory() if args.no_historian else None,
    )
    print(json.dumps({"optimizer": processor.app_id, "schema": args.schema}))
    processor.run(stop)
    return 0


def add_optimizer_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "optimizer", help="run the optimizer (critic diagnoses -> workflow mutation proposals)"
    )
    parser.add_argument("--schema", default="reflux", help="read-model schema (reflux)")
    parser.add_argument("--config", help="YAML/JSON OptimizerConfig (weights, fallbacks, ...)")
    parser.add_argument(
        "--no-historian", action="store_true", help="do not ask the historian for past incidents"
    )
    parser.set_defaults(handler=_run)
