"""The fan-out: framing, ordering, exactly-once delivery and slow consumers."""

from __future__ import annotations

import support
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from nanostream.broadcast import Broadcaster, frame, is_text
from nanostream.sinks import ClientSink

TEXT = 0x81
BINARY = 0x82


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames into (first byte, payload) pairs."""
    frames = []
    while data:
        first, second = data[0], data[1]
        if second & 0x80:
            raise AssertionError("a server frame must not be masked")
        length, offset = second & 0x7F, 2
        if length == 126:
            length, offset = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, offset = int.from_bytes(data[2:10], "big"), 10
        if len(data) < offset + length:
            raise AssertionError("truncated frame")
        frames.append((first, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


class FakeClient:
    """A connection as the broadcaster sees it, recording every call."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.sink = ClientSink(self.writes.append, self)
        self.dropped: list[int] = []
        self.went_away = 0

    def dropSlowConsumer(self, unsent: int) -> None:
        self.dropped.append(unsent)

    def goAway(self) -> None:
        self.went_away += 1

    def payloads(self) -> list[bytes]:
        return [payload for _, payload in parse_frames(b"".join(self.writes))]


class BrokenClient(FakeClient):
    """A client whose close fails, as a half-torn-down connection might."""

    def goAway(self) -> None:
        super().goAway()
        raise RuntimeError("transport already gone")


class FrameTests(SynchronousTestCase):
    def test_short_text(self) -> None:
        """A short UTF-8 line is a FIN text frame with a 7-bit length."""
        self.assertEqual(frame(b"hi"), b"\x81\x02hi")

    def test_longest_short_length(self) -> None:
        """125 bytes still fit the 7-bit length."""
        payload = b"a" * 125
        self.assertEqual(frame(payload), b"\x81\x7d" + payload)

    def test_16_bit_length(self) -> None:
        """From 126 bytes to 65535 the length takes 16 bits."""
        for size in (126, 65535):
            payload = b"a" * size
            with self.subTest(size=size):
                self.assertEqual(
                    frame(payload), b"\x81\x7e" + size.to_bytes(2, "big") + payload
                )

    def test_64_bit_length(self) -> None:
        """From 65536 bytes on the length takes 64 bits."""
        payload = b"a" * 65536
        self.assertEqual(
            frame(payload), b"\x81\x7f" + (65536).to_bytes(8, "big") + payload
        )

    def test_binary(self) -> None:
        """A line that is not UTF-8 is a binary frame carrying the same bytes."""
        self.assertEqual(frame(b"\xff\xfe"), b"\x82\x02\xff\xfe")
        payload = b"\x80" * 200
        self.assertEqual(frame(payload), b"\x82\x7e\x00\xc8" + payload)

    def test_text_or_binary(self) -> None:
        """Only strictly valid UTF-8 is text."""
        for line in (b"plain", b"\x00nul", "é€😀".encode(), b'{"a": 1}'):
            with self.subTest(line=line):
                self.assertTrue(is_text(line))
                self.assertEqual(frame(line)[0], TEXT)
        for line in (
            b"\xff",
            b"caf\xe9",
            b"\xc3\x28",
            b"\xc0\xaf",
            b"\xed\xa0\x80",
            "é".encode()[:1],
        ):
            with self.subTest(line=line):
                self.assertFalse(is_text(line))
                self.assertEqual(frame(line)[0], BINARY)


class DeliveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.broadcaster = Broadcaster(max_buffer_bytes=1000)

    def connect(self, client: FakeClient | None = None) -> FakeClient:
        client = FakeClient() if client is None else client
        self.broadcaster.add(client.sink)
        return client

    def test_sink_is_a_push_producer(self) -> None:
        """A sink can be registered with a transport as its push producer."""
        self.assertTrue(verifyObject(IPushProducer, FakeClient().sink))

    def test_every_client_every_line_in_order(self) -> None:
        """Every client gets every line once, in source order."""
        clients = [self.connect() for _ in range(3)]
        self.broadcaster.broadcast([b"one", b"two"])
        self.broadcaster.broadcast([b"three"])
        self.broadcaster.broadcast([b"four", b"\xff", b"six"])
        for client in clients:
            self.assertEqual(
                client.payloads(), [b"one", b"two", b"three", b"four", b"\xff", b"six"]
            )

    def test_one_write_per_batch(self) -> None:
        """A batch reaches each client as one write, whatever its size."""
        clients = [self.connect() for _ in range(2)]
        self.broadcaster.broadcast([b"a", b"b", b"c"])
        self.broadcaster.broadcast([b"d"])
        for client in clients:
            self.assertEqual(
                client.writes, [frame(b"a") + frame(b"b") + frame(b"c"), frame(b"d")]
            )

    def test_empty_batch(self) -> None:
        """A batch with no lines writes nothing."""
        client = self.connect()
        self.broadcaster.broadcast([])
        self.assertEqual(client.writes, [])

    def test_no_clients(self) -> None:
        """Broadcasting with nobody connected is harmless and keeps nothing."""
        self.broadcaster.broadcast([b"lost"])
        client = self.connect()
        self.broadcaster.broadcast([b"seen"])
        self.assertEqual(client.payloads(), [b"seen"])

    def test_late_client_misses_earlier_batches(self) -> None:
        """A client added after a batch starts with the next one."""
        early = self.connect()
        self.broadcaster.broadcast([b"one"])
        late = self.connect()
        self.broadcaster.broadcast([b"two"])
        self.assertEqual(early.payloads(), [b"one", b"two"])
        self.assertEqual(late.payloads(), [b"two"])

    def test_longest_connected_written_first(self) -> None:
        """A batch reaches clients in the order they joined, so a crowd of
        newcomers never delays those already connected; one that leaves and
        comes back joins at the end."""
        order: list[str] = []
        clients = {}
        for name in ("first", "second", "third", "fourth"):
            client = FakeClient()
            client.sink = ClientSink(lambda _data, n=name: order.append(n), client)
            clients[name] = client
        for name in ("first", "second", "third"):
            self.broadcaster.add(clients[name].sink)
        self.broadcaster.add(clients["fourth"].sink, with_ids=True)
        self.broadcaster.remove(clients["first"].sink)
        self.broadcaster.add(clients["first"].sink)
        self.broadcaster.broadcast([b"one"])
        # Raw clients before nanostream.v1 ones, each in joining order.
        self.assertEqual(order, ["second", "third", "first", "fourth"])

    def test_removed_client(self) -> None:
        """A removed client gets nothing more; the others carry on."""
        stays, leaves = self.connect(), self.connect()
        self.broadcaster.broadcast([b"one"])
        self.broadcaster.remove(leaves.sink)
        self.broadcaster.broadcast([b"two"])
        self.assertEqual(leaves.payloads(), [b"one"])
        self.assertEqual(stays.payloads(), [b"one", b"two"])
        self.assertEqual(len(self.broadcaster), 1)

    def test_remove_twice(self) -> None:
        """Removing a client that is already gone is harmless."""
        client = self.connect()
        self.broadcaster.remove(client.sink)
        self.broadcaster.remove(client.sink)
        self.assertEqual(len(self.broadcaster), 0)

    def test_add_twice(self) -> None:
        """Adding the same client twice still delivers each line once."""
        client = self.connect()
        self.broadcaster.add(client.sink)
        self.broadcaster.broadcast([b"once"])
        self.assertEqual(client.payloads(), [b"once"])
        self.assertEqual(len(self.broadcaster), 1)

    def test_bytes_on_a_transport(self) -> None:
        """Written to a real transport, the bytes are exactly the frames."""
        transport = StringTransport()
        client = FakeClient()
        client.sink = ClientSink(transport.write, client)
        self.connect(client)
        self.broadcaster.broadcast(["naïve".encode(), b"\xfe\xff"])
        self.assertEqual(
            parse_frames(transport.value()),
            [(TEXT, "naïve".encode()), (BINARY, b"\xfe\xff")],
        )

    def test_large_line_intact(self) -> None:
        """A line far larger than a socket buffer is neither split nor cut."""
        client = self.connect()
        line = bytes(range(256)) * 1024
        self.broadcaster.max_buffer_bytes = 10 * len(line)
        self.broadcaster.broadcast([line])
        self.assertEqual(client.payloads(), [line])


