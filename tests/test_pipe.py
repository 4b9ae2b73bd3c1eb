"""Reading the stdin pipe in large chunks."""

from __future__ import annotations

import fcntl
import os
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nanostream.sources.pipe import READ_SIZE, PipeReader, widen_pipe

_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


class Recorder(Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason
        self.lost.callback(None)


class WidenPipeTests(SynchronousTestCase):
    """A stdin pipe is widened so a producer can get far ahead of us."""

    def test_pipe_widened(self) -> None:
        """widen_pipe grows a pipe's capacity to the read size when allowed."""
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        widen_pipe(r)
        # An unprivileged user may be capped by /proc/sys/fs/pipe-max-size.
        with open("/proc/sys/fs/pipe-max-size") as f:
            cap = int(f.read())
        self.assertGreaterEqual(fcntl.fcntl(r, _F_GETPIPE_SZ), min(READ_SIZE, cap))

    def test_not_a_pipe_left_alone(self) -> None:
        """A regular file is not a pipe: widen_pipe does nothing and raises nothing."""
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.remove, path)
        self.addCleanup(os.close, fd)
        widen_pipe(fd)


class PipeReaderTests(TestCase):
    """PipeReader hands on large reads and reports EOF once."""

    def test_large_reads_and_eof(self) -> None:
        """Data written ahead arrives in reads far larger than 8 KiB, then EOF."""
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        protocol = Recorder()
        PipeReader(r, protocol, reactor)
        payload = os.urandom(512 * 1024)
        view = memoryview(payload)
        while view:
            view = view[os.write(w, view) :]
        os.close(w)

        def ended(_: None) -> None:
            self.assertEqual(b"".join(protocol.chunks), payload)
            self.assertGreater(max(map(len, protocol.chunks)), 8192)

        return protocol.lost.addCallback(ended)

    def test_lose_connection_reports_lost(self) -> None:
        """loseConnection stops reading and tells the protocol one turn later."""
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        protocol = Recorder()
        reader = PipeReader(r, protocol, reactor)
        reader.loseConnection()
        self.assertFalse(protocol.lost.called)
        return protocol.lost

    def test_earlier_reads_survive_later_ones(self) -> None:
        """Each read is handed on as its own bytes, untouched by the next read.

        The reader reuses one buffer; a protocol keeping a partial line must
        not see it overwritten.
        """
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        protocol = Recorder()
        first_read: Deferred[None] = Deferred()
        record = protocol.dataReceived

        def received(data: bytes) -> None:
            record(data)
            if not first_read.called:
                first_read.callback(None)

        protocol.dataReceived = received  # type: ignore[method-assign]
        PipeReader(r, protocol, reactor)
        os.write(w, b"partial line, no end yet")

        def write_more(_: None) -> None:
            os.write(w, b"overwrite what came first, and more\n")
            os.close(w)

        def ended(_: None) -> None:
            self.assertEqual(
                protocol.chunks,
                [b"partial line, no end yet", b"overwrite what came first, and more\n"],
            )
            self.assertTrue(all(type(chunk) is bytes for chunk in protocol.chunks))

        first_read.addCallback(write_more)
        return protocol.lost.addCallback(ended)
