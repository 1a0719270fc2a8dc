"""A run whose snapshot record is over the record limit does not stop its partition.

Found by the console's 1,000-step run: its state was over Kafka's 1 MB message limit, the
producer refused the snapshot record and the batch's transaction failed, batch after batch while
the run was active. Now the writer leaves that run out of the cycle (it stays dirty) and
gives its partition no checkpoint, so recovery folds that partition from its previous
checkpoint; the other runs are written; once the run finishes, its small marker is written and
the partition is checkpointed again. On the real broker, through the real producer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import pytest

from foundation.settings import Settings
from processors.scheduler.runtime.run_table import RunTable
from processors.scheduler.runtime.snapshots import (
    CHECKPOINT_KEY,
    RECORD_OVERHEAD,
    SnapshotCheckpoint,
    SnapshotWriter,
    decode_snapshot,
    encode_entry,
)
from processors.scheduler.state import RunState, RunStatus
from streams.producer import Producer
from streams.topics import TopicCatalog
from tests.support.kafka_log import read_log
from tests.support.scheduler_golden import SCENARIOS

pytestmark = pytest.mark.integration

RUNS_END = 42


def _ends(partitions: list[int]) -> Callable[[], Mapping[int, int]]:
    return lambda: dict.fromkeys(partitions, RUNS_END)


def _largest_open_state() -> RunState:
    states = [scenario().run for scenario in SCENARIOS.values()]
    return max((s for s in states if not s.is_finished), key=lambda s: len(encode_entry(s)))


def test_an_oversized_run_is_left_out_until_it_finishes(
    topics: TopicCatalog, kafka_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    big = _largest_open_state().model_copy(update={"run_id": "big-run"})
    small = RunState(run_id="small-run", status=RunStatus.RUNNING, last_seq=1)
    big_size = len(encode_entry(big)) + len(big.run_id) + RECORD_OVERHEAD
    assert big_size > len(encode_entry(small)) + len(small.run_id) + RECORD_OVERHEAD
    table = RunTable(kept=0)
    table.put(small)
    table.put(big)
    topic = topics.scheduler_state.topic
    writer = SnapshotWriter(topic, 0.001, max_record_bytes=big_size - 1)

    with Producer(kafka_settings, client_id="snapshot-limit-test") as producer:
        with caplog.at_level(logging.WARNING, "processors.scheduler.runtime.snapshots"):
            cycle = writer.write(producer, {0: table}, _ends)
            writer.finish(producer, cycle)
            # The same run in the next cycle: left out again, warned about once.
            again = writer.write(producer, {0: table}, _ends)
        producer.flush(30)
        assert (cycle.oversized, cycle.complete, cycle.checkpoints) == (["big-run"], [], {})
        assert cycle.written == {0: ["small-run"]}
        warnings = [r.getMessage() for r in caplog.records if "big-run" in r.getMessage()]
        assert len(warnings) == 1 and "over the" in warnings[0], warnings
        writer.committed(cycle, {0: table})
        assert table.dirty == {"big-run"}  # still to be written, once it can be
        assert again.oversized == ["big-run"]

        # The run finishes: its marker is small, written; the partition gets its checkpoint.
        table.put(RunState(run_id="big-run", status=RunStatus.SUCCEEDED, last_seq=big.last_seq))
        final = writer.write(producer, {0: table}, _ends)
        writer.finish(producer, final)
        producer.flush(30)
    assert (final.oversized, final.complete, final.checkpoints) == ([], [0], {0: RUNS_END})

    records = {
        key.decode(): decode_snapshot(value)
        for partition, key, value in read_log(
            kafka_settings, topic, kafka_settings.default_partitions
        )
        if partition == 0 and key is not None and value is not None
    }
    assert set(records) == {"small-run", "big-run", CHECKPOINT_KEY.decode()}
    assert records["small-run"] == small
    assert records[CHECKPOINT_KEY.decode()] == SnapshotCheckpoint(RUNS_END)
