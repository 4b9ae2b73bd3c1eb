"""Listening services: bound through the given reactor, announced once bound."""

from __future__ import annotations

import socket

import support
from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import (
    MemoryReactor,
    MemoryReactorClock,
    RaisingMemoryReactor,
)
from twisted.logger import LogEvent, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from nanostream.listening import (
    ACCEPT_SECONDS,
    ACCEPTS_PER_TURN,
    AnnouncedEndpoint,
    announced_service,
    bound_accepts,
    describe_address,
)


class BoundPort:
    """Just enough of an IListeningPort to be described."""

    def __init__(self, address: IAddress) -> None:
        self.address = address

    def getHost(self) -> IAddress:
        return self.address


class DescribeAddressTests(SynchronousTestCase):
    """describe_address writes addresses the way the start-up line shows them."""

    def test_ipv4(self) -> None:
        """An IPv4 address is kind:host:port."""
        port = BoundPort(IPv4Address("TCP", "127.0.0.1", 8080))
        self.assertEqual(describe_address("tcp", port), "tcp:127.0.0.1:8080")

    def test_ipv6_bracketed(self) -> None:
        """An IPv6 host is bracketed so the port stays readable."""
        port = BoundPort(IPv6Address("TCP", "::1", 8443))
        self.assertEqual(describe_address("ssl", port), "ssl:[::1]:8443")

    def test_unix_bytes_path(self) -> None:
        """A UNIX socket is named by its path, given as bytes."""
        port = BoundPort(UNIXAddress(b"/run/nanostream.sock"))
        self.assertEqual(describe_address("unix", port), "unix:/run/nanostream.sock")

    def test_unix_text_path(self) -> None:
        """A UNIX socket path given as text is used as it is."""
        port = BoundPort(UNIXAddress("/run/nanostream.sock"))
        self.assertEqual(describe_address("unix", port), "unix:/run/nanostream.sock")


class AnnouncedServiceTests(SynchronousTestCase):
    """announced_service listens on the reactor it is given and says so."""

    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        self.factory = Factory.forProtocol(Protocol)
        self.events = support.capture_logs(self)

    def announcements(self) -> list[LogEvent]:
        return [
            e for e in self.events if e.get("log_namespace") == "nanostream.listening"
        ]

    def start(self, description: str, what: str = "websocket") -> None:
        service = announced_service(description, self.factory, what, self.reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)

    def test_tcp_listens_and_announces(self) -> None:
        """A tcp endpoint listens with our factory and logs its address once."""
        self.start("tcp:8080:interface=\\:\\:1")
        [(port, factory, _, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (8080, "::1"))
        self.assertIs(factory, self.factory)
        [event] = self.announcements()
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["what"], "websocket")
        self.assertEqual(event["address"], "tcp:[::1]:8080")

    def test_unix_listens_and_announces(self) -> None:
        """A unix endpoint listens on its path and names it."""
        self.start("unix:/run/nanostream/in.sock", what="source")
        [(address, factory, *_)] = self.reactor.unixServers
        self.assertEqual(address, "/run/nanostream/in.sock")
        self.assertIs(factory, self.factory)
        [event] = self.announcements()
        self.assertEqual(event["what"], "source")
        self.assertEqual(event["address"], "unix:/run/nanostream/in.sock")

    def test_nothing_announced_before_start(self) -> None:
        """Building the service neither listens nor announces."""
        announced_service("tcp:8080", self.factory, "websocket", self.reactor)
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(self.announcements(), [])

    def test_failed_bind_fails_start(self) -> None:
        """A port that cannot be bound raises at start-up and announces nothing."""
        reactor = RaisingMemoryReactor(
            listenException=CannotListenError("", 8080, OSError("in use"))
        )
        service = announced_service("tcp:8080", self.factory, "websocket", reactor)
        self.assertRaises(CannotListenError, service.privilegedStartService)
        self.assertEqual(self.announcements(), [])


class BoundAcceptsTests(SynchronousTestCase):
    """A bound port accepts at most its share of waiting clients per read."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.built: list[object] = []
        factory = Factory.forProtocol(Protocol)
        build = factory.buildProtocol

        def counting(address: object) -> Protocol | None:
            self.built.append(address)
            return build(address)

        factory.buildProtocol = counting  # type: ignore[method-assign]
        self.port = tcp.Port(0, factory, interface="127.0.0.1", reactor=self.reactor)
        self.port.startListening()
        self.addCleanup(self.reactor.advance, 0)
        self.addCleanup(self.port.stopListening)
        self.host = self.port.getHost()

    def connect(self, count: int) -> None:
        """``count`` real clients, connected and waiting in the backlog."""
        for _ in range(count):
            client = socket.create_connection((self.host.host, self.host.port))
            self.addCleanup(client.close)

    def accepted_by_read(self) -> int:
        before = len(self.built)
        self.port.doRead()
        return len(self.built) - before

    def test_reads_take_at_most_the_bound(self) -> None:
        """40 waiting clients take reads of 16, 16 and 8; none is lost."""
        bound_accepts(self.port, timer=lambda: 0.0)
        self.connect(40)
        reads = [self.accepted_by_read() for _ in range(3)]
        self.assertEqual(reads, [ACCEPTS_PER_TURN, ACCEPTS_PER_TURN, 8])
        self.assertEqual(len(self.built), 40)

    def test_the_bound_holds_after_full_reads(self) -> None:
        """Twisted's own growth after a full read does not lift the bound."""
        bound_accepts(self.port, per_turn=3, timer=lambda: 0.0)
        self.connect(12)
        self.assertEqual([self.accepted_by_read() for _ in range(4)], [3, 3, 3, 3])
        self.assertLessEqual(self.port.numberAccepts, 3 + 20)

    def test_slow_reads_take_fewer(self) -> None:
        """Reads slower than their time halve the share; fast ones double it."""
        now = [0.0]
        took = [2 * ACCEPT_SECONDS]

        def timer() -> float:
            now[0] += took[0]  # a read is the time between two calls
            return now[0]

        bound_accepts(self.port, timer=timer)
        self.connect(45)  # within Twisted's backlog of 50
        slow = [self.accepted_by_read() for _ in range(4)]
        self.assertEqual(slow, [ACCEPTS_PER_TURN, 8, 4, 2])
        took[0] = ACCEPT_SECONDS / 4
        fast = [self.accepted_by_read() for _ in range(4)]
        self.assertEqual(fast, [1, 2, 4, 8])
        self.assertEqual(len(self.built), sum(slow + fast))

    def test_unbounded_port_takes_them_all(self) -> None:
        """Without the bound one read takes every waiting client (the default)."""
        self.connect(40)
        self.assertEqual(self.accepted_by_read(), 40)

    def test_ports_without_batches_are_left_alone(self) -> None:
        """A port that does not accept in batches is not touched."""
        port = BoundPort(IPv4Address("TCP", "127.0.0.1", 8080))
        bound_accepts(port)
        self.assertFalse(hasattr(port, "doRead"))

    def test_announced_tcp_port_is_bound(self) -> None:
        """The ports the service listens on are bound when announced."""
        endpoint = AnnouncedEndpoint(
            TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1"), "tcp", "x"
        )

        def listened(*args: object, **kwargs: object) -> tcp.Port:
            return self.port

        self.reactor.listenTCP = listened  # type: ignore[method-assign]
        endpoint.listen(Factory.forProtocol(Protocol))
        self.connect(20)
        self.assertEqual(self.accepted_by_read(), ACCEPTS_PER_TURN)
