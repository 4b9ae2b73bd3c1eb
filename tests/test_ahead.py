"""The source read ahead of its turn while clients are let in: a live line
waits for one handshake or one replay step, not for a whole reactor turn."""

from __future__ import annotations

import os

from test_pipe import Recorder
from test_resume import Fixture, lid, numbered, with_ids
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nanostream.auth.pacing import HandshakePacer
from nanostream.broadcast import Broadcaster
from nanostream.resume.turns import Turns
from nanostream.sources.ahead import SPACING, ReadAhead
from nanostream.sources.pipe import PipeReader
from nanostream.sources.stdio import StdioSource


class ReadAheadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = [100.0]
        self.ahead = ReadAhead(timer=lambda: self.now[0])
        self.reads: list[str] = []

    def test_each_look_calls_every_read(self) -> None:
        self.ahead.watch(lambda: self.reads.append("a"))
        self.ahead.watch(lambda: self.reads.append("b"))
        self.assertEqual(len(self.ahead), 2)
        self.ahead()
        self.assertEqual(self.reads, ["a", "b"])

    def test_looks_are_spaced(self) -> None:
        """A look within ``spacing`` of the last is skipped: the poll is cheap,
        but a thousand steps of a turn need not each pay it."""
        self.ahead.watch(lambda: self.reads.append("a"))
        self.ahead()
        self.now[0] += SPACING / 2
        self.ahead()
        self.assertEqual(self.reads, ["a"])
        self.now[0] += SPACING / 2
        self.ahead()
        self.assertEqual(self.reads, ["a", "a"])

    def test_unwatched_read_is_not_called(self) -> None:
        def read() -> None:
            self.reads.append("a")

        self.ahead.watch(read)
        self.ahead.unwatch(read)
        self.ahead.unwatch(read)  # twice is harmless
        self.ahead()
        self.assertEqual(self.reads, [])
        self.assertEqual(len(self.ahead), 0)


class PipeReadWaitingTests(TestCase):
    """``read_waiting`` reads what waits in the pipe now, without the reactor."""

    def setUp(self) -> None:
        r, self.w = os.pipe()
        self.addCleanup(os.close, r)
        self.protocol = Recorder()
        self.reader = PipeReader(r, self.protocol, reactor)
        self.addCleanup(self.reader.stopReading)

    def test_reads_what_waits(self) -> None:
        os.write(self.w, b"one\n")
        self.reader.read_waiting()
        self.assertEqual(self.protocol.chunks, [b"one\n"])
        os.close(self.w)

    def test_nothing_waiting_reads_nothing(self) -> None:
        self.reader.read_waiting()
        self.assertEqual(self.protocol.chunks, [])
        os.close(self.w)

    def test_no_read_once_closing(self) -> None:
        os.write(self.w, b"one\n")
        self.reader.loseConnection()
        self.reader.read_waiting()
        self.assertEqual(self.protocol.chunks, [])
        os.close(self.w)
        return self.protocol.lost

    def test_end_of_input_is_left_to_the_reactor(self) -> None:
        """At end of input nothing is handed on and the reader does not end
        there; the reactor's own read ends it, once."""
        os.close(self.w)
        self.reader.read_waiting()
        self.assertFalse(self.protocol.lost.called)
        self.assertEqual(self.protocol.chunks, [])
        return self.protocol.lost


class BetweenStepsTests(SynchronousTestCase):
    """The pacer and the replays' turns look at the source before each step."""

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
        self.assertEqual(self.events, ["read", "d", "read", "e"])

    def test_replay_turn_reads_before_each_step(self) -> None:
        turns = Turns(self.clock, between=lambda: self.events.append("read"))
        for name in "xyz":
            turns.soon(lambda name=name: self.events.append(name) or 1)
        self.clock.advance(0)
        self.assertEqual(self.events, ["read", "x", "read", "y", "read", "z"])


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
