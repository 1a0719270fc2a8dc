"""One diagnosis per episode: the flood guard.

A drift detector can fire again and again while one change unfolds (ADWIN resets after a
detection and a gradual change is detected in steps), and a window condition (an error class
over its threshold) holds for every trace while it lasts. Neither may turn into a stream of
diagnoses. An *episode* of a key (subject, kind and direction or error class) opens when it
fires with no open episode, and is extended silently by every later firing; it closes once
``rearm_after_ms`` of event time passed with no firing. The next firing opens a new episode and
emits a new diagnosis.

The store is any mutable mapping: a dict in tests and benchmarks, the runtime's faust table
(changelog-backed, so a restarted critic does not announce an ongoing episode again). Writes
are rare: at an opening and when the last firing moved by more than a tenth of the re-arm time.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

__all__ = ["Episodes"]


class Episodes:
    def __init__(self, store: MutableMapping[str, Any], rearm_after_ms: int) -> None:
        self.store = store
        self.rearm_after_ms = rearm_after_ms
        self.suppressed = 0

    def fire(self, key: str, at_ms: int, diagnosis_id: str) -> bool:
        """Record a firing of ``key`` at event time ``at_ms``; True when it opens an episode
        (emit the diagnosis), False when it extends an open one (stay quiet)."""
        entry = self.store.get(key)
        if entry is not None and at_ms - int(entry["last_ms"]) < self.rearm_after_ms:
            self.suppressed += 1
            if at_ms - int(entry["last_ms"]) > self.rearm_after_ms // 10:
                # Reassigned, not mutated: a faust table only persists what is set.
                self.store[key] = {**entry, "last_ms": at_ms, "fires": int(entry["fires"]) + 1}
            return False
        self.store[key] = {
            "opened_ms": at_ms,
            "last_ms": at_ms,
            "fires": 1,
            "diagnosis_id": diagnosis_id,
        }
        return True

    def extend(self, key: str, at_ms: int) -> bool:
        """:meth:`fire` for a key whose episode is open (True: extended, stay quiet); False,
        recording nothing, when none is (the caller builds the diagnosis and fires). One lookup
        where ``is_open`` then ``fire`` took two: a condition that holds fires per trace."""
        entry = self.store.get(key)
        if entry is None:
            return False
        last = int(entry["last_ms"])
        if at_ms - last >= self.rearm_after_ms:
            return False
        self.suppressed += 1
        if at_ms - last > self.rearm_after_ms // 10:
            self.store[key] = {**entry, "last_ms": at_ms, "fires": int(entry["fires"]) + 1}
        return True

    def close(self, key: str) -> None:
        """End ``key``'s episode now (its condition no longer holds in a way a window can
        tell, e.g. a cost share whose runs mixed two versions): the next firing opens one."""
        if key in self.store:
            del self.store[key]

    def is_open(self, key: str, at_ms: int) -> bool:
        entry = self.store.get(key)
        return entry is not None and at_ms - int(entry["last_ms"]) < self.rearm_after_ms
