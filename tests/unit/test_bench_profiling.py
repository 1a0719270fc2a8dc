"""Profile parsing and formatting of the engine benchmark (py-spy raw output, /proc CPU)."""

from __future__ import annotations

import threading

from benchmarks.profiling import (
    CpuSnapshot,
    cpu_delta,
    cpu_ms_per_step,
    cpu_snapshot,
    format_cpu,
    format_stacks,
    parse_py_spy_raw,
    thread_group,
)
from tests.support.waiting import eventually

SCHED = "thread (0x7f01): reflux-scheduler;run (processors/scheduler/runtime/loop.py:{});"
RAW = "\n".join(
    [
        SCHED.format(204) + "commit (streams/producer.py:301) 6",
        SCHED.format(205) + "decide (processors/scheduler/decide.py:40) 3",
        SCHED.format(204) + "commit (streams/producer.py:305) 1",
        "thread (771): asyncio_3;_worker (concurrent/futures/thread.py:83) 2",
        "thread (772): asyncio_0;_worker (concurrent/futures/thread.py:83) 1",
        "not a stack line",
    ]
)


def test_thread_group_folds_numbered_siblings() -> None:
    assert thread_group("asyncio_3") == "asyncio_*"
    assert thread_group("ThreadPoolExecutor-0_1") == "ThreadPoolExecutor-0_*"
    assert thread_group("rdk:broker1") == thread_group("rdk:main")
    assert thread_group("reflux-scheduler") == "reflux-scheduler"


def test_parse_raw_counts_self_and_inclusive_samples_per_thread_group() -> None:
    profile = parse_py_spy_raw(RAW)
    assert profile.samples == 13
    assert profile.by_thread == {"reflux-scheduler": 10, "asyncio_*": 3}
    own = profile.own["reflux-scheduler"]
    # Line numbers are dropped: two lines of one function are one entry.
    assert own["commit (streams/producer.py)"] == 7
    assert own["decide (processors/scheduler/decide.py)"] == 3
    assert profile.total["reflux-scheduler"]["run (processors/scheduler/runtime/loop.py)"] == 10


def test_format_stacks_lists_busy_threads_first() -> None:
    text = format_stacks(parse_py_spy_raw(RAW), top=1)
    assert text.index("reflux-scheduler") < text.index("asyncio_*")
    assert "70.0%  commit (streams/producer.py)" in text
    assert format_stacks(parse_py_spy_raw("")) == "py-spy recorded no on-CPU samples"


def test_cpu_delta_and_table() -> None:
    before = CpuSnapshot({"reflux-scheduler": 1.0}, {"kafka": 2.0})
    after = CpuSnapshot({"reflux-scheduler": 1.5, "reflux-workers": 0.25}, {"kafka": 3.0})
    delta = cpu_delta(before, after)
    assert delta == CpuSnapshot({"reflux-scheduler": 0.5, "reflux-workers": 0.25}, {"kafka": 1.0})
    table = format_cpu(delta, wall_s=1.0, cores=2).splitlines()
    assert "1.75 CPU-s = 1.75 cores" in table[0]
    assert table[2].split()[:2] == ["service:", "kafka"]  # largest first
    per_step = format_cpu(delta, wall_s=1.0, cores=2, steps=500).splitlines()
    assert per_step[1].split()[-1] == "ms/step"
    assert per_step[2].split()[-1] == "2.00"  # kafka: 1 CPU-s over 500 steps
    assert per_step[-1] == "  (500 steps: 3.50 CPU-ms per step in all)"


def test_cpu_snapshot_sees_a_busy_thread_of_this_process() -> None:
    before = cpu_snapshot({})
    assert before.services == {}
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    thread = threading.Thread(target=spin, name="bench-spinner")
    thread.start()
    try:
        # Its CPU shows while it runs (its task is gone after join): sample until it shows.
        during = eventually(
            lambda: cpu_snapshot({}),
            10,
            "a snapshot with more than 0.05 CPU-s of the spinning thread",
            until=lambda snap: snap.threads.get("bench-spinner", 0.0) > 0.05,
        )
    finally:
        stop.set()
        thread.join()
    assert during.threads.get("bench-spinner", 0.0) > 0.05
    assert "bench-spinner" not in cpu_snapshot({}).threads  # joined: its task is gone


def test_cpu_ms_per_step_names_each_process_and_sums_them() -> None:
    delta = CpuSnapshot(
        {"MainThread": 0.25, "bench-watcher": 0.25},
        {"engine scheduler-0": 1.5, "engine trigger-router": 0.0, "redis-ledger": 0.5, "kafka": 1},
    )
    keys = cpu_ms_per_step(delta, steps=1000, key="remote", this_process="bench")
    assert keys == {
        "remote_cpu_ms_per_step_scheduler_0": 1.5,
        "remote_cpu_ms_per_step_trigger_router": 0.0,
        "remote_cpu_ms_per_step_redis_ledger": 0.5,
        "remote_cpu_ms_per_step_kafka": 1.0,
        "remote_cpu_ms_per_step_bench": 0.5,
        "remote_cpu_ms_per_step": 3.5,
    }
    floor = cpu_ms_per_step(CpuSnapshot({}, {"floor worker": 2.0}), 4000, "floor", "driver")
    assert floor == {
        "floor_cpu_ms_per_step_worker": 0.5,
        "floor_cpu_ms_per_step_driver": 0.0,
        "floor_cpu_ms_per_step": 0.5,
    }
