"""The plain-socket sink: direct sends, a queue of shared batches, kept order."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable

from twisted.internet import main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import ISSLTransport, ISystemHandle
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides, implementer

from nanostream.broadcast import Broadcaster
from nanostream.sinks import ClientSink, SocketSink, sink_for, write_now


class FakeSocket:
    """A socket whose kernel takes ``room`` more bytes, then refuses."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.room = room
        self.received = bytearray()
        self.calls: list[int] = []
        self.error: OSError | None = None

    def send(self, data: bytes | memoryview) -> int:
        return self._take([data])

    def sendmsg(self, buffers: Iterable[bytes | memoryview]) -> int:
        return self._take(list(buffers))

    def _take(self, buffers: list[bytes | memoryview]) -> int:
        self.calls.append(len(buffers))
        if self.error is not None:
            raise self.error
        if not self.room:
            raise BlockingIOError
        data = b"".join(bytes(b) for b in buffers)[: self.room]
        self.room -= len(data)
        self.received += data
        return len(data)


class Transport(FileDescriptor):
    """A connected transport that says whether it watches for writability."""

    def __init__(self) -> None:
        self.memory_reactor = MemoryReactor()
        super().__init__(self.memory_reactor)
        self.connected = 1
        self.direct: list[bytes] = []

    def writeSomeData(self, data: bytes) -> int:
        self.direct.append(bytes(data))
        return len(data)

    @property
    def watched(self) -> bool:
        return self in self.memory_reactor.getWriters()


class Peer:
    """One client: a sink on a fake transport, over a fake or a real socket."""

    def __init__(self, sock: FakeSocket | socket.socket, held: bytes = b"") -> None:
        self.socket = sock
        self.transport = Transport()
        if held:
            # Twisted keeps the handshake response until the socket is writable.
            self.transport.write(held)
        self.dropped: list[int] = []
        self.sink = SocketSink(self.transport, sock, self)  # type: ignore[arg-type]
        self.sink.attach(self.transport)

    def dropSlowConsumer(self, unsent: int) -> None:
        self.dropped.append(unsent)

    def goAway(self) -> None:
        raise AssertionError("not expected")

    def closeForGap(self) -> None:
        raise AssertionError("not expected")


def socket_pair(
    case: SynchronousTestCase, sndbuf: int
) -> tuple[socket.socket, socket.socket]:
    server, client = socket.socketpair()
    case.addCleanup(server.close)
    case.addCleanup(client.close)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    server.setblocking(False)
    client.setblocking(False)
    return server, client


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class DirectSendTests(SynchronousTestCase):
    """While nothing is queued, a batch goes straight to the socket."""

    def test_direct_send(self) -> None:
        """A batch the kernel takes whole is not queued, nor watched for."""
        peer = Peer(FakeSocket())
        self.assertEqual(peer.sink.send(b"hello"), 0)
        self.assertEqual(bytes(peer.socket.received), b"hello")
        self.assertFalse(peer.transport.watched)

    def test_attach_queues_behind_the_handshake_response(self) -> None:
        """Bytes the transport still holds go first, from the sink's queue."""
        peer = Peer(FakeSocket(), held=b"HTTP/1.1 101\r\n\r\n")
        self.assertEqual(peer.sink.send(b"line"), len(b"HTTP/1.1 101\r\n\r\n") + 4)
        self.assertEqual(peer.socket.received, b"")
        self.assertTrue(peer.transport.watched)
        self.assertIsNone(peer.transport.doWrite())
        self.assertEqual(bytes(peer.socket.received), b"HTTP/1.1 101\r\n\r\nline")
        self.assertEqual(peer.transport.direct, [])
        self.assertTrue(peer.sink.ready)


