"""The lifetime of the client side: start-up notices and an orderly close."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nanostream.broadcast import Broadcaster

_log = Logger()

#: How long stopping waits for clients to answer the 1001 close before the
#: process exits anyway (Autobahn drops a silent peer after about 2 s).
CLOSE_GRACE_SECONDS = 3.0


class ClientTracker:
    """Counts open connections so a shutdown can wait until all are gone.

    It also knows ``--max-clients``, the bound the admission gate checks.
    A handshake still waiting for its ledger (Redis) holds a place under
    the bound, so that a burst of them cannot all pass the check first and
    then all open.
    """

    def __init__(self, max_clients: int = 0) -> None:
        #: How many clients may be open at once; 0 for no bound.
        self.max_clients = max_clients
        self.open = 0
        #: Handshakes admitted so far but waiting for the ledger's answer.
        self.pending = 0
        #: Handshakes completed since start, read by the metrics.
        self.accepted = 0
        #: Connections dropped for not completing their opening handshake
        #: within ``--handshake-timeout``, read by the metrics.
        self.handshakes_timed_out = 0
        #: The most clients open at once since :meth:`take_peak` was last called.
        self.peak = 0
        self._waiters: list[Deferred[None]] = []

    def full(self) -> bool:
        """True when another client would exceed ``max_clients``."""
        return 0 < self.max_clients <= self.open + self.pending

    def reserve(self) -> None:
        """A handshake waits for the ledger: its place is taken meanwhile."""
        self.pending += 1

    def release(self) -> None:
        """The ledger answered; the handshake opens at once or not at all."""
        self.pending -= 1

    def opened(self) -> None:
        self.open += 1
        self.accepted += 1
        if self.open > self.peak:
            self.peak = self.open

    def take_peak(self) -> int:
        """The most clients open at once since the last call; starts anew."""
        peak = self.peak
        self.peak = self.open
        return peak

    def closed(self) -> None:
        self.open -= 1
        if self.open == 0:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def when_all_closed(self, clock: IReactorTime, timeout: float) -> Deferred[None]:
        """Fire once no connection is open, or after ``timeout`` seconds."""
        if self.open == 0:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        d = Deferred()
        self._waiters.append(d)
        d.addTimeout(timeout, clock, onTimeoutCancel=lambda *_: None)
        return d


class BroadcastService(Service):
    """Logs what start-up should say; on stop, sends every client 1001."""

    def __init__(
        self,
        broadcaster: Broadcaster,
        tracker: ClientTracker,
        clock: IReactorTime,
        warnings: list[str],
    ) -> None:
        self._broadcaster = broadcaster
        self._tracker = tracker
        self._clock = clock
        self._warnings = warnings

    def startService(self) -> None:
        super().startService()
        for warning in self._warnings:
            _log.warn("{warning}", warning=warning)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        _log.info("stopping: closing {clients} clients", clients=self._tracker.open)
        self._broadcaster.close_all()
        return self._tracker.when_all_closed(self._clock, CLOSE_GRACE_SECONDS)
