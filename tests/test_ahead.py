"""The source read ahead of its turn while clients are let in: a live line
waits for one handshake or one replay step, not for a whole reactor turn."""

from __future__ import annotations

import os
import socket
import time

import support
from test_pipe import Recorder
from test_resume import Fixture, lid, numbered, with_ids
from test_sources import RecordingSink
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nanostream.auth.pacing import HandshakePacer
from nanostream.broadcast import Broadcaster
from nanostream.resume.turns import Turns
from nanostream.sources.ahead import SPACING, ReadAhead
from nanostream.sources.pipe import PipeReader
from nanostream.sources.stdio import StdioSource
from nanostream.sources.stream import LineSourceFactory


class Descriptor:
    """A readable stand-in: the read end of a pipe, one byte per read."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.r, self.w = os.pipe()
        test.addCleanup(os.close, self.r)
        test.addCleanup(os.close, self.w)
        self.connected = True
        self.disconnecting = False
        self.reads: list[bytes] = []

    def fileno(self) -> int:
        return self.r

    def doRead(self) -> None:
        self.reads.append(os.read(self.r, 1))


class ReadAheadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = [100.0]
        self.ahead = ReadAhead(timer=lambda: self.now[0])

    def descriptor(self, waiting: bytes = b"") -> Descriptor:
        descriptor = Descriptor(self)
        if waiting:
            os.write(descriptor.w, waiting)
        self.ahead.watch(descriptor)
        return descriptor

    def test_reads_only_where_input_waits(self) -> None:
        a, b, c = self.descriptor(b"a"), self.descriptor(), self.descriptor(b"c")
        self.assertEqual(len(self.ahead), 3)
        self.ahead()
        self.assertEqual((a.reads, b.reads, c.reads), ([b"a"], [], [b"c"]))

    def test_looks_are_spaced(self) -> None:
        """A look within ``spacing`` of the last is skipped: the poll is cheap,
        but a thousand steps of a turn need not each pay it."""
        d = self.descriptor(b"1")
        self.ahead()
        os.write(d.w, b"2")
        self.now[0] += SPACING / 2
        self.ahead()
        self.assertEqual(d.reads, [b"1"])
        self.now[0] += SPACING / 2
        self.ahead()
        self.assertEqual(d.reads, [b"1", b"2"])

    def test_unwatched_is_not_read(self) -> None:
        d = self.descriptor(b"x")
        self.ahead.unwatch(d)
        self.ahead.unwatch(d)  # twice is harmless
        self.ahead()
        self.assertEqual((d.reads, len(self.ahead)), ([], 0))

    def test_closing_or_closed_is_left_to_the_reactor(self) -> None:
        closing, closed = self.descriptor(b"x"), self.descriptor(b"y")
        closing.disconnecting = True
        closed.connected = False
        self.ahead()
        self.assertEqual((closing.reads, closed.reads), ([], []))

    def test_a_failing_read_is_logged_and_not_tried_again(self) -> None:
        events = support.capture_logs(self)
        d = self.descriptor(b"x")

        def fail() -> None:
            raise RuntimeError("broken protocol")

        d.doRead = fail  # type: ignore[method-assign]
        self.ahead()
        self.assertEqual(len(self.ahead), 0)
        self.flushLoggedErrors(RuntimeError)
        [failure] = [e for e in events if e.get("log_failure") is not None]
        self.assertIn("reading the source ahead failed", failure["log_format"])


class PipeReaderAheadTests(TestCase):
    """The stdin reader read ahead: what waits is read now, without the reactor."""

    def setUp(self) -> None:
        r, self.w = os.pipe()
        self.addCleanup(os.close, r)
        self.protocol = Recorder()
        self.reader = PipeReader(r, self.protocol, reactor)
        self.addCleanup(self.reader.stopReading)
        self.ahead = ReadAhead(spacing=0)
        self.ahead.watch(self.reader)

    def test_reads_what_waits(self) -> None:
        os.write(self.w, b"one\n")
        self.ahead()
        self.assertEqual(self.protocol.chunks, [b"one\n"])
        os.close(self.w)

    def test_nothing_waiting_reads_nothing(self) -> None:
        self.ahead()
        self.assertEqual(self.protocol.chunks, [])
        os.close(self.w)

    def test_no_read_once_closing(self) -> None:
        os.write(self.w, b"one\n")
        self.reader.loseConnection()
        self.ahead()
        self.assertEqual(self.protocol.chunks, [])
        os.close(self.w)
        return self.protocol.lost

    def test_end_of_input_is_left_to_the_reactor(self) -> None:
        """At end of input nothing is handed on and the reader does not end
        there; the reactor's own read ends it, once."""
        os.close(self.w)
        self.ahead()
        self.assertFalse(self.protocol.lost.called)
        self.assertEqual(self.protocol.chunks, [])
        return self.protocol.lost