class QueueTests(SynchronousTestCase):
    """What the kernel refuses waits in the sink's queue, in order."""

    def test_partial_write_queues_the_rest_as_a_view(self) -> None:
        """The unsent tail of a batch is queued without a copy, later ones behind it."""
        peer = Peer(FakeSocket(room=3))
        batch = b"abcdef"
        self.assertEqual(peer.sink.send(batch), 3)
        self.assertEqual(peer.sink.send(b"gh"), 5)
        self.assertTrue(peer.transport.watched)
        queue = peer.sink._queue
        assert queue is not None
        head, tail = queue
        self.assertIsInstance(head, memoryview)
        self.assertIs(head.obj, batch)
        self.assertIs(tail, b"gh")

    def test_batches_are_shared_by_every_queue(self) -> None:
        """Two slow clients hold the same batch object, not copies."""
        first, second = Peer(FakeSocket(room=0)), Peer(FakeSocket(room=0))
        batch = b"x" * 100
        for peer in (first, second):
            peer.sink.send(batch)
        queues = [peer.sink._queue for peer in (first, second)]
        self.assertIs(queues[0][0], batch)  # type: ignore[index]
        self.assertIs(queues[1][0], batch)  # type: ignore[index]

    def test_writable_sends_the_queue_in_one_call(self) -> None:
        """One writable event sends every queued batch with one sendmsg."""
        peer = Peer(FakeSocket(room=0))
        for part in (b"one ", b"two ", b"three"):
            peer.sink.send(part)
        peer.socket.room = 1 << 20
        peer.socket.calls.clear()
        self.assertIsNone(peer.transport.doWrite())
        self.assertEqual(peer.socket.calls, [3])
        self.assertEqual(bytes(peer.socket.received), b"one two three")
        self.assertEqual(peer.sink.unsent, 0)

    def test_partial_drain_keeps_order_and_count(self) -> None:
        """A writable event that sends part of the queue leaves the exact rest."""
        peer = Peer(FakeSocket(room=0))
        for part in (b"aaaa", b"bbbb", b"cccc"):
            peer.sink.send(part)
        peer.socket.room = 6
        peer.transport.doWrite()
        self.assertEqual(peer.sink.unsent, 6)
        self.assertEqual(peer.sink.send(b"dd"), 8)
        peer.socket.room = 100
        peer.transport.doWrite()
        self.assertEqual(bytes(peer.socket.received), b"aaaabbbbccccdd")
        self.assertEqual(peer.sink.unsent, 0)

    def test_write_interest_ends_with_the_queue(self) -> None:
        """The event that drains the queue stops watching for writability."""
        peer = Peer(FakeSocket(room=0))
        peer.sink.send(b"data")
        self.assertTrue(peer.transport.watched)
        peer.socket.room = 100
        self.assertIsNone(peer.transport.doWrite())
        self.assertFalse(peer.transport.watched)
        # The next batch goes straight out again.
        self.assertEqual(peer.sink.send(b"more"), 0)
        self.assertEqual(bytes(peer.socket.received), b"datamore")

    def test_long_queue_sent_in_slices(self) -> None:
        """A queue longer than one sendmsg accepts goes out over several events."""
        peer = Peer(FakeSocket(room=0))
        parts = [b"%05d" % n for n in range(3000)]
        for part in parts:
            peer.sink.send(part)
        peer.socket.room = 1 << 20
        while peer.sink.unsent:
            peer.transport.doWrite()
        self.assertLessEqual(max(peer.socket.calls), 1024)
        self.assertEqual(bytes(peer.socket.received), b"".join(parts))

    def test_drain_calls_the_hook_once(self) -> None:
        """A replay waiting on the sink hears of the drain once."""
        peer = Peer(FakeSocket(room=0))
        peer.sink.send(b"data")
        drained: list[bool] = []
        peer.sink.on_drain = lambda: drained.append(peer.sink.ready)
        peer.socket.room = 2
        peer.transport.doWrite()
        self.assertEqual(drained, [])
        peer.socket.room = 100
        peer.transport.doWrite()
        peer.transport.doWrite()
        self.assertEqual(drained, [True])

    def test_offer_takes_what_the_kernel_takes(self) -> None:
        """An offer sends what the socket takes now and queues nothing."""
        peer = Peer(FakeSocket(room=3))
        self.assertEqual(peer.sink.offer(memoryview(b"abcdef")), 3)
        self.assertEqual(bytes(peer.socket.received), b"abc")
        self.assertEqual(peer.sink.offer(b"def"), 0)
        self.assertTrue(peer.sink.ready)
        self.assertFalse(peer.transport.watched)

    def test_offer_behind_a_queue_takes_nothing(self) -> None:
        """Queued bytes go first: an offer behind them is refused whole."""
        peer = Peer(FakeSocket(room=2))
        peer.sink.send(b"queued")
        peer.socket.room = 100
        self.assertEqual(peer.sink.offer(b"later"), 0)
        peer.transport.doWrite()
        self.assertEqual(bytes(peer.socket.received), b"queued")

    def test_when_writable_calls_once_and_stops_watching(self) -> None:
        """A replay waiting for room hears once, on the next writable event,
        and the socket is watched only until then."""
        peer = Peer(FakeSocket(room=0))
        called: list[int] = []
        peer.sink.when_writable(lambda: called.append(len(peer.socket.received)))
        self.assertTrue(peer.transport.watched)
        self.assertIsNone(peer.transport.doWrite())
        self.assertEqual(called, [0])
        self.assertFalse(peer.transport.watched)
        peer.transport.doWrite()
        self.assertEqual(called, [0])

    def test_broken_socket_is_reported_lost(self) -> None:
        """A send error other than a full buffer ends the connection."""
        peer = Peer(FakeSocket(room=0))
        peer.sink.send(b"data")
        peer.socket.error = ConnectionResetError()
        self.assertIs(peer.transport.doWrite(), main.CONNECTION_LOST)

    def test_broken_socket_on_direct_send_queues(self) -> None:
        """A failed direct send keeps the bytes and waits for the writable event."""
        peer = Peer(FakeSocket())
        peer.socket.error = BrokenPipeError()
        self.assertEqual(peer.sink.send(b"data"), 4)
        self.assertTrue(peer.transport.watched)


