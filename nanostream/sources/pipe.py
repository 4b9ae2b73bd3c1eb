"""Reads a pipe (or file) descriptor in large chunks for a protocol.

``twisted.internet.stdio.StandardIO`` reads 8 KiB per reactor turn.  A
batch of lines is what one read produced, so at 700-byte lines that capped a
batch at about eleven lines and cost one send per client per eleven lines.
Reading up to 1 MiB per turn lets a producer that is ahead of us deliver
hundreds of lines per batch, while a trickle still goes out line by line
with no added delay.  On Linux the pipe itself is widened to match, so the
producer can get that far ahead.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from twisted.internet import abstract, fdesc, main
from twisted.internet.interfaces import IReactorFDSet, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

#: Bytes asked of the kernel per read.
READ_SIZE = 1024 * 1024

#: Linux's fcntl to resize a pipe (``F_SETPIPE_SZ``), absent from ``fcntl``
#: before Python 3.10 on some builds.
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def widen_pipe(fd: int, size: int = READ_SIZE) -> None:
    """Best effort: let a pipe hold ``size`` bytes (the kernel may refuse)."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except OSError:
        pass


class PipeReader(abstract.FileDescriptor):
    """The read half of StandardIO, with a read size of our choosing."""

    def __init__(
        self, fd: int, protocol: Protocol, reactor: IReactorFDSet | None = None
    ) -> None:
        super().__init__(reactor)
        # The same reactor as the clock that schedules ``connectionLost``.
        self._clock = IReactorTime(self.reactor)
        self._fd = fd
        # One buffer for every read: a fresh 1 MiB bytes per read would cost
        # an mmap, an mremap and an munmap even for a single short line.
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self.protocol: Protocol | None = protocol
        fdesc.setNonBlocking(fd)
        widen_pipe(fd)
        self.connected = True
        protocol.makeConnection(self)
        self.startReading()

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Exception | None:
        # The reactor takes the exception itself (``main.CONNECTION_DONE``
        # for end of input), as Twisted's own descriptors return it, though
        # ``IReadDescriptor`` is annotated with ``Failure``.
        try:
            size = os.readv(self._fd, (self._buffer,))
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return None
            return main.CONNECTION_LOST
        if not size:
            return main.CONNECTION_DONE
        # A copy of just what arrived: the protocol may keep it (a partial
        # line) while the buffer takes the next read.
        if self.protocol is not None:
            self.protocol.dataReceived(self._view[:size].tobytes())
        return None

    def writeSomeData(self, data: bytes) -> int:
        raise RuntimeError("a source pipe is read-only")

    def loseConnection(self, _connDone: Failure | None = None) -> None:
        """Stop reading; the protocol hears ``connectionLost`` next turn."""
        if self.connected and not self.disconnecting:
            self.disconnecting = True
            self.stopReading()
            self._clock.callLater(0, self.connectionLost, Failure(main.CONNECTION_DONE))

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connectionLost(reason)
