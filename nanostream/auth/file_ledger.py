"""The used-token ledger kept in a file, so that a restart forgets nothing.

Lookups use a set in memory, as the in-memory ledger does; each first use
is also appended to the file (:mod:`nanostream.auth.ledger_file`), and
:meth:`FileLedger.consume` fires only once that record is durable, so a
handshake completes after its token is on disk, never before.

Group commit: first uses read in the same reactor turn share one write and
one ``fdatasync``, made at the start of the next turn; those that arrive
while the file is being compacted (in a thread: a rewrite can take long)
share the one after it.  A crash loses no token that was answered; a
handshake in flight at the crash was never answered and its token may be
used again (docs/operating.rst).

When the write fails the waiting handshakes are refused with 503, as with
an unreachable Redis ledger, and their tokens stay unused.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nanostream.auth.ledger import ILedger
from nanostream.auth.ledger_file import LedgerFile, Loaded, Sync, open_file
from nanostream.auth.ledger_file import worth_compacting as _worth_compacting

_log = Logger()

#: Runs a blocking call (a rewrite) away from the reactor; fires when done.
InThread = Callable[[Callable[[], None]], "Deferred[None]"]
#: Seconds between checks that forget expired tokens and shrink the file.
CHECK_INTERVAL = 10.0


class LedgerUnavailable(Exception):
    """The file cannot record a token (closed, or the write failed); refuse it."""


#: A first use waiting for its record: identity, expiry, the answer.
_Waiting = tuple[bytes, int, "Deferred[bool]"]


def open_file_ledger(
    path: str,
    reactor: Any,
    *,
    sync: Sync = os.fdatasync,
    in_thread: InThread | None = None,
) -> FileLedger:
    """Load the file at ``path`` (see :func:`~nanostream.auth.ledger_file.check`)
    and return the ledger that goes on with it.

    :param in_thread: runs the rewrites; by default the reactor's thread pool.
    """
    file, loaded = open_file(path, reactor.seconds(), sync)
    if in_thread is None:

        def in_thread(job: Callable[[], None]) -> Deferred[None]:
            return deferToThreadPool(reactor, reactor.getThreadPool(), job)

    return FileLedger(file, loaded, reactor, in_thread)


@implementer(ILedger)
class FileLedger(Service):
    """Consumes tokens in memory and in a file; a service for its timer and close."""

    def __init__(
        self, file: LedgerFile, loaded: Loaded, clock: Any, in_thread: InThread
    ) -> None:
        self._file = file
        self._loaded = loaded
        self._clock = clock
        self._in_thread = in_thread
        self._expiry = dict(loaded.entries)
        self._heap = [(expiry, key) for key, expiry in self._expiry.items()]
        heapq.heapify(self._heap)
        #: Records in the file.
        self._records = len(self._expiry)
        self._batch: list[_Waiting] = []
        self._turn: DelayedCall | None = None
        self._writing = False
        self._failing = False
        self._closed = False
        self._drained: list[Deferred[None]] = []
        self._checker = LoopingCall(self.check)
        self._checker.clock = clock

    @property
    def size(self) -> int:
        return len(self._expiry)

    def consume(self, token_id: bytes, expires_at: float) -> Deferred[bool]:
        if self._closed:
            return fail(LedgerUnavailable("the used-token file is closed"))
        self.prune()
        if token_id in self._expiry:
            return succeed(False)
        expiry = math.ceil(expires_at)
        self._expiry[token_id] = expiry
        heapq.heappush(self._heap, (expiry, token_id))
        answer: Deferred[bool] = Deferred()
        self._batch.append((token_id, expiry, answer))
        if self._turn is None and not self._writing:
            # Once per turn: every first use read in this turn shares the sync.
            self._turn = self._clock.callLater(0, self._write)
        return answer

    def prune(self) -> None:
        """Forget every token whose expiry has passed."""
        now = self._clock.seconds()
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] <= now:
            when, key = heapq.heappop(heap)
            # A token refused for a failed write may be back with a new entry.
            if expiry.get(key) == when:
                del expiry[key]

    def check(self) -> None:
        """Forget expired tokens, and shrink the file if it is mostly dead."""
        self.prune()
        if self._turn is None and not self._writing and self._compaction_due():
            self._write()

    def _compaction_due(self, extra: int = 0) -> bool:
        return self._file.damaged or _worth_compacting(
            self._records + extra, len(self._expiry)
        )

    # -- writing --------------------------------------------------------------

    def _write(self) -> None:
        """Write the waiting records: one append and sync, or a rewrite."""
        self._turn = None
        if self._writing or not (self._batch or self._compaction_due()):
            return
        batch, self._batch = self._batch, []
        if self._compaction_due(len(batch)):
            self.prune()
            # The live identities include those of the batch.
            live = list(self._expiry.items())
            self._writing = True
            done = self._in_thread(lambda: self._file.rewrite(live))
            done.addBoth(self._written, batch, len(live))
            return
        # In the reactor's thread: handing a batch to a thread and back
        # costs more CPU than the sync itself (docs/operating.rst).
        appended = [(key, expiry) for key, expiry, _ in batch]
        try:
            self._file.append(appended)
        except Exception:
            # Fail closed, whatever went wrong: nobody waits for ever.
            self._written(Failure(), batch, self._records)
        else:
            self._written(None, batch, self._records + len(appended))

    def _written(self, result: object, batch: list[_Waiting], records: int) -> None:
        self._writing = False
        if isinstance(result, Failure):
            self._failed(result, batch)
        else:
            if records < self._records:
                _log.info(
                    "used-token file {path} compacted to {records} records",
                    path=self._file.path,
                    records=records,
                )
            self._records = records
            if self._failing:
                self._failing = False
                _log.info("used-token file {path} written again", path=self._file.path)
            for _, _, answer in batch:
                answer.callback(True)
        if self._batch:
            if self._turn is None:
                self._write()
        elif not self._writing:
            drained, self._drained = self._drained, []
            for waiter in drained:
                waiter.callback(None)

    def _failed(self, failure: Failure, batch: list[_Waiting]) -> None:
        """Refuse the batch and leave its tokens unused: none was answered."""
        if not self._failing:
            self._failing = True
            _log.warn(
                "cannot write the used-token file {path}: {error}; handshakes "
                "are refused with 503 until it can be written",
                path=self._file.path,
                error=failure.getErrorMessage(),
            )
        for key, expiry, answer in batch:
            if self._expiry.get(key) == expiry:
                del self._expiry[key]
            answer.errback(LedgerUnavailable("the used-token file cannot be written"))

    # -- the service ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        loaded, path = self._loaded, self._file.path
        _log.info(
            "used-token ledger: file {path}, {tokens} unexpired tokens remembered",
            path=path,
            tokens=len(self._expiry),
        )
        if loaded.torn:
            _log.warn(
                "used-token file {path}: its last record was cut short (a crash "
                "while writing it) and is ignored; that handshake never completed",
                path=path,
            )
        if loaded.corrupt:
            _log.warn(
                "used-token file {path}: {count} malformed records skipped",
                path=path,
                count=loaded.corrupt,
            )
        self._checker.start(CHECK_INTERVAL, now=False)

    def stopService(self) -> Deferred[None]:
        """Write what waits, then close the file; later handshakes get 503."""
        super().stopService()
        if self._checker.running:
            self._checker.stop()
        self._closed = True
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        self._write()
        drained: Deferred[None] = Deferred()
        drained.addCallback(lambda _: self._file.close())
        if self._writing:
            self._drained.append(drained)
        else:
            drained.callback(None)
        return drained
