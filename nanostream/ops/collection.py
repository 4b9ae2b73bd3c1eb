"""Full garbage collections on a timer, not in the middle of a burst.

The interpreter starts a full collection on its own once the objects that
survived younger collections have grown by a quarter.  A reconnect storm is
exactly that: a thousand new connections, each a few dozen objects, and the
collection that follows walked every connection's objects in one go (some
6-7 ms with 1100 clients, in the reactor's thread, while live lines waited).
Here the interpreter keeps its young collections, which are short, and full
collections run every :data:`FULL_COLLECTION_INTERVAL` seconds from a timer
instead, so a burst no longer brings one on.  Cycles that reach the oldest
generation wait at most that long to be freed.
"""

from __future__ import annotations

import gc

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime

#: Seconds between two full collections.
FULL_COLLECTION_INTERVAL = 60.0

#: A third threshold the interpreter never reaches: it starts no full
#: collection of its own.
NEVER = 1_000_000_000


class TimedFullCollections(TimerService):
    """Runs every full collection from a timer while the service runs."""

    def __init__(
        self,
        interval: float = FULL_COLLECTION_INTERVAL,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(interval, gc.collect)
        if clock is not None:
            self.clock = clock
        self._thresholds: tuple[int, int, int] | None = None

    def startService(self) -> None:
        self._thresholds = gc.get_threshold()
        young, middle, _ = self._thresholds
        gc.set_threshold(young, middle, NEVER)
        super().startService()

    def stopService(self):  # type: ignore[no-untyped-def]
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
        return super().stopService()
