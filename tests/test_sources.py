"""Sources: producers' byte streams into batches of lines, and stdin's end."""

from __future__ import annotations

import os
from collections.abc import Sequence

import support
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nanostream.sources.ahead import ReadAhead
from nanostream.sources.stdio import StdioSource
from nanostream.sources.stream import LineSourceFactory, LineSourceProtocol


class RecordingSink:
    """A LineSink that keeps every batch and can be waited on."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self._waiting: list[Deferred[list[bytes]]] = []

    def broadcast(self, lines: Sequence[bytes]) -> None:
        batch = list(lines)
        self.batches.append(batch)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(batch)

    def next_batch(self) -> Deferred[list[bytes]]:
        """Fires with the next batch handed in."""
        d: Deferred[list[bytes]] = Deferred()
        self._waiting.append(d)
        return d

    @property
    def lines(self) -> list[bytes]:
        return [line for batch in self.batches for line in batch]


class CapturingTestCase(SynchronousTestCase):
    """Keeps every log event emitted during a test."""

    def setUp(self) -> None:
        self.events = support.capture_logs(self)

    def from_module(self, module: str) -> list[LogEvent]:
        return [e for e in self.events if e.get("log_namespace") == module]


class LineSourceProtocolTests(CapturingTestCase):
    """One producer's bytes become whole lines, one batch per read."""

    def connect(self, max_line_bytes: int = 100) -> tuple[LineSourceProtocol, ...]:
        self.sink = RecordingSink()
        self.ended: list[Failure] = []
        protocol = LineSourceProtocol(
            self.sink, max_line_bytes, "test producer", self.ended.append
        )
        self.transport = StringTransport()
        protocol.makeConnection(self.transport)
        return (protocol,)

    def test_one_batch_per_read(self) -> None:
        """The complete lines of each read go to the sink together, in order."""
        (protocol,) = self.connect()
        protocol.dataReceived(b"one\ntwo\nthr")
        protocol.dataReceived(b"ee\n")
        self.assertEqual(self.sink.batches, [[b"one", b"two"], [b"three"]])

    def test_read_without_a_whole_line_sends_nothing(self) -> None:
        """A read that completes no line hands the sink nothing."""
        (protocol,) = self.connect()
        protocol.dataReceived(b"part")
        protocol.dataReceived(b"\n\n")
        self.assertEqual(self.sink.batches, [[b"part"]])

    def test_crlf_and_empty_lines(self) -> None:
        """A trailing CR is stripped and empty lines are skipped."""
        (protocol,) = self.connect()
        protocol.dataReceived(b"a\r\n\r\n\nb\n")
        self.assertEqual(self.sink.batches, [[b"a", b"b"]])

    def test_overlong_line_discarded_with_warning(self) -> None:
        """An overlong line is logged with its length, and the next line arrives."""
        (protocol,) = self.connect(max_line_bytes=5)
        protocol.dataReceived(b"1234567")
        protocol.dataReceived(b"89\nok\n")
        self.assertEqual(self.sink.lines, [b"ok"])
        self.assertFalse(self.transport.disconnecting)
        [event] = self.from_module("nanostream.sources.stream")
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertGreater(event["length"], 5)
        self.assertEqual(event["limit"], 5)
        self.assertEqual(event["source"], "test producer")

    def test_final_line_without_newline_on_close(self) -> None:
        """The last line is delivered when the producer closes without a newline."""
        (protocol,) = self.connect()
        protocol.dataReceived(b"first\nlast")
        self.assertEqual(self.sink.lines, [b"first"])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.sink.batches, [[b"first"], [b"last"]])
        self.assertEqual(len(self.ended), 1)
        self.ended[0].trap(ConnectionDone)

    def test_close_after_newline_sends_nothing_more(self) -> None:
        """Closing after a complete line adds no empty batch."""
        (protocol,) = self.connect()
        protocol.dataReceived(b"only\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.sink.batches, [[b"only"]])

    def test_unfinished_line_discarded_when_connection_lost(self) -> None:
        """A reset is no end of input: the unfinished line is dropped with a warning."""
        (protocol,) = self.connect()
        protocol.dataReceived(b"whole\nhalf a li")
        protocol.connectionLost(Failure(ConnectionLost("Connection reset by peer")))
        self.assertEqual(self.sink.batches, [[b"whole"]])
        [event] = self.from_module("nanostream.sources.stream")
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(event["length"], len(b"half a li"))
        self.assertEqual(event["source"], "test producer")
        self.assertEqual(len(self.ended), 1)
        self.ended[0].trap(ConnectionLost)

    def test_lost_after_newline_warns_of_nothing(self) -> None:
        """A reset after a complete line loses nothing, so nothing is logged."""
        (protocol,) = self.connect()
        protocol.dataReceived(b"whole\n")
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.sink.batches, [[b"whole"]])
        self.assertEqual(self.from_module("nanostream.sources.stream"), [])


