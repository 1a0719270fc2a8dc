"""How many attempts a worker process runs at once, per node: the limits and their parsing (pure).

Every node declares a :class:`~node_workers.node.Workload`. A worker process has one limit per
workload class, shared by the lanes (node majors) of that class:

- **I/O** (``http.request``, ``database.query``, ``email.send``, ``openai.chat``,
  ``webhook.trigger``): :data:`DEFAULT_IO_CONCURRENCY` attempts at once. They wait on other
  systems, on the event loop, so hundreds in flight cost memory, not cores.
- **CPU** (``transform``, ``condition``, CPU function nodes): :data:`CPU_SLOTS_PER_CORE` per
  core (:func:`default_cpu_concurrency`): a slot is held from the ledger claim to the result,
  of which the node's own work is a small part (ADR 0073).

Nodes whose attempts last long (``webhook.trigger`` waits, ``code.run`` programs: ``own_pool``)
get a pool of their own, of their class's size: a few hundred waits must not hold the slots of
HTTP calls, two long programs must not stall every ``transform``. A CPU node's own pool is at
most the cores (:func:`available_cores`): each ``code.run`` program is a process of its own
that keeps a core busy, so more at once would only stretch every program's wall time, which
its timeout counts.

A node group can have a limit of its own (``node_concurrency``: ``{"http.request": 512,
"database.query@1": 32}``): the lanes an entry names then draw from a pool of that size instead
(``name@major`` wins over ``name``). Entries name nodes exactly (not dotted prefixes as
``--nodes`` does). See docs/decisions/0019-worker-concurrency.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from foundation.errors import ConfigurationError
from node_workers.node import AnyNode, Workload

__all__ = [
    "CPU_SLOTS_PER_CORE",
    "DEFAULT_IO_CONCURRENCY",
    "MIN_BUFFERED",
    "Limit",
    "available_cores",
    "check_limit",
    "check_node_concurrency",
    "default_cpu_concurrency",
    "lane_limit",
    "parse_node_concurrency",
    "unmatched_entries",
]

DEFAULT_IO_CONCURRENCY: Final = 256
"""I/O attempts at once per process. Measured: one process keeps 256 calls of a 200 ms HTTP
service in flight (benchmarks/README.md, Worker I/O). What bounds it is memory (each attempt in
flight holds its params, a response, an output), not cores: waiting costs no CPU."""
MIN_BUFFERED: Final = 256
"""A lane holds at least this many invocations before pausing: small buffers made lanes pause
and resume constantly (a resume seeks and drops prefetched data)."""

# A node name (same rule as node_workers.node) and an optional major.
_ENTRY: Final = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9][a-z0-9_-]*)*)(?:@(?P<major>0|[1-9]\d*))?$"
)


CPU_SLOTS_PER_CORE: Final = 4
"""Attempts of the shared CPU pool per core. A slot is held from the attempt's ledger claim (a
Redis round trip) to its result, with the event loop's turns in between, while the node's own
work on usual params takes 10-30 us on the loop: with one slot per core, the slots -- not the
cores -- bounded a worker. Measured on 2 cores, 100 runs of 10 remote no-op steps at once:
2 slots, 380-410 steps/s with the worker at 0.4 cores and invocations waiting ~150 ms for a
slot; 8 slots, 490-760 steps/s, and 25% less CPU per step in all (larger batches everywhere).
Large params run in the node's thread pool, sized to the same number; their CPU is still
bounded by the GIL to about one core (ADR 0073)."""


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # no sched_getaffinity (not Linux)
        return os.cpu_count() or 1


def default_cpu_concurrency() -> int:
    """The shared CPU pool's default size: :data:`CPU_SLOTS_PER_CORE` per available core."""
    return CPU_SLOTS_PER_CORE * available_cores()


def check_limit(value: int, what: str) -> int:
    """``value`` if it is a usable limit, else a ConfigurationError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"Expected {what} to be an integer >= 1, but got {value!r}")
    return value


def check_node_concurrency(entries: Mapping[str, int], source: str) -> dict[str, int]:
    """The entries, checked: keys ``name`` or ``name@major``, values >= 1."""
    checked: dict[str, int] = {}
    for key, value in entries.items():
        if not isinstance(key, str) or _ENTRY.fullmatch(key) is None:
            raise ConfigurationError(
                f"Expected {source} entries to name a node as NAME or NAME@MAJOR (e.g. "
                f"'http.request' or 'http.request@1'), but got {key!r}"
            )
        checked[key] = check_limit(value, f"the limit of {key!r} in {source}")
    return checked


def parse_node_concurrency(text: str | Iterable[str], source: str) -> dict[str, int]:
    """``"http.request=512, database.query@1=32"`` (or several such strings) -> a mapping;
    errors name ``source`` (the flag or the environment variable)."""
    parts = [text] if isinstance(text, str) else list(text)
    entries: dict[str, int] = {}
    for part in parts:
        for raw in part.split(","):
            item = raw.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not value.isdigit():
                raise ConfigurationError(
                    f"Expected {source} as NODE[@MAJOR]=LIMIT[,...] (e.g. "
                    f"'http.request=512,database.query@1=32'), but got {item!r}"
                )
            if key in entries:
                raise ConfigurationError(f"Expected {key!r} once in {source}, but it repeats")
            entries[key] = int(value)
    return check_node_concurrency(entries, source)


@dataclass(frozen=True, slots=True)
class Limit:
    """The pool a lane draws its slots from."""

    pool: str
    """``"io"``, ``"cpu"``, the node's name (``own_pool``) or the ``node_concurrency`` entry
    that named the lane."""
    size: int
    of_class: bool = False
    """The pool of a workload class (shared by its lanes), not one named after a node group."""

    @property
    def key(self) -> str:
        """Identifies the pool (a node may be named like a class: ``io``)."""
        return f"{'class' if self.of_class else 'group'}:{self.pool}"


def lane_limit(
    node: AnyNode, *, io: int, cpu: int, overrides: Mapping[str, int] | None = None
) -> Limit:
    """The pool of ``node``'s lane: ``name@major`` entry, else ``name`` entry, else its class's
    (a pool named after the node for an ``own_pool`` node: of the class's size, and at most the
    cores for a CPU node)."""
    overrides = overrides or {}
    for key in (f"{node.name}@{node.major}", node.name):
        if key in overrides:
            return Limit(key, overrides[key])
    if node.workload is Workload.IO:
        return Limit(node.name, io) if node.own_pool else Limit("io", io, of_class=True)
    if node.own_pool:  # one process per attempt (code.run): at most a core each
        return Limit(node.name, min(cpu, available_cores()))
    return Limit("cpu", cpu, of_class=True)


def unmatched_entries(overrides: Mapping[str, int], nodes: Iterable[AnyNode]) -> list[str]:
    """Entries that name none of ``nodes`` (a typo, or a group served elsewhere)."""
    names = {key for n in nodes for key in (n.name, f"{n.name}@{n.major}")}
    return sorted(key for key in overrides if key not in names)
