"""Reading the source ahead of its turn while clients are let in.

The reactor reads the source once per turn, after the turn's timed work:
handshakes answered by the pacer, steps of replays, accepts.  Each of those
is bounded, but together they held a live line back three milliseconds and
more in a reconnect storm.  Between two handshakes, and between two replay
steps, the pacer and the replays call :class:`ReadAhead`, which reads the
source then and there if a line waits, so that a line waits for one
handshake or one step, not for a whole turn.  Nothing changes when no line
waits: the look costs one ``poll`` of one descriptor, at most once in
:data:`SPACING` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds between two looks at the source: a line waits at most about
#: this long (plus one handshake or replay step) for a look.
SPACING = 0.0002


class ReadAhead:
    """The reads to take early, called between steps of letting clients in."""

    def __init__(
        self, spacing: float = SPACING, timer: Callable[[], float] = time.perf_counter
    ) -> None:
        #: Seconds a look waits after the last.
        self.spacing = spacing
        self._timer = timer
        self._last = -spacing
        self._reads: list[Callable[[], object]] = []

    def __len__(self) -> int:
        """Reads watched."""
        return len(self._reads)

    def watch(self, read: Callable[[], object]) -> None:
        """Call ``read`` (which reads only what waits) on each look."""
        self._reads.append(read)

    def unwatch(self, read: Callable[[], object]) -> None:
        if read in self._reads:
            self._reads.remove(read)

    def __call__(self) -> None:
        """Look, unless the last look was under ``spacing`` ago."""
        if not self._reads:
            return
        now = self._timer()
        if now - self._last < self.spacing:
            return
        self._last = now
        for read in tuple(self._reads):
            read()
