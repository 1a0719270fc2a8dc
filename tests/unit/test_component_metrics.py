"""streams.metrics: the lag read from librdkafka statistics, and the /metrics server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from foundation.errors import ConfigurationError
from foundation.settings import Settings
from streams import metrics
from streams.metrics import CONSUMER_LAG, lag_callback, partition_lag

ROOT = Path(__file__).resolve().parents[2]


def _partition(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "desired": True,
        "hi_offset": 120,
        "ls_offset": 100,
        "app_offset": 90,
        "committed_offset": -1001,
        "consumer_lag": -1,
    }
    return {**base, **fields}


def test_lag_is_the_last_stable_offset_minus_the_position() -> None:
    # The scheduler's case: offsets committed by its transaction, so consumer_lag is -1.
    assert partition_lag(_partition()) == 10
    # No record handed out yet: the committed offset is the position.
    assert partition_lag(_partition(app_offset=-1001, committed_offset=95)) == 5
    # Without ls_offset (older brokers): the high watermark.
    assert partition_lag(_partition(ls_offset=-1)) == 30


def test_no_lag_for_partitions_not_consumed_here() -> None:
    assert partition_lag(_partition(desired=False)) is None
    assert partition_lag(_partition(app_offset=-1001)) is None
    assert partition_lag(_partition(ls_offset=-1, hi_offset=-1)) is None


def _stats(partitions: dict[str, dict[str, object]]) -> str:
    return json.dumps({"topics": {"t.unit": {"partitions": partitions}}})


def test_the_callback_sets_a_series_per_partition_and_drops_revoked_ones() -> None:
    on_stats = lag_callback("g.unit")
    on_stats(_stats({"0": _partition(), "1": _partition(app_offset=100), "-1": _partition()}))

    def series() -> dict[str, float]:
        return {
            s.labels["partition"]: s.value
            for m in CONSUMER_LAG.collect()
            for s in m.samples
            if s.labels["group"] == "g.unit"
        }

    assert series() == {"0": 10.0, "1": 0.0}
    on_stats(_stats({"0": _partition(app_offset=99), "1": _partition(desired=False)}))
    assert series() == {"0": 1.0}
    on_stats("not json")  # logged, never raised into the consumer's poll
    assert series() == {"0": 1.0}


def test_metrics_are_served_only_when_asked() -> None:
    assert metrics.serve_if_asked(None, Settings(metrics_port=0)) is None
    with pytest.raises(ConfigurationError, match="metrics_port"):
        metrics.serve_if_asked(70000, Settings())


def test_served_metrics_parse_with_the_prometheus_parser() -> None:
    assert metrics.consumer_statistics("g") == {}
    port = metrics.serve(0, host="127.0.0.1")
    try:
        assert metrics.serving()
        # Consumers built from now on report their lag.
        assert metrics.consumer_statistics("g")["statistics.interval.ms"] > 0
        metrics.SCHEDULER.committed(["t.commands", "t.results"], 3, 2, 0, 0.01)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        metrics.stop_serving()
    assert metrics.consumer_statistics("g") == {}
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {
        "reflux_scheduler_records_consumed",
        "reflux_scheduler_transaction_duration_seconds",
        "reflux_worker_attempts",
        "reflux_projector_applied",
        "reflux_consumer_lag",
    } <= names


def test_the_grafana_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads((ROOT / "infra" / "grafana" / "reflux.json").read_text())
    exported = {
        name + suffix
        for family in metrics.REGISTRY.collect()
        for name in (family.name,)
        for suffix in ("", "_total", "_bucket", "_sum", "_count")
    }
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"reflux_\w+", target["expr"])
    }
    assert queried, "the dashboard has no query"
    assert queried <= exported, queried - exported
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for needed in ("lag", "per second", "duration", "in flight"):
        assert needed in titles, needed
