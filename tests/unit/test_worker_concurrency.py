"""Worker concurrency without services: workloads, limits, their validation, the nodes' pools."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from foundation.errors import ConfigurationError
from foundation.settings import Settings
from node_workers.attempt import run_attempt
from node_workers.concurrency import (
    CPU_SLOTS_PER_CORE,
    DEFAULT_IO_CONCURRENCY,
    available_cores,
    lane_limit,
    parse_node_concurrency,
    unmatched_entries,
)
from node_workers.node import Node, NodeContext, NodeModel, Workload
from node_workers.nodes import builtin_nodes
from node_workers.nodes.http_request import HttpRequestNode, _Clients
from node_workers.nodes.transform import INLINE_PARAMS_BYTES, TransformNode, evaluate
from node_workers.pools import BlockingPool
from node_workers.runtime import WorkerConfig
from schemas.models import NodeInvocation, StepRef

T = TypeVar("T")


def _node(name: str) -> Any:
    return next(n for n in builtin_nodes() if n.name == name)


def test_builtin_nodes_declare_their_workload() -> None:
    workloads = {n.name: n.workload for n in builtin_nodes()}
    assert workloads == {
        "http.request": Workload.IO,
        "database.query": Workload.IO,
        "email.send": Workload.IO,
        "openai.chat": Workload.IO,
        "ai.meta": Workload.IO,
        "webhook.trigger": Workload.IO,
        "transform": Workload.CPU,
        "condition": Workload.CPU,
        "code.run": Workload.CPU,
    }


def test_a_lane_draws_from_its_class_unless_a_group_entry_names_it() -> None:
    http, transform, code = _node("http.request"), _node("transform"), _node("code.run")
    webhook = _node("webhook.trigger")

    def limit(node: Any, overrides: dict[str, int] | None = None) -> tuple[str, int, str]:
        found = lane_limit(node, io=300, cpu=3, overrides=overrides)
        return found.pool, found.size, found.key

    assert limit(http) == ("io", 300, "class:io")
    assert limit(transform) == ("cpu", 3, "class:cpu")
    # Long attempts: a pool of their own, of their class's size; a CPU one at most the cores
    # (each code.run program is a process keeping a core busy).
    assert limit(code) == ("code.run", min(3, available_cores()), "group:code.run")
    assert limit(webhook) == ("webhook.trigger", 300, "group:webhook.trigger")
    many = lane_limit(code, io=300, cpu=1000)
    assert (many.size, lane_limit(transform, io=300, cpu=1000).size) == (available_cores(), 1000)
    overrides = {"http.request": 20, "http.request@1": 10, "transform@2": 7, "code.run": 1}
    assert limit(http, overrides) == ("http.request@1", 10, "group:http.request@1")
    assert limit(http, {"http.request": 20}) == ("http.request", 20, "group:http.request")
    assert limit(code, overrides) == ("code.run", 1, "group:code.run")
    # transform@2 names another major: transform v1 keeps its class's pool.
    assert limit(transform, overrides) == ("cpu", 3, "class:cpu")
    assert unmatched_entries(overrides, [http, transform]) == ["code.run", "transform@2"]


def test_only_long_attempts_get_a_pool_of_their_own() -> None:
    assert {n.name for n in builtin_nodes() if n.own_pool} == {"code.run", "webhook.trigger"}


def test_worker_config_defaults_and_buffers() -> None:
    config = WorkerConfig()
    assert config.io_concurrency == DEFAULT_IO_CONCURRENCY == 256
    assert config.cpu_concurrency == CPU_SLOTS_PER_CORE * available_cores() >= 4
    # A lane holds more than it runs: twice its pool, at least 256.
    assert config.buffer_limit(256) == 512
    assert config.buffer_limit(2) == 256
    assert WorkerConfig(io_concurrency=8, cpu_concurrency=2, max_buffered=8).buffer_limit(2) == 8


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"io_concurrency": 0}, r"^Expected io_concurrency to be an integer >= 1, but got 0$"),
        ({"cpu_concurrency": -2}, r"^Expected cpu_concurrency to be an integer >= 1, but got -2$"),
        ({"node_concurrency": {"Http": 3}}, r"node_concurrency entries to name a node .*'Http'"),
        (
            {"node_concurrency": {"http.request": 0}},
            r"Expected the limit of 'http.request' in node_concurrency to be an integer >= 1",
        ),
        ({"max_buffered": 0}, r"^Expected max_buffered to be an integer >= 1, but got 0$"),
        (
            {"io_concurrency": 64, "cpu_concurrency": 2, "max_buffered": 32},
            r"max_buffered is 32 and \{'io_concurrency': 64\} exceed it",
        ),
        (
            {
                "io_concurrency": 8,
                "cpu_concurrency": 2,
                "node_concurrency": {"http.request": 40},
                "max_buffered": 16,
            },
            r"\{\"node_concurrency\['http.request'\]\": 40\} exceed it",
        ),
    ],
)
def test_worker_config_refuses_unusable_limits(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        WorkerConfig(**fields)


def test_worker_config_from_settings() -> None:
    config = WorkerConfig.from_settings(
        Settings(worker_io_concurrency=32, worker_node_concurrency="webhook.trigger=1000"),
        cpu_concurrency=1,
    )
    assert (config.io_concurrency, config.cpu_concurrency) == (32, 1)
    assert config.node_concurrency == {"webhook.trigger": 1000}
    assert config.limit(_node("webhook.trigger")).size == 1000


def test_the_start_signal_delay_comes_from_its_setting_in_ms_and_is_never_negative() -> None:
    assert WorkerConfig.from_settings(Settings()).start_signal_delay_s == 0.25
    eager = Settings(worker_start_signal_delay_ms=0)
    assert WorkerConfig.from_settings(eager).start_signal_delay_s == 0.0
    later = Settings(worker_start_signal_delay_ms=1500)
    assert WorkerConfig.from_settings(later).start_signal_delay_s == 1.5
    with pytest.raises(ConfigurationError, match="REFLUX_WORKER_START_SIGNAL_DELAY_MS"):
        WorkerConfig.from_settings(Settings(worker_start_signal_delay_ms=-1))
    with pytest.raises(ConfigurationError, match="start_signal_delay_s >= 0"):
        WorkerConfig(start_signal_delay_s=-0.1)


def test_parse_node_concurrency_accepts_lists_and_spaces() -> None:
    assert parse_node_concurrency(" a.b=1 ,, c@2=30 ", "--x") == {"a.b": 1, "c@2": 30}
    assert parse_node_concurrency(["a=1", "b=2,c=3"], "--x") == {"a": 1, "b": 2, "c": 3}
    assert parse_node_concurrency("", "--x") == {}


def test_http_connections_are_spread_over_small_clients_and_leased_by_free_room() -> None:
    async def scenario() -> None:
        clients = _Clients(verify=True, max_connections=10)
        assert clients.sizes == [4, 3, 3]
        leases = [clients.lease() for _ in range(10)]
        # As many at once as the node's concurrency: each finds a client with room.
        taken = [await lease.__aenter__() for lease in leases]
        assert clients.busy == clients.sizes
        assert [taken.count(c) for c in clients.clients] == clients.sizes
        # One ends: its client is the only one with room, so the next request goes there.
        await leases[0].__aexit__(None, None, None)
        async with clients.lease() as client:
            assert client is taken[0]
        for lease in leases[1:]:
            await lease.__aexit__(None, None, None)
        assert clients.busy == [0, 0, 0]
        await clients.aclose()

    asyncio.run(scenario())


def test_the_http_node_sizes_its_connections_to_its_concurrency() -> None:
    node = HttpRequestNode()
    node.set_concurrency(256)

    async def scenario() -> None:
        clients = node._client(verify=True)
        assert sum(clients.sizes) == 256 and max(clients.sizes) == 4
        await node.aclose()

    asyncio.run(scenario())


def test_the_http_node_keeps_one_pool_per_event_loop() -> None:
    # A worker and a shadow replay engine (or two DevEngines) in one process share node
    # instances; an httpx pool opened in one loop cannot be used from another.
    node = HttpRequestNode()
    seen: list[_Clients] = []

    async def use() -> None:
        clients = node._client(verify=True)
        assert node._client(verify=True) is clients  # reused within its loop
        seen.append(clients)

    asyncio.run(use())
    asyncio.run(use())
    assert seen[0] is not seen[1]

    async def close_in_own_loop() -> None:
        await use()
        await node.aclose()
        assert seen[-1].is_closed and not seen[1].is_closed

    asyncio.run(close_in_own_loop())


def test_blocking_pool_runs_in_its_threads_and_refuses_a_bad_size() -> None:
    pool = BlockingPool("probe", size=2)

    async def names() -> list[str]:
        return await asyncio.gather(
            *(pool.run(lambda: threading.current_thread().name) for _ in range(4))
        )

    try:
        assert all(name.startswith("probe") for name in asyncio.run(names()))
        pool.resize(5)
        assert pool.size == 5
        assert all(name.startswith("probe") for name in asyncio.run(names()))
    finally:
        pool.close()
    with pytest.raises(ConfigurationError, match=r"Expected a probe pool size >= 1, but got 0"):
        pool.resize(0)


class _RecordingPool(BlockingPool):
    def __init__(self) -> None:
        super().__init__("recording")
        self.calls = 0

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.calls += 1
        return await super().run(fn, *args, **kwargs)


def test_transform_keeps_small_params_on_the_loop_and_sends_large_ones_to_its_pool() -> None:
    pool = _RecordingPool()
    data = {"items": [1, 2, 3]}

    async def scenario() -> None:
        small = NodeContext("i", "r", "s", 1, params_bytes=INLINE_PARAMS_BYTES)
        assert await evaluate(pool, small, "length(items)", data) == 3
        assert pool.calls == 0
        large = NodeContext("i", "r", "s", 1, params_bytes=INLINE_PARAMS_BYTES + 1)
        assert await evaluate(pool, large, "length(items)", data) == 3
        assert pool.calls == 1

    try:
        asyncio.run(scenario())
    finally:
        pool.close()


class _Size(NodeModel):
    data: Any = None


class _Bytes(NodeModel):
    params_bytes: int | None


class _MeasureParams(Node[_Size, _Bytes]):
    name = "measure"
    version = "1.0.0"
    Input = _Size
    Output = _Bytes

    async def execute(self, params: _Size, ctx: NodeContext) -> _Bytes:
        return _Bytes(params_bytes=ctx.params_bytes)


def test_run_attempt_tells_the_node_the_size_of_its_params() -> None:
    params = {"data": "x" * 1000}
    invocation = NodeInvocation(
        run_id="r",
        seq=1,
        invocation_id="inv",
        attempt=1,
        workflow_id="wf",
        workflow_version=1,
        step=StepRef(step_id="s", node="measure", node_version="1.0.0"),
        params=params,
        idempotency_key="inv",
    )
    attempt = asyncio.run(run_attempt(_MeasureParams(), invocation))
    assert attempt.output == {"params_bytes": len('{"data":"' + "x" * 1000 + '"}')}


def test_transform_and_condition_pools_follow_their_concurrency() -> None:
    for node in (TransformNode(), _node("condition")):
        node.set_concurrency(3)
        assert node.pool.size == 3
