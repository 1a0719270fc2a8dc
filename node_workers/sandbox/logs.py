"""A bounded log buffer: the first and the last bytes of a stream, the middle dropped.

User code can print gigabytes; the worker must hold at most the cap. The head shows how a run
started, the tail how it ended (the traceback), which is what a reader of a failed run needs.
"""

from __future__ import annotations

from typing import Final

__all__ = ["HeadTailBuffer"]

_MARKER: Final = "\n[... {n} bytes of logs truncated ...]\n"


class HeadTailBuffer:
    """Keeps ``cap // 4`` bytes of head and the rest of ``cap`` as tail."""

    def __init__(self, cap: int) -> None:
        if cap < 16:
            raise ValueError(f"Expected a log cap of at least 16 bytes, but got {cap}")
        self.head_cap = cap // 4
        self.tail_cap = cap - self.head_cap
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > self.tail_cap:
                del self._tail[: len(self._tail) - self.tail_cap]

    @property
    def truncated(self) -> bool:
        return self.total > len(self._head) + len(self._tail)

    def text(self) -> str:
        dropped = self.total - len(self._head) - len(self._tail)
        middle = _MARKER.format(n=dropped) if dropped else ""
        # Decoded separately: a cut may split a UTF-8 sequence; 'replace' keeps the rest readable.
        return (
            self._head.decode("utf-8", "replace") + middle + self._tail.decode("utf-8", "replace")
        )