class CloseTests(SynchronousTestCase):
    """Closing with bytes queued: a polite close sends them, an abort drops them."""

    def test_lose_connection_sends_the_queue_first(self) -> None:
        """loseConnection closes only after the queue has gone out."""
        peer = Peer(FakeSocket(room=0))
        peer.sink.send(b"last words")
        peer.transport.loseConnection()
        self.assertIsNone(peer.transport.doWrite())
        peer.socket.room = 4
        self.assertIsNone(peer.transport.doWrite())
        peer.socket.room = 100
        self.assertIs(peer.transport.doWrite(), main.CONNECTION_DONE)
        self.assertEqual(bytes(peer.socket.received), b"last words")

    def test_detach_forgets_the_queue(self) -> None:
        """Once the connection is gone, the queue and the transport hook go."""
        peer = Peer(FakeSocket(room=0))
        peer.sink.send(b"x" * 1000)
        peer.sink.detach()
        self.assertIsNone(peer.sink._queue)
        self.assertEqual(peer.sink.unsent, 0)
        self.assertNotIn("doWrite", peer.transport.__dict__)


class RealSocketTests(SynchronousTestCase):
    """With a real socket pair, what is refused arrives later and in order."""

    def test_partial_kernel_write_then_drain(self) -> None:
        """A large batch is split by the kernel; writable events deliver the rest."""
        server, client = socket_pair(self, 4096)
        peer = Peer(server)
        big = os.urandom(1024 * 1024)
        unsent = peer.sink.send(big)
        self.assertGreater(unsent, 0)
        self.assertEqual(peer.sink.send(b"next"), unsent + 4)
        got = bytearray()
        for _ in range(10_000):
            got += read_all(client)
            if not peer.sink.unsent:
                break
            peer.transport.doWrite()
        got += read_all(client)
        self.assertEqual(bytes(got), big + b"next")

    def test_slow_socket_client_dropped_at_limit(self) -> None:
        """A client whose backlog passes the limit is dropped; others stay."""
        broadcaster = Broadcaster(max_buffer_bytes=64 * 1024)
        slow_socket, _ = socket_pair(self, 4096)
        fast_socket, fast_client = socket_pair(self, 1 << 20)
        slow, fast = Peer(slow_socket), Peer(fast_socket)
        for peer in (slow, fast):
            broadcaster.add(peer.sink)
        line = b"x" * 1000
        for _ in range(200):
            broadcaster.broadcast([line])
            read_all(fast_client)
            fast.transport.doWrite()
        self.assertEqual(len(slow.dropped), 1)
        self.assertGreater(slow.dropped[0], 64 * 1024)
        self.assertEqual(fast.dropped, [])
        self.assertEqual(len(broadcaster), 1)


