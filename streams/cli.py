"""``reflux topics create`` / ``reflux topics list``.

Both cover the catalog's fixed topics, the ``--invoke`` topics named on the command line and the
invoke topic of every node major the node catalog (the ``nodes`` topic) knows, so a deployment
that registered its nodes gets their topics from this one command (``--no-catalog-nodes`` skips
them).

Wire into the main parser with::

    subparsers = parser.add_subparsers(dest="command", required=True)
    add_topics_commands(subparsers)
    args = parser.parse_args(argv)
    return args.handler(args)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from foundation.errors import RefluxError, ServiceUnavailableError
from foundation.settings import Settings, get_settings
from schemas import decode
from schemas.errors import SchemaError
from schemas.models import NodeCatalogEntry
from streams.admin import TopicState, describe_topics, ensure_topics
from streams.table import TopicTableReader
from streams.topics import TopicCatalog, TopicSpec

log = logging.getLogger(__name__)

__all__ = [
    "add_topics_commands",
    "catalog_invoke_topics",
    "handle_topics",
    "render_table",
    "state_json",
]


def add_topics_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``topics`` command (with ``create`` and ``list``) to an argparse subparsers."""
    topics: argparse.ArgumentParser = subparsers.add_parser(
        "topics", help="create and inspect the Kafka topics"
    )
    actions = topics.add_subparsers(dest="topics_action", required=True)
    for name, help_text in (
        ("create", "create missing topics (idempotent; never alters existing ones)"),
        ("list", "show each catalog topic next to what the broker has"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("--bootstrap", help="Kafka bootstrap servers (default: settings)")
        action.add_argument("--prefix", help="topic prefix (default: settings)")
        action.add_argument(
            "--invoke",
            action="append",
            default=[],
            metavar="NODE:MAJOR",
            help="also include invoke topic(s), e.g. --invoke http.request:1 (repeatable)",
        )
        action.add_argument(
            "--no-catalog-nodes",
            dest="catalog_nodes",
            action="store_false",
            help="leave out the invoke topics of the nodes the node catalog knows",
        )
        action.add_argument("--timeout", type=float, default=15.0, help="seconds (default 15)")
        if name == "list":
            action.add_argument(
                "--json", action="store_true", help="print JSON instead of the table (scripts)"
            )
        action.set_defaults(handler=handle_topics)
    return topics


def _settings(args: argparse.Namespace) -> Settings:
    updates: dict[str, Any] = {}
    if args.bootstrap:
        updates["kafka_bootstrap"] = args.bootstrap
    if args.prefix:
        updates["topic_prefix"] = args.prefix
    return get_settings().model_copy(update=updates)


def _specs(catalog: TopicCatalog, invoke: Sequence[str]) -> list[TopicSpec]:
    specs = list(catalog)
    for item in invoke:
        node, sep, major = item.rpartition(":")
        if not sep or not major.isdigit():
            raise RefluxError(f"Expected --invoke NODE:MAJOR (e.g. http.request:1), got {item!r}")
        specs.append(catalog.invoke_topic(node, int(major)))
    return specs


def catalog_invoke_topics(
    catalog: TopicCatalog, settings: Settings, timeout: float = 10.0
) -> list[TopicSpec]:
    """The invoke topic of every node major on the ``nodes`` topic (none if it does not exist)."""
    majors: set[tuple[str, int]] = set()

    def apply(data: bytes | None) -> None:
        if data is None:
            return
        try:
            entry = decode(data, NodeCatalogEntry)
        except SchemaError as exc:
            log.warning("skipping an unreadable nodes record: %s", exc)
            return
        major = entry.version.split(".", 1)[0]
        if major.isdigit():
            majors.add((entry.name, int(major)))

    topic = catalog.nodes.topic
    try:
        reader = TopicTableReader(
            settings, topic, apply, name="topics-cli", metadata_timeout=timeout
        )
    except RefluxError:
        return []  # no node catalog yet: nothing registered
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                behind = reader.catch_up(max(deadline - time.monotonic(), 0.1))
                break
            except ServiceUnavailableError:
                # A topic created a moment ago may have no leader in this client's view yet.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
    finally:
        reader.close()
    if behind:
        raise RefluxError(
            f"Expected to read {topic} to its end within {timeout}s, but partitions {behind} "
            "are behind",
            error_class="ServiceUnavailable",
        )
    return [catalog.invoke_topic(name, major) for name, major in sorted(majors)]


def render_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _state_rows(states: Sequence[TopicState]) -> list[list[str]]:
    rows = [["topic", "status", "partitions", "replication", "cleanup", "retention.ms", "key"]]
    for s in states:
        actual_partitions = "-" if s.partitions is None else str(s.partitions)
        partitions = (
            str(s.spec.partitions)
            if s.partitions in (None, s.spec.partitions)
            else f"{actual_partitions} (want {s.spec.partitions})"
        )
        cleanup = s.configs.get("cleanup.policy", s.spec.cleanup_policy)
        if s.exists and cleanup != s.spec.cleanup_policy:
            cleanup = f"{cleanup} (want {s.spec.cleanup_policy})"
        retention = s.configs.get("retention.ms", s.spec.configs.get("retention.ms", "-"))
        rows.append(
            [
                s.spec.topic,
                s.status,
                partitions,
                str(s.replication if s.replication is not None else s.spec.replication),
                cleanup,
                retention,
                s.spec.key,
            ]
        )
    return rows


def state_json(state: TopicState) -> dict[str, Any]:
    """``topics list --json``: one topic, what the catalog wants next to what the broker has."""
    return {
        "topic": state.spec.topic,
        "status": state.status,
        "key": state.spec.key,
        "want": {
            "partitions": state.spec.partitions,
            "replication": state.spec.replication,
            "cleanup.policy": state.spec.cleanup_policy,
            "configs": dict(state.spec.configs),
        },
        "actual": {
            "partitions": state.partitions,
            "replication": state.replication,
            "configs": dict(state.configs),
        }
        if state.exists
        else None,
        "mismatches": [str(m) for m in state.mismatches],
        "drift": [str(m) for m in state.drift],
    }


def _with_catalog_nodes(
    catalog: TopicCatalog, settings: Settings, specs: list[TopicSpec], timeout: float
) -> list[TopicSpec]:
    named = {s.topic for s in specs}
    return [s for s in catalog_invoke_topics(catalog, settings, timeout) if s.topic not in named]


def handle_topics(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        settings = _settings(args)
        catalog = TopicCatalog.from_settings(settings)
        specs = _specs(catalog, args.invoke)
        catalog_nodes = getattr(args, "catalog_nodes", True)
        if args.topics_action == "create":
            print(
                f"ensuring {len(specs)} topics on {settings.kafka_bootstrap} "
                f"(prefix {catalog.prefix!r})",
                file=out,
            )
            reports = [ensure_topics(catalog, specs, settings=settings, timeout=args.timeout)]
            # The nodes topic exists now: add the invoke topics of what it lists (nothing if it
            # was created just now).
            extra: list[TopicSpec] = []
            if catalog_nodes and catalog.nodes.topic not in reports[0].created:
                extra = _with_catalog_nodes(catalog, settings, specs, args.timeout)
            if extra:
                print(f"ensuring {len(extra)} invoke topics of the node catalog", file=out)
                reports.append(
                    ensure_topics(catalog, extra, settings=settings, timeout=args.timeout)
                )
            created = [name for r in reports for name in r.created]
            unchanged = [name for r in reports for name in r.unchanged]
            for name in created:
                print(f"  created   {name}", file=out)
            for name in unchanged:
                print(f"  exists    {name}", file=out)
            for drift in (d for r in reports for d in r.drift):
                print(f"  warning   {drift} (left as is)", file=out)
            print(f"{len(created)} created, {len(unchanged)} unchanged", file=out)
            return 0
        if catalog_nodes:
            specs += _with_catalog_nodes(catalog, settings, specs, args.timeout)
        states = describe_topics(catalog, specs, settings=settings, timeout=args.timeout)
        if getattr(args, "json", False):
            print(json.dumps({"data": [state_json(s) for s in states]}, indent=2), file=out)
            return 1 if any(s.status == "mismatch" for s in states) else 0
        print(render_table(_state_rows(states)), file=out)
        problems = [m for s in states for m in (*s.mismatches, *s.drift)]
        for problem in problems:
            print(f"! {problem}", file=out)
        return 1 if any(s.status == "mismatch" for s in states) else 0
    except RefluxError as exc:
        print(f"error [{exc.error_class}]: {exc}", file=sys.stderr)
        return 2
