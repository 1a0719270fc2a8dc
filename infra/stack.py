"""Start, stop and inspect the local services: ``python -m infra.stack up|down|status``.

Idempotent: ``up`` installs what is missing (Maven jars, Debian packages, PostgreSQL binaries,
code.run's sandbox image), starts what is not running and waits until every service answers its
own protocol. All data lives under ``Settings.data_dir`` (``var/`` by default).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from foundation.settings import Settings, get_settings
from infra.services.base import Service, ServiceError, ensure_debian_packages, log
from infra.services.clickhouse import ClickHouse
from infra.services.connect import KafkaConnect
from infra.services.docker import Docker
from infra.services.jaeger import Jaeger
from infra.services.kafka import Kafka
from infra.services.kafka_cluster import KafkaCluster
from infra.services.postgres import Postgres
from infra.services.redis import LedgerRedis, Redis
from infra.services.s3 import S3

SERVICE_TYPES: dict[str, type[Service]] = {
    "kafka": Kafka,
    "postgres": Postgres,
    "redis": Redis,
    # The attempt ledger's own Redis: noeviction + append-only file (ADR 0017).
    "redis-ledger": LedgerRedis,
    "s3": S3,
    "clickhouse": ClickHouse,
    # The Docker engine of code.run's docker backend, with the sandbox image (built if missing).
    "docker": Docker,
    # A Kafka Connect worker on the local broker (docs/connect.md); after Kafka, stopped first.
    "connect": KafkaConnect,
    # The OTLP receiver and trace store of the tracing tests (ADR 0062): built with Go (~5 min
    # cold), so `up` of all services only begins the build (``deferred``); the tracing tests,
    # or `up jaeger`, start it once built.
    "jaeger": Jaeger,
}


def services(settings: Settings, names: list[str] | None = None) -> list[Service]:
    chosen = names or list(SERVICE_TYPES)
    unknown = [n for n in chosen if n not in SERVICE_TYPES]
    if unknown:
        raise ServiceError(f"Unknown service(s) {unknown}; known: {', '.join(SERVICE_TYPES)}")
    return [_service(n, settings) for n in chosen]


def _service(name: str, settings: Settings) -> Service:
    # REFLUX_KAFKA_BROKERS > 1 (`make up CLUSTER=3`): "kafka" is the local cluster (ADR 0065).
    if name == "kafka" and settings.kafka_brokers > 1:
        return KafkaCluster(settings, settings.kafka_brokers)
    return SERVICE_TYPES[name](settings)


# Tools the product runs (not services): bubblewrap is code.run's other sandbox backend (the
# one used where no Docker engine is reachable); kcat is the Kafka command-line client the docs
# use to publish triggers and read topics, and the tests use as an outside producer (ADR 0053).
# Installed with the services so a fresh machine needs nothing by hand.
# zsh and fish: the shells `reflux completion` writes scripts for, which its tests drive.
# chromium: the console's browser tests (Playwright drives Debian's build; nothing is downloaded).
SYSTEM_TOOLS = {
    "bwrap": "bubblewrap",
    "kcat": "kcat",
    "zsh": "zsh",
    "fish": "fish",
    "chromium": "chromium",
}


def up(settings: Settings, names: list[str] | None = None) -> dict[str, float]:
    """Starts the services; returns each one's start time in seconds (0 = already running).

    Every service's Debian packages are installed first, in one apt-get run; then the
    ``background`` services (slow installs no other service needs) start in threads while the
    others start one after the other, in order (Connect needs Kafka). Without ``names``, a
    ``deferred`` service only begins its install, in the background (Jaeger's Go build:
    ``make test`` lints and tests meanwhile; its tests start it)."""
    chosen = services(settings, names)
    if not names:
        for service in [s for s in chosen if s.deferred]:
            service.prepare()
            log(f"{service.name}: deferred (`python -m infra.stack up {service.name}` starts it)")
        chosen = [s for s in chosen if not s.deferred]
    packages = {cmd: pkg for service in chosen for cmd, pkg in service.debian_packages.items()}
    ensure_debian_packages(packages if names else {**SYSTEM_TOOLS, **packages})
    timings: dict[str, float] = {}
    failures: dict[str, BaseException] = {}

    def start(service: Service) -> None:
        log(f"{service.name}: starting ({service.endpoint})")
        began = time.monotonic()
        try:
            started = service.start()
        except BaseException as exc:  # reported after every thread has ended
            failures[service.name] = exc
            return
        total = time.monotonic() - began
        timings[service.name] = round(started, 2)
        state = f"started in {started:.1f}s" if started else "already running"
        log(f"{service.name}: ready, {state} (incl. install {total:.1f}s)")

    beside = [
        threading.Thread(target=start, args=(s,), name=f"start-{s.name}", daemon=True)
        for s in chosen
        if s.background
    ]
    for thread in beside:
        thread.start()
    for service in chosen:
        if not service.background and not failures:
            start(service)
    for thread in beside:
        thread.join()
    if failures:
        for name, exc in failures.items():
            log(f"{name}: failed: {exc}")
        first = next(iter(failures.values()))
        if isinstance(first, ServiceError) and len(failures) == 1:
            raise first
        raise ServiceError("; ".join(f"{name}: {exc}" for name, exc in failures.items())) from first
    _record_start_times(settings.data_dir / "run" / "start-times.json", timings)
    return timings


def _record_start_times(path: Path, timings: dict[str, float]) -> None:
    """Merges this start's times into ``path``. Several processes call ``up`` at once (every
    xdist worker of ``make test``): the file is replaced atomically, so a reader never sees it
    half written, and one that is unreadable anyway counts as empty (it is informational)."""
    started = {k: v for k, v in timings.items() if v}
    if not started:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        previous = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        previous = {}
    previous.update(started)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(previous, indent=2))
    os.replace(partial, path)


def down(settings: Settings, names: list[str] | None = None) -> None:
    for service in reversed(services(settings, names)):
        stopped = service.stop()
        log(f"{service.name}: {'stopped' if stopped else 'was not running'}")
        if isinstance(service, Kafka) and (nodes := service.cluster_pids()):
            log(
                f"kafka: a local cluster still runs (nodes {sorted(nodes)}); stop it with "
                f"`make down CLUSTER={max(len(nodes), 2)}`"
            )


def status(settings: Settings) -> bool:
    chosen = services(settings)
    per_service = [s.statuses() for s in chosen]
    rows = [row for service_rows in per_service for row in service_rows]
    width = max(38, *(len(row.endpoint) for row in rows))
    names = max(11, *(len(row.name) for row in rows))
    print(f"{'service':<{names}} {'state':<9} {'pid':<8} {'endpoint':<{width}} detail")
    for row in rows:
        state = "ready" if row.ready else ("starting" if row.running else "stopped")
        pid = str(row.pid) if row.pid else "-"
        print(f"{row.name:<{names}} {state:<9} {pid:<8} {row.endpoint:<{width}} {row.detail}")
    # A deferred service not started is not a fault (its tests start it).
    pairs = zip(chosen, per_service, strict=True)
    return all(
        row.ready or (s.deferred and not row.running)
        for s, service_rows in pairs
        for row in service_rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.stack", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("services", nargs="*", help=f"subset of: {', '.join(SERVICE_TYPES)}")
    args = parser.parse_args(argv)
    settings = get_settings()
    try:
        if args.action == "up":
            up(settings, args.services or None)
            return 0
        if args.action == "down":
            down(settings, args.services or None)
            return 0
        return 0 if status(settings) else 3
    except ServiceError as exc:
        print(f"[infra] error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
