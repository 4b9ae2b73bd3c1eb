"""Reading the source ahead of its turn while clients are let in.

The reactor reads the source once per turn, after the turn's timed work:
handshakes answered by the pacer, steps of replays, accepts.  Each of those
is bounded, but together they held a live line back three milliseconds and
more in a reconnect storm.  Between two handshakes, and between two replay
steps (not before a turn's first, which follows the reactor's own read),
the pacer and the replays call :class:`ReadAhead`, which reads a
source descriptor then and there if input waits on it, so that a line waits
for one handshake or one step, not for a whole turn.  Nothing changes when
no input waits: the look is one ``poll`` of the source descriptors, at most
once in :data:`SPACING` seconds.

Only descriptors read by the reactor itself take part (stdin, producers on a
TCP or UNIX endpoint); what a read finds at end of input or on an error is
left to the reactor's own read, which finds it again.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import Protocol

from twisted.logger import Logger

_log = Logger()

#: Seconds between two looks at the source: a line waits at most about
#: this long (plus one handshake or replay step) for a look.
SPACING = 0.0002


class Readable(Protocol):
    """What the reactor reads: Twisted's file descriptors and connections."""

    connected: bool | int
    disconnecting: bool | int

    def fileno(self) -> int: ...

    def doRead(self) -> object: ...


class ReadAhead:
    """The source descriptors to read early, between steps of letting clients in."""

    def __init__(
        self, spacing: float = SPACING, timer: Callable[[], float] = time.perf_counter
    ) -> None:
        #: Seconds a look waits after the last.
        self.spacing = spacing
        self._timer = timer
        self._last = -spacing
        self._poller = select.poll()
        self._by_fd: dict[int, Readable] = {}
        self._fds: dict[Readable, int] = {}

    def __len__(self) -> int:
        """Descriptors watched."""
        return len(self._fds)

    def watch(self, descriptor: Readable) -> None:
        """Read ``descriptor`` on each look that finds input waiting on it.

        It must be unwatched before its file descriptor is closed.
        """
        fd = descriptor.fileno()
        self._poller.register(fd, select.POLLIN)
        self._by_fd[fd] = descriptor
        self._fds[descriptor] = fd

    def unwatch(self, descriptor: Readable) -> None:
        fd = self._fds.pop(descriptor, None)
        if fd is not None:
            del self._by_fd[fd]
            self._poller.unregister(fd)

    def __call__(self) -> None:
        """Look, unless the last look was under ``spacing`` ago."""
        if not self._fds:
            return
        now = self._timer()
        if now - self._last < self.spacing:
            return
        self._last = now
        for fd, events in self._poller.poll(0):
            descriptor = self._by_fd.get(fd)
            if (
                descriptor is None
                or not events & select.POLLIN
                or not descriptor.connected
                or descriptor.disconnecting
            ):
                continue
            try:
                descriptor.doRead()
            except Exception:
                # Logged, and no longer read ahead: the reactor reads it as
                # before, and ends it if its reads fail too.
                _log.failure("reading the source ahead failed; not again")
                self.unwatch(descriptor)