class BetweenStepsTests(SynchronousTestCase):
    """The pacer and the replays' turns look at the source between steps."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[str] = []

    def test_pacer_reads_before_each_handshake(self) -> None:
        pacer = HandshakePacer(
            self.clock, per_turn=3, between=lambda: self.events.append("read")
        )

        class Waiting:
            def __init__(self, name: str, events: list[str]) -> None:
                self.name, self.events = name, events

            def handshake_turn(self) -> None:
                self.events.append(self.name)

        for name in "abcde":
            pacer.take(Waiting(name, self.events))
        self.clock.advance(0)
        # a, b and c went at once (the bound); d and e in the next turn.
        # Between the turn's two, not before the first (the reactor has just
        # read its descriptors).
        self.assertEqual(self.events, ["d", "read", "e"])

    def test_replay_turn_reads_before_each_step(self) -> None:
        turns = Turns(self.clock, between=lambda: self.events.append("read"))
        for name in "xyz":
            turns.soon(lambda name=name: self.events.append(name) or 1)
        self.clock.advance(0)
        self.assertEqual(self.events, ["x", "read", "y", "read", "z"])


class StdinAheadOfReplaysTests(Fixture):
    """A line piped in during a storm of replays goes live within the turn,
    and the replays still give their clients every line once, in order."""

    def setUp(self) -> None:
        super().setUp()
        self.broadcaster = Broadcaster(
            10**6, self.clock, self.history, read_ahead=ReadAhead(spacing=0)
        )
        r, self.w = os.pipe()
        self.addCleanup(os.close, self.w)
        self.addCleanup(os.close, r)
        self.source = StdioSource(
            self.broadcaster,
            100,
            lambda: None,
            MemoryReactorClock(),
            stdin=r,
            ahead=self.broadcaster.read_ahead,
        )
        self.source.startService()
        self.addCleanup(self.source.stopService)

    def test_line_goes_out_between_replay_steps(self) -> None:
        self.broadcaster.broadcast(numbered(1, 80))
        live = self.client(ids=True)
        replaying = [self.client(since=lid(1)) for _ in range(3)]
        os.write(self.w, b"line 81\n")
        # The source's reactor never runs: only a read ahead takes the line.
        self.turn()
        self.assertEqual(live.messages(), with_ids(81, 81))
        self.settle()
        for client in replaying:
            self.assertEqual(
                [m for m in client.messages() if not m.startswith(b"!")],
                with_ids(2, 81),
            )

    def test_first_chunk_goes_before_a_line_read_ahead(self) -> None:
        """A replay woken for its first chunk sends it before the turn reads
        ahead: with a short history, the line read first would push that
        chunk out and drop a client that was not behind."""
        self.history.max_lines = 20
        self.broadcaster.broadcast(numbered(1, 100))
        client = self.client(since=lid(10))
        os.write(self.w, b"line 101\n")
        self.turn()
        # The reactor's own read, after the turn.
        self.broadcaster.read_ahead()
        self.assertEqual(client.dropped, [])
        self.assertEqual(
            client.messages(),
            [b"!gap " + lid(10) + b" " + lid(81), *with_ids(81, 100), b"!live"]
            + with_ids(101, 101),
        )


class EndpointAheadTests(TestCase):
    """A producer's TCP connection is read ahead while it is open."""

    async def test_producer_read_ahead_while_connected(self) -> None:
        sink = RecordingSink()
        ahead = ReadAhead(spacing=0)
        factory = LineSourceFactory(sink, 100, ahead=ahead)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        producer = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(producer.close)
        while not len(ahead):
            await deferLater(reactor, 0.01)
        producer.sendall(b"early\n")
        # No reactor turn from here on: only a read ahead takes the line.
        for _ in range(500):
            ahead()
            if sink.lines:
                break
            time.sleep(0.002)
        self.assertEqual(sink.lines, [b"early"])
        producer.close()
        while factory.producers:
            await deferLater(reactor, 0.01)
        self.assertEqual(len(ahead), 0)
