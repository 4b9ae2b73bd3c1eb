"""A bound on the opening handshakes answered in one reactor turn.

A handshake (parse, token check, ledger, answer) costs far more than a
delivery.  When a thousand clients reconnect at once, their requests arrive
in one poll of the reactor, and answering them all before the next poll
would hold every live line back for the whole burst.  The pacer answers at
most :data:`HANDSHAKES_PER_TURN` in a turn, and none after the turn's
handshakes have taken :data:`TURN_SECONDS`; the rest keep their bytes and
wait, in arrival order, for the next turns, between which the reactor reads
the source and writes to clients as usual.  Nothing is delayed while the
bound is not reached: a handshake under it is answered at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IReactorTime

#: Handshakes answered per reactor turn.  At 0.2-0.3 ms each, a full turn
#: adds about 1 ms to a live line's latency; 8 (2 ms) and 16 (4 ms) put a
#: reconnect storm's live p99 further above its quiet value, and the bursts
#: no faster (docs/performance.rst, "Reconnect storms").
HANDSHAKES_PER_TURN = 4

#: Time after the turn's first handshake that no other may start: the count
#: alone is machine-bound, and a core three times slower made the same four
#: hold a live line back 3-4 ms.
TURN_SECONDS = 0.001


class Waiting(Protocol):
    """A connection whose handshake bytes wait for their turn."""

    def handshake_turn(self) -> None:
        """Go on with the bytes kept while waiting."""


class HandshakePacer:
    """Lets at most ``per_turn`` handshakes through each reactor turn."""

    def __init__(
        self,
        clock: IReactorTime,
        per_turn: int = HANDSHAKES_PER_TURN,
        seconds: float = TURN_SECONDS,
        timer: Callable[[], float] | None = None,
        between: Callable[[], None] | None = None,
    ) -> None:
        """
        :param timer: what measures a turn's time; the clock's by default.
        :param between: called between two handshakes of a turn (the
            source's early read), so a live line need not wait for the
            whole turn; not before the first, which comes right after the
            reactor's own read.
        """
        self._clock = clock
        self._between = between
        self._per_turn = per_turn
        self._seconds = seconds
        self._timer = clock.seconds if timer is None else timer
        self._used = 0
        self._started = 0.0
        # A dict, ordered and with O(1) membership, as the waiting queue.
        self._waiting: dict[Waiting, None] = {}
        self._scheduled = False

    def take(self, connection: Waiting) -> bool:
        """Whether ``connection`` may go on now; if not, its turn will come.

        A connection already waiting keeps its place: what it sent since
        waits with it, so its bytes stay in order.
        """
        if connection in self._waiting:
            return False
        if not self._waiting and self._may_start():
            self._used += 1
            self._next_turn_soon()
            return True
        self._waiting[connection] = None
        self._next_turn_soon()
        return False

    def forget(self, connection: Waiting) -> None:
        """A waiting connection went away: it takes no turn."""
        self._waiting.pop(connection, None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _may_start(self) -> bool:
        """Whether one more handshake fits in this turn's count and time."""
        if not self._used:
            self._started = self._timer()
            return True
        return (
            self._used < self._per_turn
            and self._timer() - self._started < self._seconds
        )

    def _next_turn_soon(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        self._used = 0
        waiting = self._waiting
        between = self._between
        while waiting and self._may_start():
            if self._used and between is not None:
                between()
                if not waiting:
                    break
            connection = next(iter(waiting))
            del waiting[connection]
            self._used += 1
            connection.handshake_turn()
        if waiting or self._used:
            # A turn that answered handshakes starts the count anew at the
            # next one; one that answered none needs no further call.
            self._next_turn_soon()
