"""A scheduler that gives up exits at once, even with a thread stuck in a native call."""

from __future__ import annotations

import subprocess
import sys
import time

from foundation.settings import PROJECT_ROOT

# A non-daemon thread that never ends, as the transaction executor's thread does when
# librdkafka blocks it for good: a normal exit would join it and hang.
PROGRAM = """
import threading
from processors.scheduler.runtime.cli import exit_at_once
stuck = threading.Event()
threading.Thread(target=stuck.wait, name="reflux-txn_0").start()
print("giving up", flush=True)
exit_at_once(3)
"""


def test_exit_at_once_does_not_wait_for_a_stuck_thread() -> None:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,  # a hang fails the test here, not the suite
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (3, "giving up"), done.stderr
    assert time.monotonic() - began < 30
