"""GPU buffers a worker keeps between jobs, keyed by the content hash of what they hold.

A notebook that multiplies by the same weights again and again sends them once: the
broker knows which keys a worker holds (the worker lists them after every job) and
leaves those arrays out of the next job.  The cache keeps to a byte budget, dropping
the least recently used first; pinned entries (``%webnet put``) are never dropped, only
freed (``%webnet free``).  The browser worker keeps the same kind of cache (js/gpu.js).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Entry:
    buffer: Any
    nbytes: int
    pinned: bool


class BufferCache:
    """Buffers by key within ``budget`` bytes; ``destroy`` is called on each buffer dropped.

    Safe to call from several threads (the worker's GPU thread and its event loop); dropping a
    buffer a job is using is the caller's to avoid (the native executor holds its job lock).
    """

    def __init__(self, budget: int, destroy: Callable[[Any], None]) -> None:
        self.budget = budget
        self._destroy = destroy
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.RLock()

    @property
    def used(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def get(self, key: str) -> Any | None:
        """The buffer held under ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry.buffer

    def keep(self, key: str, buffer: Any, nbytes: int, *, pin: bool = False, protect: Iterable[str] = ()) -> bool:
        """Hold ``buffer`` under ``key``, dropping unpinned entries not in ``protect`` to make room.

        Returns False (and holds nothing) when it cannot fit: the caller then still owns
        ``buffer``.  ``protect`` names the buffers a running job is using.
        """
        with self._lock:
            if key in self._entries:
                self._entries[key].pinned |= pin
                self._entries.move_to_end(key)
                return self._entries[key].buffer is buffer
            keep = set(protect)
            room = self.budget - self.used
            for victim in [k for k, e in self._entries.items() if not e.pinned and k not in keep]:
                if room >= nbytes:
                    break
                room += self._entries[victim].nbytes
                self._destroy(self._entries.pop(victim).buffer)
            if room < nbytes:
                return False
            self._entries[key] = _Entry(buffer, nbytes, pin)
            return True

    def drop(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._destroy(entry.buffer)

    def owns(self, buffer: Any) -> bool:
        with self._lock:
            return any(e.buffer is buffer for e in self._entries.values())

    def held(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def pinned(self) -> list[str]:
        with self._lock:
            return [k for k, e in self._entries.items() if e.pinned]
