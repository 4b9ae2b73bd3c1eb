"""Memory after a wave of clients has come and gone: nothing is kept.

The process's RSS stays near its peak after clients leave (CPython's
allocator keeps freed arenas for reuse; docs/reliability.rst has the
figures), so what is asserted here is the allocator-independent fact
behind it: the live Python objects return to their baseline once the
clients have left and their tokens have expired.
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc

import jwt
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from nanostream import admission, websocket
from nanostream.admission import Admission
from nanostream.broadcast import Broadcaster
from nanostream.ledger import MemoryLedger
from nanostream.origins import OriginPolicy
from nanostream.service import ClientTracker
from nanostream.tokens import TokenVerifier

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
        self.broadcaster = Broadcaster(clock=self.clock)
        self.factory = websocket.NanostreamServerFactory(
            Admission(self.clock, TokenVerifier(KEY), self.ledger, OriginPolicy()),
            self.broadcaster,
            ClientTracker(),
            ping_interval=0,
            reactor=self.clock,
        )

    def wave(self, clients: int) -> int:
        """Open, feed and close ``clients``; traced bytes while all were open."""
        connections = []
        for _ in range(clients):
            token = jwt.encode(
                {"exp": int(self.clock.seconds()) + TTL, "jti": os.urandom(8).hex()},
                KEY,
                algorithm="HS256",
            )
            protocol = self.factory.buildProtocol(PEER)
            transport = StringTransport(peerAddress=PEER)
            protocol.makeConnection(transport)
            protocol.dataReceived(
                f"GET /?t={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
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
