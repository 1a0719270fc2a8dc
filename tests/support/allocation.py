"""Peak memory allocated inside a block: how tests show that a parser refused a bomb before
expanding it, without a wall-clock bound (which a loaded machine breaks)."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Iterator


@contextlib.contextmanager
def peak_allocation() -> Iterator[list[int]]:
    """The peak bytes Python allocated inside the block (tracemalloc), appended to the yielded
    list when the block ends (also when it raised).

    For scale: refusing the billion-laughs YAML allocates ~25 KB, parsing a document of 90,000
    nodes ~60 MB, and the bomb expanded would need gigabytes. A timing bound failed a full
    `make test` run on a loaded machine (725 ms against 100)."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
