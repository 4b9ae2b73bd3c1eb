"""Memory after a wave of clients has come and gone: nothing is kept.

What the process's RSS does is the allocators' business and is measured by
the soak (bench/soak.py, docs/reliability.rst); asserted here are the facts
beneath it: the live Python objects return to their baseline once the
clients have left and their tokens have expired, and the trimmer hands the
freed memory back when, and only when, the load has fallen.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
import weakref
from unittest import SkipTest
from urllib.parse import urlsplit

from support import mint
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nanostream import websocket
from nanostream.auth import admission
from nanostream.auth.ledger import MemoryLedger
from nanostream.clients import ClientTracker
from nanostream.ops import memory
from nanostream.ops.memory import (
    CHECK_INTERVAL,
    MIN_DROP,
    MemoryTrimmer,
    StartupFreezer,
    ledger_pruner,
    releaser,
)
from nanostream.server import make_server

KEY = b"memory-test-secret-that-is-long-enough!!"
PEER = IPv4Address("TCP", "127.0.0.1", 40000)
TTL = 60


class WaveTests(SynchronousTestCase):
    """A thousand clients open, receive a line, close; the ledger then forgets."""

    def setUp(self) -> None:
        # Keep the per-connection info events out of the global log buffer.
        quiet = LogPublisher()
        for module in (admission, websocket):
            self.patch(module, "_log", Logger(observer=quiet))
        self.clock = Clock()
        self.clock.advance(time.time())
        self.ledger = MemoryLedger(self.clock)
        server = make_server(
            KEY, reactor=self.clock, ledger=self.ledger, ping_interval=0
        )
        self.broadcaster = server.broadcaster
        self.factory = server.factory

    def wave(self, clients: int) -> int:
        """Open, feed and close ``clients``; traced bytes while all were open."""
        connections = []
        for _ in range(clients):
            token = mint(KEY, now=int(self.clock.seconds()), ttl=TTL)
            protocol = self.factory.buildProtocol(PEER)
            transport = StringTransport(peerAddress=PEER)
            protocol.makeConnection(transport)
            protocol.dataReceived(
                f"GET /?t={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            # One reactor turn per handshake, as the pacer would spread them.
            self.clock.advance(0)
            connections.append((protocol, transport))
        self.assertEqual(len(self.broadcaster), clients)
        self.broadcaster.broadcast([b"a line for everyone"])
        open_bytes = tracemalloc.get_traced_memory()[0]
        for protocol, transport in connections:
            self.assertIn(b"a line for everyone", transport.value())
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.broadcaster), 0)
        return open_bytes

    def test_live_memory_returns_to_baseline(self) -> None:
        """After the wave and its tokens' expiry, live objects grow by < 1 MiB."""
        self.wave(50)  # one-off costs: caches, interned strings, lazy imports
        self.clock.advance(TTL + 1)
        self.ledger.prune()
        gc.collect()
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        peak = self.wave(1000)
        self.clock.advance(TTL + 1)
        self.ledger.prune()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        self.assertEqual(self.ledger.size, 0)
        self.assertGreater(peak - before, 2 * 1024 * 1024)
        # What may stay: the registry's and the ledger's hash tables, which
        # keep their size, and small caches.
        self.assertLess(after - before, 1024 * 1024)