class SlowConsumerTests(SynchronousTestCase):
    #: Each batch is one frame of a 10-byte line: 12 bytes.
    LINE = b"0123456789"
    BATCH = len(frame(LINE))

    def setUp(self) -> None:
        self.broadcaster = Broadcaster(max_buffer_bytes=8 * self.BATCH)
        self.slow, self.fast = FakeClient(), FakeClient()
        self.broadcaster.add(self.slow.sink)
        self.broadcaster.add(self.fast.sink)

    def send(self, batches: int) -> None:
        for _ in range(batches):
            self.broadcaster.broadcast([self.LINE])

    def test_batch_size(self) -> None:
        """The arithmetic below assumes a 2-byte header on a 10-byte line."""
        self.assertEqual(self.BATCH, 12)

    def test_unpaused_never_dropped(self) -> None:
        """A client whose transport keeps up is never counted as slow."""
        self.send(100)
        self.assertEqual(self.slow.dropped, [])
        self.assertEqual(len(self.broadcaster), 2)

    def test_kept_at_limit(self) -> None:
        """Unsent bytes equal to max_buffer_bytes are still tolerated."""
        self.slow.sink.pauseProducing()
        self.send(8)
        self.assertEqual(self.slow.dropped, [])
        self.assertEqual(self.slow.sink.unsent, 96)
        self.assertEqual(len(self.broadcaster), 2)

    def test_dropped_past_limit(self) -> None:
        """One batch past the limit drops the client with its unsent count."""
        self.slow.sink.pauseProducing()
        self.send(9)
        self.assertEqual(self.slow.dropped, [108])
        self.assertEqual(len(self.broadcaster), 1)

    def test_dropped_once_and_no_more_writes(self) -> None:
        """A dropped client gets no further writes and is not dropped again."""
        self.slow.sink.pauseProducing()
        self.send(9)
        writes = len(self.slow.writes)
        self.send(5)
        self.assertEqual(len(self.slow.writes), writes)
        self.assertEqual(self.slow.dropped, [108])

    def test_others_keep_receiving(self) -> None:
        """Dropping a slow client costs the others nothing."""
        self.slow.sink.pauseProducing()
        self.send(20)
        self.assertEqual(self.fast.payloads(), [self.LINE] * 20)
        self.assertEqual(self.fast.dropped, [])

    def test_bytes_before_pause_not_counted(self) -> None:
        """Only bytes written while the transport is full count as unsent."""
        self.send(50)
        self.slow.sink.pauseProducing()
        self.send(8)
        self.assertEqual(self.slow.dropped, [])

    def test_resume_resets(self) -> None:
        """A drained buffer (resumeProducing) starts the count afresh."""
        self.slow.sink.pauseProducing()
        self.send(8)
        self.slow.sink.resumeProducing()
        self.assertEqual(self.slow.sink.unsent, 0)
        self.send(3)
        self.slow.sink.pauseProducing()
        self.send(8)
        self.assertEqual(self.slow.dropped, [])
        self.send(1)
        self.assertEqual(self.slow.dropped, [108])

    def test_one_big_batch(self) -> None:
        """A single batch larger than the limit drops a paused client at once."""
        self.slow.sink.pauseProducing()
        self.broadcaster.broadcast([self.LINE] * 9)
        self.assertEqual(self.slow.dropped, [108])
        self.assertEqual(self.fast.payloads(), [self.LINE] * 9)

    def test_stop_producing_counts_as_paused(self) -> None:
        """A transport that stopped its producer is not written to unboundedly."""
        self.slow.sink.stopProducing()
        self.send(9)
        self.assertEqual(self.slow.dropped, [108])

    def test_several_slow_clients(self) -> None:
        """Every slow client in one batch is dropped, each with its own count."""
        other = FakeClient()
        self.broadcaster.add(other.sink)
        other.sink.pauseProducing()
        self.send(2)
        self.slow.sink.pauseProducing()
        self.send(7)
        self.assertEqual(other.dropped, [108])
        self.assertEqual(self.slow.dropped, [])
        self.send(2)
        self.assertEqual(self.slow.dropped, [108])
        self.assertEqual(len(self.broadcaster), 1)


class CloseAllTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.broadcaster = Broadcaster()
        self.events = support.capture_logs(self)

    def test_go_away_each(self) -> None:
        """close_all asks every client to go away once and forgets them."""
        clients = [FakeClient() for _ in range(3)]
        for client in clients:
            self.broadcaster.add(client.sink)
        self.broadcaster.close_all()
        self.assertEqual([c.went_away for c in clients], [1, 1, 1])
        self.assertEqual(len(self.broadcaster), 0)
        self.broadcaster.broadcast([b"after"])
        self.assertEqual([c.writes for c in clients], [[], [], []])

    def test_survives_a_failing_client(self) -> None:
        """One client failing to close is logged and the others still close."""
        clients = [FakeClient(), BrokenClient(), FakeClient()]
        for client in clients:
            self.broadcaster.add(client.sink)
        self.broadcaster.close_all()
        self.assertEqual([c.went_away for c in clients], [1, 1, 1])
        self.assertEqual(len(self.broadcaster), 0)
        failures = [e for e in self.events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertEqual(failures[0]["log_format"], "could not close a client")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_nobody(self) -> None:
        """close_all with no clients does nothing."""
        self.broadcaster.close_all()
        self.assertEqual(self.events, [])