@implementer(ISystemHandle)
class SocketTransport(Transport):
    """A transport over a real socket, as Twisted's TCP transports are."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


class WriteNowTests(SynchronousTestCase):
    """Before a connection opens, its writes skip the transport's buffer."""

    def test_response_goes_straight_to_the_socket(self) -> None:
        """The kernel takes a handshake response at once: nothing is buffered."""
        server, client = socket_pair(self, 1 << 16)
        transport = SocketTransport(server)
        self.assertTrue(write_now(transport, b"HTTP/1.1 101\r\n\r\n"))
        self.assertEqual(read_all(client), b"HTTP/1.1 101\r\n\r\n")
        self.assertFalse(transport.watched)

    def test_refused_rest_goes_to_the_transport(self) -> None:
        """What the kernel refuses waits in the transport, after what it took."""
        server, client = socket_pair(self, 4096)
        transport = SocketTransport(server)
        big = os.urandom(1 << 20)
        self.assertTrue(write_now(transport, big))
        self.assertTrue(transport.watched)
        got = read_all(client)
        self.assertEqual(got + b"".join(transport._tempDataBuffer), big)

    def test_behind_buffered_bytes_the_transport_writes(self) -> None:
        """While the transport holds bytes, nothing may overtake them."""
        server, client = socket_pair(self, 1 << 16)
        transport = SocketTransport(server)
        transport.write(b"first")
        self.assertFalse(write_now(transport, b"second"))
        self.assertEqual(read_all(client), b"")

    def test_closing_transport_is_left_alone(self) -> None:
        """A transport that is closing gets nothing written behind its back."""
        server, client = socket_pair(self, 1 << 16)
        transport = SocketTransport(server)
        transport.loseConnection()
        self.assertFalse(write_now(transport, b"late"))
        self.assertEqual(read_all(client), b"")

    def test_other_transports_write_themselves(self) -> None:
        """A transport with no socket of its own (TLS, tests) writes as ever."""
        self.assertFalse(write_now(Transport(), b"data"))


class SinkForTests(SynchronousTestCase):
    """Only a plain socket transport of Twisted's gets the socket sink."""

    def test_plain_socket_gets_the_socket_sink(self) -> None:
        """A TCP or UNIX transport is written by the sink itself."""
        server, _ = socket_pair(self, 1 << 16)
        sink = sink_for(SocketTransport(server), Peer(FakeSocket()))
        self.assertIsInstance(sink, SocketSink)

    def test_tls_keeps_the_transport_path(self) -> None:
        """A TLS transport encrypts, so every byte goes through its write."""
        server, client = socket_pair(self, 1 << 16)
        transport = SocketTransport(server)
        alsoProvides(transport, ISSLTransport)
        sink = sink_for(transport, Peer(FakeSocket()))
        self.assertNotIsInstance(sink, SocketSink)
        self.assertIsInstance(sink, ClientSink)
        self.assertFalse(write_now(transport, b"101"))
        sink.send(b"line")
        self.assertEqual(read_all(client), b"")
        self.assertEqual(transport._tempDataBuffer, [b"line"])
