"""A burst of handshakes is answered a bounded number per reactor turn.

So that a thousand clients reconnecting at once cannot hold the live feed
back for the whole burst: between turns the reactor reads the source and
writes to clients.  Nothing waits while the bound is not reached.
"""

from __future__ import annotations

import os

from support import mint, reactor_turn
from test_ahead import Descriptor
from test_limits import DEFAULT_MAX_HANDSHAKE_BYTES, LimitsTestCase, request
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth import reasons
from nanostream.auth.pacing import (
    HANDSHAKES_PER_TURN,
    TURN_SECONDS,
    HandshakePacer,
)

SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\n"


class Connection:
    """Records its turns."""

    def __init__(self, name: str, turns: list[str]) -> None:
        self.name = name
        self._turns = turns

    def handshake_turn(self) -> None:
        self._turns.append(self.name)


class PacerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pacer = HandshakePacer(self.clock, per_turn=2)
        self.turns: list[str] = []

    def connection(self, name: str) -> Connection:
        return Connection(name, self.turns)

    def test_under_the_bound_goes_at_once(self) -> None:
        self.assertTrue(self.pacer.take(self.connection("a")))
        self.assertTrue(self.pacer.take(self.connection("b")))
        self.assertEqual(self.pacer.waiting, 0)

    def test_over_the_bound_waits_in_order(self) -> None:
        """Each turn takes at most the bound, oldest first."""
        connections = [self.connection(name) for name in "abcdefg"]
        taken = [self.pacer.take(c) for c in connections]
        self.assertEqual(taken, [True, True] + [False] * 5)
        reactor_turn(self.clock)
        self.assertEqual(self.turns, ["c", "d"])
        reactor_turn(self.clock)
        self.assertEqual(self.turns, ["c", "d", "e", "f"])
        reactor_turn(self.clock)
        self.assertEqual(self.turns, ["c", "d", "e", "f", "g"])
        self.assertEqual(self.pacer.waiting, 0)

    def test_turn_shares_its_bound_with_new_arrivals(self) -> None:
        """What a turn answered from the queue counts against new arrivals."""
        for name in "abc":
            self.pacer.take(self.connection(name))
        reactor_turn(self.clock)  # answers c: one of this turn's two is spent
        self.assertTrue(self.pacer.take(self.connection("d")))
        self.assertFalse(self.pacer.take(self.connection("e")))

    def test_no_queue_jumping(self) -> None:
        """A new arrival waits behind those already waiting, bound or not."""
        for name in "abc":
            self.pacer.take(self.connection(name))
        reactor_turn(self.clock)
        reactor_turn(self.clock)  # a quiet turn: the count is back to zero
        waiting = self.connection("x")
        for name in "yz":
            self.pacer.take(self.connection(name))
        self.assertFalse(self.pacer.take(waiting))
        reactor_turn(self.clock)
        self.assertIn("x", self.turns)

    def test_waiting_connection_keeps_its_place(self) -> None:
        """More bytes from a waiting connection do not queue it twice."""
        self.pacer.take(self.connection("a"))
        self.pacer.take(self.connection("b"))
        c = self.connection("c")
        self.assertFalse(self.pacer.take(c))
        self.assertFalse(self.pacer.take(c))
        self.assertEqual(self.pacer.waiting, 1)
        reactor_turn(self.clock)
        self.assertEqual(self.turns, ["c"])

    def test_forgotten_connection_takes_no_turn(self) -> None:
        for name in "ab":
            self.pacer.take(self.connection(name))
        gone, stays = self.connection("gone"), self.connection("stays")
        self.pacer.take(gone)
        self.pacer.take(stays)
        self.pacer.forget(gone)
        reactor_turn(self.clock)
        self.assertEqual(self.turns, ["stays"])

    def paced(self, per_turn: int, share: float) -> tuple[HandshakePacer, list]:
        """A pacer whose handshakes each take ``share`` of a turn's time."""
        now = [0.0]
        turns = self.turns

        class Timed(Connection):
            def handshake_turn(self) -> None:
                super().handshake_turn()
                now[0] += share * TURN_SECONDS

        pacer = HandshakePacer(self.clock, per_turn=per_turn, timer=lambda: now[0])
        return pacer, [Timed(name, turns) for name in "abcdefg"]

    @staticmethod
    def arrive(pacer: HandshakePacer, connections: list) -> None:
        """Requests arrive; those let through are answered there and then."""
        for connection in connections:
            if pacer.take(connection):
                connection.handshake_turn()

    def test_slow_handshakes_end_the_turn_early(self) -> None:
        """On a slow core the turn's time, not the count, ends it: the first
        of a turn always goes, one more may start within the time."""
        pacer, connections = self.paced(per_turn=4, share=0.6)
        self.arrive(pacer, connections[:5])
        self.assertEqual(self.turns, ["a", "b"])
        reactor_turn(self.clock)
        self.assertEqual(self.turns, ["a", "b", "c", "d"])
        reactor_turn(self.clock)
        self.assertEqual(self.turns, ["a", "b", "c", "d", "e"])

    def test_fast_handshakes_keep_the_count(self) -> None:
        pacer, connections = self.paced(per_turn=3, share=0.1)
        self.arrive(pacer, connections)
        self.assertEqual(self.turns, ["a", "b", "c"])
        reactor_turn(self.clock)
        self.assertEqual(self.turns, ["a", "b", "c", "d", "e", "f"])

    def test_quiet_pacer_leaves_no_timer(self) -> None:
        self.pacer.take(self.connection("a"))
        reactor_turn(self.clock)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BurstTests(LimitsTestCase):
    """Through the real protocol: a burst opens over several turns, each once."""

    def burst(self, count: int) -> list:
        connections = []
        for _ in range(count):
            server, transport = self.raw()
            server.dataReceived(request("/?t=" + mint()))
            connections.append((server, transport))
        return connections

    def answered(self, connections: list) -> int:
        return sum(
            transport.value().startswith(SWITCHING) for _, transport in connections
        )

    def test_burst_spreads_over_turns(self) -> None:
        self.limited()
        total = 2 * HANDSHAKES_PER_TURN + 1
        connections = self.burst(total)
        for turn in (1, 2):
            self.assertEqual(self.answered(connections), turn * HANDSHAKES_PER_TURN)
            self.assertEqual(self.factory.tracker.open, turn * HANDSHAKES_PER_TURN)
            reactor_turn(self.clock)
        self.assertEqual(self.answered(connections), total)
        self.assertEqual(self.factory.tracker.open, total)
        for _, transport in connections:
            self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1)

    def test_source_read_before_each_paced_handshake(self) -> None:
        """The factory's pacer looks at the source (the broadcaster's read
        ahead) between the handshakes of a turn."""
        self.limited()
        reads: list[int] = []
        ahead = self.factory.broadcaster.read_ahead
        ahead.spacing = 0
        source = Descriptor(self)
        source.doRead = lambda: reads.append(self.answered(connections))  # type: ignore[method-assign]
        os.write(source.w, b"lines waiting")
        ahead.watch(source)
        connections = self.burst(HANDSHAKES_PER_TURN + 3)
        reactor_turn(self.clock)
        # Between the three waiting handshakes of the turn, each with those
        # before it done; not before the first.
        self.assertEqual(reads, [HANDSHAKES_PER_TURN + 1, HANDSHAKES_PER_TURN + 2])

    def test_waiting_bytes_count_against_the_bound(self) -> None:
        """A waiting request that outgrows --max-handshake-bytes is refused."""
        self.limited()
        self.burst(HANDSHAKES_PER_TURN)
        server, transport = self.raw()
        head = request("/?t=" + mint())[:-2]
        server.dataReceived(head)
        self.assertEqual(transport.value(), b"")
        server.dataReceived(b"Cookie: " + b"c" * DEFAULT_MAX_HANDSHAKE_BYTES)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "))
        self.assertEqual(self.factory.admission.refused[reasons.HEADERS_TOO_LARGE], 1)
        reactor_turn(self.clock)
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1)

    def test_client_gone_while_waiting(self) -> None:
        """A client that leaves while waiting never opens and takes no turn."""
        self.limited()
        connections = self.burst(HANDSHAKES_PER_TURN + 1)
        server, transport = connections[-1]
        transport.loseConnection()
        server.connectionLost(Failure(ConnectionError()))
        self.assertEqual(self.factory.handshake_pacer.waiting, 0)
        reactor_turn(self.clock)
        self.assertEqual(self.factory.tracker.open, HANDSHAKES_PER_TURN)
        self.assertFalse(transport.value().startswith(SWITCHING))
