"""The plain-socket fast path: direct sends, exact backlog, kept order."""

from __future__ import annotations

import os
import socket

from twisted.internet.abstract import FileDescriptor
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from nanostream.broadcast import Broadcaster
from nanostream.sinks import SocketSink


class Peer:
    """A client whose server side is one end of a real socket pair."""

    def __init__(self, case: SynchronousTestCase, sndbuf: int | None = None) -> None:
        self.server, self.client = socket.socketpair()
        case.addCleanup(self.server.close)
        case.addCleanup(self.client.close)
        if sndbuf is not None:
            self.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.server.setblocking(False)
        self.client.setblocking(False)
        self.queued: list[bytes] = []
        self.dropped: list[int] = []
        self.sink = SocketSink(self.queued.append, self.server.send, self)

    def dropSlowConsumer(self, unsent: int) -> None:
        self.dropped.append(unsent)

    def goAway(self) -> None:
        pass

    def received(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.client.recv(1 << 20)
            except BlockingIOError:
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


class SocketSinkTests(SynchronousTestCase):
    """A SocketSink sends straight to the kernel only when nothing is queued."""

    def test_queues_behind_handshake_until_drained(self) -> None:
        """Until the transport reports a drain, bytes go to the transport."""
        peer = Peer(self)
        peer.sink.send(b"first")
        self.assertEqual(peer.queued, [b"first"])
        self.assertEqual(peer.received(), b"")

    def test_direct_send_after_drain(self) -> None:
        """After a drain, a batch goes to the socket and nothing is queued."""
        peer = Peer(self)
        peer.sink.resumeProducing()
        self.assertEqual(peer.sink.send(b"hello"), 0)
        self.assertEqual(peer.queued, [])
        self.assertEqual(peer.received(), b"hello")

    def test_partial_send_queues_rest_and_keeps_order(self) -> None:
        """What the kernel refuses is queued, and later bytes queue behind it."""
        peer = Peer(self, sndbuf=4096)
        peer.sink.resumeProducing()
        big = os.urandom(4 * 1024 * 1024)
        unsent = peer.sink.send(big)
        self.assertGreater(unsent, 0)
        self.assertEqual(peer.queued, [big[len(big) - unsent :]])
        self.assertEqual(peer.sink.send(b"next"), unsent + 4)
        self.assertEqual(peer.queued[-1], b"next")
        # Everything the socket took is the beginning of the stream.
        got = peer.received()
        self.assertEqual(got, big[: len(got)])

    def test_broken_socket_hands_bytes_to_transport(self) -> None:
        """A send error leaves the bytes with the transport, which will notice."""
        peer = Peer(self)
        peer.sink.resumeProducing()
        peer.client.close()
        peer.server.shutdown(socket.SHUT_WR)
        self.assertEqual(peer.sink.send(b"data"), 4)
        self.assertEqual(peer.queued, [b"data"])

    def test_stop_producing_queues_everything(self) -> None:
        """Once the connection is going, nothing bypasses the transport."""
        peer = Peer(self)
        peer.sink.resumeProducing()
        peer.sink.stopProducing()
        peer.sink.send(b"late")
        self.assertEqual(peer.queued, [b"late"])
        self.assertEqual(peer.received(), b"")

    def test_slow_socket_client_dropped_at_limit(self) -> None:
        """A socket client whose backlog passes the limit is dropped; others stay."""
        broadcaster = Broadcaster(max_buffer_bytes=64 * 1024)
        slow, fast = Peer(self, sndbuf=4096), Peer(self)
        for peer in (slow, fast):
            peer.sink.resumeProducing()
            broadcaster.add(peer.sink)
        line = b"x" * 1000
        for _ in range(200):
            broadcaster.broadcast([line])
            fast.received()
            fast.sink.resumeProducing()
        self.assertEqual(len(slow.dropped), 1)
        self.assertGreater(slow.dropped[0], 64 * 1024)
        self.assertEqual(fast.dropped, [])
        self.assertEqual(len(broadcaster), 1)


class AttachTests(SynchronousTestCase):
    """Registering with a real Twisted transport is not mistaken for a drain."""

    def test_attach_keeps_queueing_behind_the_handshake(self) -> None:
        """Lines sent right after attaching queue behind the buffered 101."""
        peer = Peer(self)
        transport = FileDescriptor(MemoryReactor())
        # Twisted's TCP transports resume a pull producer on registration.
        peer.sink.attach(transport)
        self.assertIs(transport.producer, peer.sink)
        peer.sink.send(b"line")
        self.assertEqual(peer.queued, [b"line"])
        self.assertEqual(peer.received(), b"")
        # The transport's own report of a drain opens the fast path.
        peer.sink.resumeProducing()
        self.assertEqual(peer.sink.send(b"next"), 0)
        self.assertEqual(peer.received(), b"next")
