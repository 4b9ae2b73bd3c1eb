"""Hands freed memory back to the operating system once clients have left.

The process keeps freed pages for reuse, so after a wave of clients its
resident size would stay at the peak.  A timer, off the hot path, notices
when the clients or the remembered tokens have halved and then releases:
it drops two caches that pin small objects, collects every generation and
calls glibc's ``malloc_trim(0)``.  Why, what that reaches (all of it only
with ``PYTHONMALLOC=malloc``) and the figures: docs/reliability.rst,
"Memory after a wave".  Without ``malloc_trim`` (musl, macOS) no trimmer
is made.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nanostream.auth.ledger import ILedger, MemoryLedger
from nanostream.clients import ClientTracker

_log = Logger()

#: Seconds between two checks, so between two releases at most.
CHECK_INTERVAL = 10.0

#: A release needs at least this many clients (or remembered tokens) gone
#: since the peak: fewer free too little to be worth a full collection.
MIN_DROP = 100


def malloc_trim() -> Callable[[], None] | None:
    """glibc's ``malloc_trim(0)`` as a callable, or None where there is none."""
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int

    def trim() -> None:
        function(0)

    return trim


def releaser(trim: Callable[[], None] | None) -> Callable[[], None] | None:
    """A release around ``trim``: caches dropped, everything collected, trimmed."""
    if trim is None:
        return None

    def release() -> None:
        cache_clear = getattr(urlsplit, "cache_clear", None)
        if cache_clear is not None:
            cache_clear()
        clear_type_cache = getattr(sys, "_clear_type_cache", None)
        if clear_type_cache is not None:
            clear_type_cache()
        gc.collect()
        trim()

    return release


def ledger_pruner(
    ledger: MemoryLedger, clock: IReactorTime, interval: float = CHECK_INTERVAL
) -> TimerService:
    """Forgets expired tokens every ``interval`` seconds.

    The ledger forgets them at each handshake anyway; this forgets them
    when none comes, so that their memory can go back after a wave.
    """
    pruner = TimerService(interval, ledger.prune)
    pruner.clock = clock
    return pruner


def _fell(peak: int, now: int, min_drop: int) -> bool:
    """Whether ``now`` is at most half of ``peak`` and ``min_drop`` below it."""
    return now * 2 <= peak and peak - now >= min_drop


class MemoryTrimmer(TimerService):
    """Every ``interval`` seconds, releases memory if the load has halved.

    The load is the most clients open at once since the last release (the
    tracker notes peaks between checks) and the used tokens the ledger
    remembers, since each pins pages of its wave until it expires.
    """

    def __init__(
        self,
        tracker: ClientTracker,
        ledger: ILedger | None,
        release: Callable[[], None],
        clock: IReactorTime,
        *,
        interval: float = CHECK_INTERVAL,
        min_drop: int = MIN_DROP,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        """
        :param busy: whether a release should wait for the next check:
            clients are being let in, often the very ones whose leaving
            halved the load, and a release holds the reactor for 5-15 ms.
        """
        super().__init__(interval, self.check)
        self.clock = clock
        self._tracker = tracker
        self._ledger = ledger
        self._release = release
        self._min_drop = min_drop
        self._busy = busy
        self._clients_peak = 0
        self._tokens_peak = 0
        #: Releases so far, read by the metrics.
        self.releases = 0

    def check(self) -> bool:
        """Release if either count has fallen far enough; whether it did."""
        clients = self._tracker.open
        clients_peak = max(self._clients_peak, self._tracker.take_peak())
        tokens = 0 if self._ledger is None else self._ledger.size
        tokens_peak = max(self._tokens_peak, tokens)
        if not (
            _fell(clients_peak, clients, self._min_drop)
            or _fell(tokens_peak, tokens, self._min_drop)
        ) or (self._busy is not None and self._busy()):
            self._clients_peak = clients_peak
            self._tokens_peak = tokens_peak
            return False
        self._clients_peak = clients
        self._tokens_peak = tokens
        self.releases += 1
        self._release()
        _log.info(
            "returned freed memory to the system: {clients} clients "
            "(at most {clients_peak} before), {tokens} used tokens remembered "
            "(at most {tokens_peak} before)",
            clients=clients,
            clients_peak=clients_peak,
            tokens=tokens,
            tokens_peak=tokens_peak,
        )
        return True


class StartupFreezer(Service):
    """Takes what start-up built out of the garbage collector's sight.

    Start-up's modules, classes and functions live as long as the process;
    frozen once the service runs (after a collection, so no garbage is
    kept), full collections no longer walk them (docs/reliability.rst).
    """

    def startService(self) -> None:
        super().startService()
        gc.collect()
        gc.freeze()

    def stopService(self) -> None:
        super().stopService()
        gc.unfreeze()
