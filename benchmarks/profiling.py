"""Where the time goes: CPU per thread and per service from /proc, stacks from py-spy.

Everything co-located on one 2-core machine competes for the same cores, so the first question
is *who* burns CPU (the engine's threads, librdkafka's threads, the Kafka broker, Postgres), the
second *on what* (sampled Python stacks). ``/proc`` answers the first with no dependency; py-spy
(optional, ``pip install py-spy``) answers the second: it samples every thread of the process
from outside, without the GIL, and only while a thread is on a CPU (``--idle`` is off), which a
sampler written in Python could not do (it would always see the other threads waiting for the
GIL it holds). Parsing and formatting are pure and unit tested.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CpuSnapshot",
    "PySpy",
    "StackProfile",
    "cpu_delta",
    "cpu_snapshot",
    "find_py_spy",
    "format_cpu",
    "format_stacks",
    "parse_py_spy_raw",
    "thread_group",
]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_group(name: str) -> str:
    """Folds numbered threads into one group (``asyncio_3`` -> ``asyncio_*``, ``rdk:broker1`` ->
    ``rdk:*``): what matters is the kind of thread, not which of its siblings ran."""
    if name.startswith("rdk:"):
        return "rdk:* (librdkafka, all clients)"
    return re.sub(r"[_-]?\d+$", "_*", name) if re.search(r"\d+$", name) else name


def _stat_cpu(path: Path) -> tuple[str, float, int] | None:
    """(comm, CPU seconds, ppid) from a /proc stat file, or None if it vanished."""
    try:
        text = path.read_text()
    except OSError:
        return None
    # comm is in parentheses and may contain spaces; the fields after it are space separated.
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime = int(fields[11]), int(fields[12])
    return comm, (utime + stime) / _TICKS, ppid


@dataclass(frozen=True)
class CpuSnapshot:
    threads: dict[str, float] = field(default_factory=dict)
    """This process: CPU seconds per thread group."""
    services: dict[str, float] = field(default_factory=dict)
    """Other processes (with their children, e.g. Postgres backends): CPU seconds."""


def cpu_snapshot(services: Mapping[str, int | None]) -> CpuSnapshot:
    """CPU seconds so far of this process's threads (by group) and of ``services`` (name -> pid,
    children included)."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    threads: defaultdict[str, float] = defaultdict(float)
    for task in Path("/proc/self/task").iterdir():
        stat = _stat_cpu(task / "stat")
        if stat is None:
            continue
        comm, seconds, _ = stat
        threads[thread_group(names.get(int(task.name), comm))] += seconds
    wanted = {pid: name for name, pid in services.items() if pid}
    totals: defaultdict[str, float] = defaultdict(float)
    if wanted:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            stat = _stat_cpu(entry / "stat")
            if stat is None:
                continue
            pid = int(entry.name)
            owner = wanted.get(pid) or wanted.get(stat[2])
            if owner is not None:
                totals[owner] += stat[1]
    return CpuSnapshot(dict(threads), dict(totals))


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> CpuSnapshot:
    def diff(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
        return {k: max(0.0, b[k] - a.get(k, 0.0)) for k in b}

    return CpuSnapshot(diff(before.threads, after.threads), diff(before.services, after.services))


def cpu_ms_per_step(
    delta: CpuSnapshot, steps: int, key: str, this_process: str
) -> dict[str, float]:
    """Result keys: ``{key}_cpu_ms_per_step`` (every process measured) and
    ``{key}_cpu_ms_per_step_<who>`` for each process or service (``engine scheduler-0`` ->
    ``scheduler_0``, ``floor worker`` -> ``worker``, ``redis-ledger`` -> ``redis_ledger``) and for
    this process's threads together (``this_process``). CPU per step is what two runs of a
    noisy machine can be compared by; steps per second is not."""
    spent = {**delta.services, this_process: sum(delta.threads.values())}
    out: dict[str, float] = {}
    for name, seconds in spent.items():
        who = name.removeprefix("engine ").removeprefix("floor ")
        who = re.sub(r"[^a-z0-9]+", "_", who.lower()).strip("_")
        per_step = f"{key}_cpu_ms_per_step_{who}"
        out[per_step] = out.get(per_step, 0.0) + seconds * 1000 / steps
    out[f"{key}_cpu_ms_per_step"] = sum(out.values())
    return out


def format_cpu(delta: CpuSnapshot, wall_s: float, cores: int, steps: int | None = None) -> str:
    """A table of CPU seconds and cores used over ``wall_s``, largest first; with ``steps``
    (the steps run meanwhile) also CPU milliseconds per step, the measure that does not depend
    on how busy the machine was."""
    # This process's threads: the engine's too in the dev topology; the watcher in both.
    rows = [(f"this process: {k}", v) for k, v in delta.threads.items()]
    # Other processes: an engine process in the process topology ("engine <component>",
    # librdkafka's threads included), or a service.
    rows += [
        (k if k.startswith("engine ") else f"service: {k}", v) for k, v in delta.services.items()
    ]
    rows.sort(key=lambda r: -r[1])
    total = sum(v for _, v in rows)
    width = max([len(name) for name, _ in rows] + [10])
    lines = [
        f"CPU over {wall_s:.2f} s of wall time ({cores} cores = {cores * wall_s:.2f} CPU-s "
        f"available; measured total {total:.2f} CPU-s = {total / wall_s:.2f} cores)",
        f"  {'who':<{width}}  {'CPU-s':>7}  {'cores':>5}  {'share':>6}"
        + (f"  {'ms/step':>7}" if steps else ""),
    ]
    for name, seconds in rows:
        if seconds < 0.005:
            continue
        share = seconds / total if total else 0.0
        per_step = f"  {seconds * 1000 / steps:7.2f}" if steps else ""
        lines.append(
            f"  {name:<{width}}  {seconds:7.2f}  {seconds / wall_s:5.2f}  {share:6.1%}{per_step}"
        )
    if steps:
        lines.append(f"  ({steps} steps: {total * 1000 / steps:.2f} CPU-ms per step in all)")
    return "\n".join(lines)


# -- py-spy ---------------------------------------------------------------------------------------


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (the venv) or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


class PySpy:
    """``py-spy record`` on a process (default: this one) in raw (collapsed stacks) format until
    :meth:`stop`."""

    def __init__(
        self, executable: str, out: Path, rate_hz: int = 200, pid: int | None = None
    ) -> None:
        self.out = out
        self._proc = subprocess.Popen(
            [
                executable,
                "record",
                "--pid",
                str(pid or os.getpid()),
                "--format",
                "raw",
                "--output",
                str(out),
                "--rate",
                str(rate_hz),
                "--threads",
                # Sample without pausing the process: a slightly torn stack now and then is
                # better than stretching the latencies being profiled.
                "--nonblocking",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(self, timeout: float = 30.0) -> str:
        """Stops recording (SIGINT makes py-spy write its output) and returns the raw text."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            log, _ = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            log, _ = self._proc.communicate()
        if not self.out.exists():
            raise RuntimeError(
                f"Expected py-spy to write {self.out}, but it exited {self._proc.returncode}: "
                f"{(log or '').strip()[-500:]}"
            )
        return self.out.read_text()


@dataclass
class StackProfile:
    samples: int = 0
    by_thread: Counter[str] = field(default_factory=Counter)
    own: dict[str, Counter[str]] = field(default_factory=dict)
    """thread group -> frame -> samples where the frame was the innermost (self time)."""
    total: dict[str, Counter[str]] = field(default_factory=dict)
    """thread group -> frame -> samples where the frame was anywhere on the stack."""


_RAW_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_THREAD = re.compile(r"^thread \((?:0x)?[0-9a-fA-F]+\)(?:: (?P<name>.*))?$")


def _frame_key(frame: str) -> str:
    """``send (streams/producer.py:171)`` -> ``send (streams/producer.py)``: lines vary within
    one function, the function is the unit of interest."""
    frame = re.sub(r":\d+\)$", ")", frame.strip())
    return re.sub(r"\(/\S*?/(site-packages|lib/python3\.\d+)/", r"(\1/", frame)


def parse_py_spy_raw(text: str) -> StackProfile:
    """Parses ``py-spy record --format raw --threads`` output (collapsed stacks)."""
    profile = StackProfile()
    for line in text.splitlines():
        match = _RAW_LINE.match(line.strip())
        if match is None:
            continue
        count = int(match["count"])
        parts = match["stack"].split(";")
        thread = "?"
        head = _THREAD.match(parts[0])
        if head is not None:
            thread = thread_group(head["name"] or "?")
            parts = parts[1:]
        frames = [_frame_key(p) for p in parts if p.strip()]
        if not frames:
            continue
        profile.samples += count
        profile.by_thread[thread] += count
        profile.own.setdefault(thread, Counter())[frames[-1]] += count
        totals = profile.total.setdefault(thread, Counter())
        for frame in set(frames):
            totals[frame] += count
    return profile


def format_stacks(
    profile: StackProfile, top: int = 15, threads: Iterable[str] | None = None
) -> str:
    """Per busy thread: the functions with the most self and inclusive on-CPU samples."""
    if not profile.samples:
        return "py-spy recorded no on-CPU samples"
    lines = [f"{profile.samples} on-CPU samples (py-spy, idle threads not sampled)"]
    for thread, count in profile.by_thread.most_common():
        if threads is not None and thread not in set(threads):
            continue
        lines.append("")
        lines.append(f"== thread {thread}: {count} samples ({count / profile.samples:.1%})")
        lines.append("   self (innermost Python frame; time in C code counts for its caller):")
        for frame, n in profile.own[thread].most_common(top):
            lines.append(f"   {n / count:6.1%}  {frame}")
        lines.append("   inclusive:")
        for frame, n in profile.total[thread].most_common(top):
            lines.append(f"   {n / count:6.1%}  {frame}")
    return "\n".join(lines)