class LineSourceFactoryTests(CapturingTestCase):
    """Producers of one endpoint each keep their own partial line."""

    def setUp(self) -> None:
        super().setUp()
        self.sink = RecordingSink()
        self.factory = LineSourceFactory(self.sink, 100)

    def producer(self, port: int) -> LineSourceProtocol:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        protocol.makeConnection(StringTransport())
        return protocol

    def test_interleaved_producers_keep_lines_whole(self) -> None:
        """Chunks of two producers interleaved still make each one's lines whole."""
        first = self.producer(5001)
        second = self.producer(5002)
        first.dataReceived(b"hel")
        second.dataReceived(b"wor")
        first.dataReceived(b"lo\nagain")
        second.dataReceived(b"ld\n")
        second.connectionLost(Failure(ConnectionDone()))
        first.dataReceived(b"\n")
        self.assertEqual(self.sink.batches, [[b"hello"], [b"world"], [b"again"]])

    def test_producer_connect_and_disconnect_logged(self) -> None:
        """Each producer's arrival and departure is an info event with the count."""
        first = self.producer(5001)
        self.producer(5002)
        first.connectionLost(Failure(ConnectionDone()))
        logged = [
            (event["log_level"], event["producer"], event["producers"])
            for event in self.from_module("nanostream.sources.stream")
        ]
        self.assertEqual(
            logged,
            [
                (LogLevel.info, "127.0.0.1:5001", 1),
                (LogLevel.info, "127.0.0.1:5002", 2),
                (LogLevel.info, "127.0.0.1:5001", 1),
            ],
        )
        self.assertEqual(self.factory.producers, 1)

    def test_status_follows_producers(self) -> None:
        """The source counts as connected while at least one producer is."""
        self.assertFalse(self.factory.status.connected)
        producer = self.producer(5001)
        self.assertTrue(self.factory.status.connected)
        producer.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(self.factory.status.connected)

    def test_unix_producer_named_by_path(self) -> None:
        """A producer on a UNIX socket is logged by the socket's path."""
        self.factory.buildProtocol(UNIXAddress(b"/run/nanostream/in.sock"))
        [event] = self.from_module("nanostream.sources.stream")
        self.assertEqual(event["producer"], "/run/nanostream/in.sock")


class StdioSourceTests(TestCase):
    """StdioSource over a real pipe: EOF ends the service, a stop does not."""

    def setUp(self) -> None:
        self.sink = RecordingSink()
        self.eofs: list[None] = []
        self.open_fds: set[int] = set()
        stdin_read, self.stdin_write = self.pipe()
        self.ahead = ReadAhead(spacing=0)
        self.source = StdioSource(
            self.sink,
            100,
            self.on_eof,
            stdin=stdin_read,
            ahead=self.ahead,
        )
        self.eof: Deferred[None] = Deferred()

    def pipe(self) -> tuple[int, int]:
        """A pipe whose ends are closed in cleanup unless closed before."""
        ends = os.pipe()
        self.open_fds.update(ends)
        for fd in ends:
            self.addCleanup(self.close, fd)
        return ends

    def close(self, fd: int) -> None:
        """Close one of our pipe ends once: its number may be reused after."""
        if fd in self.open_fds:
            self.open_fds.remove(fd)
            os.close(fd)

    def on_eof(self) -> None:
        self.eofs.append(None)
        self.eof.callback(None)

    def start(self) -> None:
        self.source.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.source.running:
            self.source.stopService()

    def test_eof_calls_on_eof_once(self) -> None:
        """EOF on stdin delivers the last line, then calls on_eof exactly once."""
        self.start()
        os.write(self.stdin_write, b"one\ntwo")
        self.close(self.stdin_write)

        def ended(_: None) -> None:
            self.assertEqual(self.sink.lines, [b"one", b"two"])
            self.assertEqual(self.eofs, [None])
            self.assertFalse(self.source.status.connected)

        return self.eof.addCallback(ended)

    def test_reads_ahead_until_eof(self) -> None:
        """Lines waiting in stdin are read when the broadcaster looks ahead
        (no reactor turn needed); at end of input the look stops."""
        self.start()
        self.assertEqual(len(self.ahead), 1)
        os.write(self.stdin_write, b"early\n")
        self.ahead()
        self.assertEqual(self.sink.lines, [b"early"])
        self.close(self.stdin_write)

        def ended(_: None) -> None:
            self.assertEqual(len(self.ahead), 0)

        return self.eof.addCallback(ended)

    def test_no_eof_callback_after_stop(self) -> None:
        """Stopping the service closes stdin without calling on_eof."""
        self.start()
        os.write(self.stdin_write, b"first\nlast")
        d = self.sink.next_batch()

        def read(batch: list[bytes]) -> Deferred[list[bytes]]:
            self.assertEqual(batch, [b"first"])
            closed = self.sink.next_batch()
            self.source.stopService()
            return closed

        def closed(batch: list[bytes]) -> None:
            # connectionLost delivered the partial line, and on_eof stayed quiet.
            self.assertEqual(batch, [b"last"])

        def settled(_: None) -> Deferred[None]:
            # connectionLost calls on_eof, if at all, after handing on the
            # last batch; one reactor turn later that call is over.
            return deferLater(reactor, 0, lambda: self.assertEqual(self.eofs, []))

        return d.addCallback(read).addCallback(closed).addCallback(settled)
