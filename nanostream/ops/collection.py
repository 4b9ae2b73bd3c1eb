"""Full garbage collections on a timer, not in the middle of a burst.

The interpreter starts a full collection on its own once the objects that
survived younger collections have grown by a quarter.  A reconnect storm is
exactly that: a thousand new connections, each a few dozen objects, and the
collection that follows walked every connection's objects in one go (some
6-7 ms with 1100 clients, in the reactor's thread, while live lines waited).
Here the interpreter keeps its young collections, which are short, and full
collections run every :data:`FULL_COLLECTION_INTERVAL` seconds from a timer
instead, so a burst no longer brings one on.  A collection that falls due
while clients are being let in waits for them (the timer came at a random
moment of a storm and held a live line back 15 ms), but never longer than
another interval: cycles that reach the oldest generation are freed within
two intervals.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime

#: Seconds between two full collections.
FULL_COLLECTION_INTERVAL = 60.0

#: Seconds between two looks at whether a collection is due and may run.
CHECK_STEP = 1.0

#: A third threshold the interpreter never reaches: it starts no full
#: collection of its own.
NEVER = 1_000_000_000


class TimedFullCollections(TimerService):
    """Runs every full collection from a timer while the service runs."""

    def __init__(
        self,
        interval: float = FULL_COLLECTION_INTERVAL,
        clock: IReactorTime | None = None,
        busy: Callable[[], bool] | None = None,
        step: float = CHECK_STEP,
    ) -> None:
        """
        :param busy: whether a collection due now should wait (clients are
            being let in); it waits at most ``interval`` more.
        """
        super().__init__(step, self.tick)
        if clock is not None:
            self.clock = clock
        self._interval = interval
        self._busy = busy
        self._thresholds: tuple[int, int, int] | None = None
        self._last: float | None = None
        #: Collections run so far.
        self.collections = 0

    def tick(self) -> bool:
        """Collect if one is due and nothing stops it; whether it did."""
        now = self._now()
        last = self._last
        if last is not None:
            waited = now - last
            if waited < self._interval:
                return False
            busy = self._busy
            if waited < 2 * self._interval and busy is not None and busy():
                return False
        self._last = now
        self.collections += 1
        gc.collect()
        return True

    def _now(self) -> float:
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        return clock.seconds()  # type: ignore[no-any-return,attr-defined]

    def startService(self) -> None:
        self._thresholds = gc.get_threshold()
        young, middle, _ = self._thresholds
        gc.set_threshold(young, middle, NEVER)
        self._last = None
        super().startService()

    def stopService(self):  # type: ignore[no-untyped-def]
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
        return super().stopService()