class ReleaseLog:
    """Stands in for the release: counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


class TrimmerTests(SynchronousTestCase):
    """The trimmer releases once clients or tokens have halved, on its timer."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.tracker = ClientTracker()
        self.ledger = MemoryLedger(self.clock)
        self.release = ReleaseLog()
        self.trimmer = MemoryTrimmer(
            self.tracker, self.ledger, self.release, self.clock
        )
        self.trimmer.startService()
        self.addCleanup(self.trimmer.stopService)

    def open(self, clients: int) -> None:
        for _ in range(clients):
            self.tracker.opened()

    def close(self, clients: int) -> None:
        for _ in range(clients):
            self.tracker.closed()

    def tick(self) -> None:
        self.clock.advance(CHECK_INTERVAL)

    def test_released_when_clients_fall_to_half(self) -> None:
        """A check that finds half the peak's clients or fewer releases once."""
        self.open(1000)
        self.tick()
        self.close(499)
        self.tick()
        self.assertEqual(self.release.calls, 0)
        self.close(1)
        self.tick()
        self.assertEqual(self.release.calls, 1)
        self.assertEqual(self.trimmer.releases, 1)

    def test_not_released_while_clients_hold(self) -> None:
        """Churn that keeps the count where it was releases nothing."""
        self.open(1000)
        for _ in range(30):
            self.close(100)
            self.open(100)
            self.tick()
        self.assertEqual(self.release.calls, 0)

    def test_not_released_for_a_small_drop(self) -> None:
        """Fewer than MIN_DROP clients gone is not worth a release."""
        self.open(MIN_DROP - 1)
        self.tick()
        self.close(MIN_DROP - 1)
        self.tick()
        self.assertEqual(self.release.calls, 0)

    def test_not_more_often_than_the_interval(self) -> None:
        """A fall between two checks waits for the next; so does a further fall."""
        self.open(4000)
        self.tick()
        self.close(2000)
        self.clock.advance(CHECK_INTERVAL - 0.001)
        self.assertEqual(self.release.calls, 0)
        self.clock.advance(0.001)
        self.assertEqual(self.release.calls, 1)
        self.close(1500)
        self.clock.advance(CHECK_INTERVAL - 0.001)
        self.assertEqual(self.release.calls, 1)
        self.clock.advance(0.001)
        self.assertEqual(self.release.calls, 2)

    def test_once_per_fall(self) -> None:
        """After a release, a count that stays down releases nothing more."""
        self.open(1000)
        self.tick()
        self.close(1000)
        for _ in range(10):
            self.tick()
        self.assertEqual(self.release.calls, 1)

    def test_waits_while_clients_are_let_in(self) -> None:
        """A fall found while clients come back is released at a later check."""
        busy = [True]
        self.trimmer.stopService()
        self.trimmer = MemoryTrimmer(
            self.tracker, self.ledger, self.release, self.clock, busy=lambda: busy[0]
        )
        self.trimmer.startService()
        self.addCleanup(self.trimmer.stopService)
        self.open(1000)
        self.tick()
        self.close(600)
        self.tick()
        self.assertEqual(self.release.calls, 0)
        busy[0] = False
        self.tick()
        self.assertEqual(self.release.calls, 1)

    def test_peak_between_two_checks(self) -> None:
        """Clients that came and went between two checks still count."""
        self.tick()
        self.open(500)
        self.close(500)
        self.tick()
        self.assertEqual(self.release.calls, 1)

    def test_released_when_tokens_expire(self) -> None:
        """Without any client, remembered tokens expiring release too."""
        now = self.clock.seconds()
        for i in range(300):
            self.ledger.consume_now(b"%d" % i, now + 30)
        self.tick()
        self.clock.advance(30)
        self.ledger.prune()
        self.tick()
        self.assertEqual(self.release.calls, 1)

    def test_stops_with_the_service(self) -> None:
        """A stopped trimmer leaves no timer behind."""
        self.trimmer.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class LedgerPrunerTests(SynchronousTestCase):
    def test_forgets_expired_tokens_without_a_handshake(self) -> None:
        """Expired tokens go within an interval even when no handshake comes."""
        clock = Clock()
        ledger = MemoryLedger(clock)
        pruner = ledger_pruner(ledger, clock)
        pruner.startService()
        self.addCleanup(pruner.stopService)
        ledger.consume_now(b"token", 5)
        clock.advance(CHECK_INTERVAL)
        self.assertEqual(ledger.size, 0)


class ReleaserTests(SynchronousTestCase):
    def test_none_without_malloc_trim(self) -> None:
        """A C library without malloc_trim (musl, macOS) gives no release."""

        class NoTrim:
            pass

        self.patch(memory.ctypes, "CDLL", lambda name: NoTrim())
        self.assertIsNone(memory.malloc_trim())
        self.assertIsNone(releaser(memory.malloc_trim()))

    def test_release_drops_caches_collects_and_trims(self) -> None:
        """The release empties urlsplit's cache, frees cycles and trims."""
        trim = ReleaseLog()
        urlsplit("/?t=a-token-that-would-stay-cached")
        gc.disable()
        self.addCleanup(gc.enable)
        cycle: list[object] = []
        cycle.append(cycle)
        alive = weakref.ref(Referent(cycle))
        del cycle
        self.assertIsNotNone(alive())
        release = releaser(trim)
        assert release is not None
        release()
        self.assertEqual(trim.calls, 1)
        self.assertEqual(urlsplit.cache_info().currsize, 0)
        self.assertIsNone(alive())

    def test_glibc_trim_runs(self) -> None:
        """On glibc, malloc_trim is found and can be called."""
        trim = memory.malloc_trim()
        if trim is None:
            raise SkipTest("this C library has no malloc_trim")
        trim()


class Referent:
    """A collectable object held by a reference cycle."""

    def __init__(self, cycle: list[object]) -> None:
        cycle.append(self)


class StartupFreezerTests(SynchronousTestCase):
    """What start-up built is frozen while the service runs, and only then."""

    def setUp(self) -> None:
        if gc.get_freeze_count():
            raise SkipTest("something else froze the heap already")
        self.addCleanup(gc.unfreeze)

    def test_startup_objects_frozen_and_garbage_collected(self) -> None:
        """Live start-up objects leave the collector's view; garbage is freed first."""
        alive = [Referent([])]
        dead = _unreachable_cycle()
        freezer = StartupFreezer()
        freezer.startService()
        self.assertIsNone(dead())
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertFalse(any(o is alive for o in gc.get_objects()))
        freezer.stopService()
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertTrue(any(o is alive for o in gc.get_objects()))

    def test_objects_made_later_still_collected(self) -> None:
        """A cycle made after start-up is collected as before."""
        freezer = StartupFreezer()
        freezer.startService()
        self.addCleanup(freezer.stopService)
        later = _unreachable_cycle()
        gc.collect()
        self.assertIsNone(later())


def _unreachable_cycle() -> weakref.ref[Referent]:
    """An object only a reference cycle keeps: freed by a collection alone."""
    cycle: list[object] = []
    cycle.append(cycle)
    referent = Referent(cycle)
    referent.cycle = cycle  # type: ignore[attr-defined]
    return weakref.ref(referent)
