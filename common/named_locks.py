"""A lock per name, for calls that must not overlap for one name (an SFC's run and its stop)
while calls for other names go on. A name's lock exists only while someone holds it or waits
for it, so the map is as small as the calls in flight."""
from __future__ import annotations

import contextlib
import threading


class NamedLocks:
    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}   # name -> [RLock, holders and waiters]

    @contextlib.contextmanager
    def hold(self, name: str):
        """Held by one thread at a time per name; reentrant (a run that stops the SFC it
        replaces takes it again)."""
        with self._guard:
            entry = self._locks.setdefault(name, [threading.RLock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[name]

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)
